"""A small synthetic video dataset: coloured shapes moving over a static textured background.

Each video has 2-3 shapes (ellipse, polygon, star), each with a two-tone fill and a light dot so
that its rotation is visible. They translate along smooth Lissajous paths, rotate, breathe in
scale and wobble a little (non-rigid outline), over a fixed background of soft colour waves and
fine texture. Everything is a deterministic function of the seed. The motion is smooth and the
background static, so a keypoint model can learn it in few steps at 64x64.

    python -m media.synthetic --out data/shapes --size 64 --num_train 40 --num_test 8 --frames 32

writes data/shapes/train/*.mp4 and data/shapes/test/*.mp4 (or folders of PNG frames with
--format png), a layout FramesDataset reads directly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

SHAPES = ('ellipse', 'polygon', 'star')


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static texture, float32 (H, W, 3) in [0, 1]: a base colour, a few soft colour waves and
    fine blurred noise, kept mid-dark so the shapes stand out."""
    import cv2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.3, 0.45) + rng.uniform(-0.06, 0.06, size=3)  # greyish, slightly tinted
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    for _ in range(3):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(1.0, 3.5)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(theta) * x + np.sin(theta) * y) + phase)
        tint = rng.uniform(0.6, 1.0) + rng.uniform(-0.25, 0.25, size=3)  # mostly luminance
        img = img + 0.07 * wave[..., None] * tint
    cells = max(2, size // 6)
    noise = rng.normal(0, 1, size=(cells, cells, 3)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)  # smooth fine texture
    img = img + 0.05 * noise.mean(-1, keepdims=True) + 0.015 * noise
    return np.clip(img, 0, 1).astype(np.float32)


def _outline(kind: str, phi: np.ndarray, params: dict) -> np.ndarray:
    """Radius of the shape's boundary at angle phi, in units of its nominal radius."""
    if kind == 'ellipse':
        a, b = 1.0, params['aspect']
        return a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    n = params['sides']
    sector = 2 * np.pi / n
    local = np.mod(phi, sector) - sector / 2
    if kind == 'polygon':
        return np.cos(np.pi / n) / np.cos(local)
    tri = np.abs(local) / (sector / 2)  # star: 0 at a tip, 1 between tips
    return 1.0 - params['depth'] * (1 - tri)


def _random_shape(rng: np.random.Generator, size: int, hue: float) -> dict:
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = rng.uniform(0.13, 0.2) * size
    amp = rng.uniform(0.08, 0.22, size=2) * size
    margin = radius * 1.1
    center = rng.uniform(margin + amp, size - margin - amp) if np.all(size - 2 * (margin + amp) > 0) \
        else np.full(2, size / 2)
    # Fully saturated, bright colour at the given hue (HSV -> RGB).
    k = (np.array([5, 3, 1]) + hue * 6) % 6
    colour = 1 - 0.8 * np.clip(np.minimum(k, 4 - k), 0, 1)
    return dict(
        kind=kind, radius=radius, center=center, amp=amp, colour=colour.astype(np.float32),
        freq=rng.choice([0.5, 1.0], size=2), phase=rng.uniform(0, 2 * np.pi, size=2),
        angle0=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-1, 1) * np.pi,
        scale_amp=rng.uniform(0.05, 0.15), scale_phase=rng.uniform(0, 2 * np.pi),
        wobble=rng.uniform(0.03, 0.08), wobble_k=int(rng.integers(2, 4)),
        aspect=rng.uniform(0.5, 0.8), sides=int(rng.integers(3, 7)) if kind == 'polygon' else 5,
        depth=rng.uniform(0.35, 0.5))


def _render(img: np.ndarray, s: dict, t: float, size: int) -> None:
    """Composite shape `s` at time t in [0, 1) onto img (H, W, 3) in place, anti-aliased."""
    c = s['center'] + s['amp'] * np.sin(2 * np.pi * s['freq'] * t + s['phase'])
    angle = s['angle0'] + s['spin'] * t
    scale = 1 + s['scale_amp'] * np.sin(2 * np.pi * t + s['scale_phase'])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - c[0], y - c[1]
    u = np.cos(angle) * dx + np.sin(angle) * dy  # shape frame
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    r = _outline(s['kind'], phi, s) * (1 + s['wobble'] * np.sin(s['wobble_k'] * phi + 2 * np.pi * t))
    r = r * s['radius'] * scale
    alpha = np.clip(r - rho + 0.5, 0, 1)[..., None]  # signed distance in pixels -> coverage
    shade = 0.55 + 0.45 / (1 + np.exp(-u / max(1.0, 0.08 * s['radius'])))  # two-tone along u
    colour = s['colour'] * shade[..., None]
    dot = np.hypot(u - 0.45 * s['radius'] * scale, v) - 0.2 * s['radius'] * scale
    colour = np.where((dot < 0)[..., None], 0.92, colour)
    img *= 1 - alpha
    img += alpha * colour


def make_video(seed: int, size: int = 64, num_frames: int = 32,
               background_seed: Optional[int] = None) -> np.ndarray:
    """One synthetic video -> uint8 (T, H, W, 3), a deterministic function of the arguments.

    background_seed: draw the static background from this seed instead (the shapes and their
    motion stay those of `seed`): the same scene in front of another backdrop."""
    if size < 8 or num_frames < 1:
        raise ValueError('make_video: size must be >= 8 and num_frames >= 1, got %d, %d'
                         % (size, num_frames))
    rng = np.random.default_rng(seed)
    background = _background(rng, size)  # drawn in any case, so the shapes' draws stay the same
    if background_seed is not None:
        background = _background(np.random.default_rng(background_seed), size)
    n = int(rng.integers(2, 4))
    hues = (rng.uniform() + np.arange(n) / n + rng.uniform(-0.08, 0.08, n)) % 1.0  # well apart
    shapes = [_random_shape(rng, size, h) for h in hues]
    video = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        img = background.copy()
        for s in shapes:
            _render(img, s, i / max(num_frames, 1), size)
        video[i] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return video


def video_seed(seed: int, split: str, index: int) -> int:
    """Seed of video `index` of a split, independent of how many videos are made."""
    return int(np.random.SeedSequence([seed, 0 if split == 'train' else 1, index]).generate_state(1)[0])


def video_name(index: int, videos_per_id: int = 1) -> str:
    """File/folder stem: 'shapes0007', or 'id0003#01' when several videos share an id."""
    if videos_per_id > 1:
        return 'id%04d#%02d' % (index // videos_per_id, index % videos_per_id)
    return 'shapes%04d' % index


def write_dataset(out, size: int = 64, num_train: int = 40, num_test: int = 8, frames: int = 32,
                  fmt: str = 'mp4', seed: int = 0, fps: float = 25.0, videos_per_id: int = 1,
                  progress: bool = True) -> Path:
    """Write <out>/train and <out>/test: .mp4 / .gif files, or folders of PNG frames (fmt 'png').

    Each file is written under a temporary name and renamed when complete. Returns `out`."""
    from media.video_io import VideoWriter
    fmt = fmt.lower().lstrip('.')
    if fmt not in ('mp4', 'png', 'gif'):
        raise ValueError("write_dataset: fmt must be 'mp4', 'png' or 'gif', got %r" % fmt)
    out = Path(out)
    jobs = [('train', i) for i in range(num_train)] + [('test', i) for i in range(num_test)]
    for split, i in tqdm(jobs, desc='synthetic videos', unit='video', disable=not progress):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        name = video_name(i, videos_per_id) + ('' if fmt == 'png' else '.' + fmt)
        with VideoWriter(folder / name, fps=fps, fmt='.' + fmt) as w:
            w.write(make_video(video_seed(seed, split, i), size, frames))
    return out


DEMO_SEED = 20191208  # a video seed outside every split that write_dataset makes


def write_demo_assets(out, size: int = 64, frames: int = 64, fps: float = 25.0) -> tuple:
    """The embedded demo's inputs: a driving video of a held-out synthetic scene, and a source image
    showing the same shapes in their first-frame pose in front of another background (that of
    another seed), so the animation has to take its look (the backdrop) from the source and its
    motion from the driving video. (The shapes keep their colours: the keypoint detector is trained
    on pairs that share one colour jitter, so it is not colour-blind, and a recoloured source puts
    its keypoints on other shapes than the driving frame does.) Returns (source_path, driving_path)."""
    import imageio.v2 as imageio

    from media.video_io import VideoWriter
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video = make_video(DEMO_SEED, size, frames)
    source = make_video(DEMO_SEED, size, 1, background_seed=DEMO_SEED + 1)[0]
    source_path, driving_path = out / 'shapes-source.png', out / 'shapes-driving.mp4'
    imageio.imwrite(source_path, source)
    with VideoWriter(driving_path, fps=fps) as w:
        w.write(video)
    return source_path, driving_path


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(
        description='Write a synthetic moving-shapes video dataset (<out>/train, <out>/test) that '
                    'FramesDataset reads: set dataset_params.root_dir to --out and '
                    'frame_shape to [size, size, 3].',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', required=True, help='output folder (created)')
    p.add_argument('--demo_assets', action='store_true',
                   help="write the embedded demo's source image and driving video into --out instead")
    p.add_argument('--size', type=int, default=64, help='frame height and width in pixels')
    p.add_argument('--num_train', type=int, default=40, help='number of training videos')
    p.add_argument('--num_test', type=int, default=8, help='number of test videos')
    p.add_argument('--frames', type=int, default=32, help='frames per video')
    p.add_argument('--format', default='mp4', choices=['mp4', 'png', 'gif'],
                   help='mp4 files, folders of PNG frames, or GIF files')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed, same videos)')
    p.add_argument('--fps', type=float, default=25.0, help='frame rate of the written videos')
    p.add_argument('--videos_per_id', type=int, default=1,
                   help="videos sharing an id (names 'id0000#00'), for id_sampling; 1 = no ids")
    a = p.parse_args(argv)
    if a.demo_assets:
        src, drv = write_demo_assets(a.out, fps=a.fps)
        print('wrote %s and %s' % (src, drv))
        return 0
    if a.size < 8 or a.frames < 2 or a.num_train < 0 or a.num_test < 0 or a.videos_per_id < 1:
        p.error('need --size >= 8, --frames >= 2, --num_train/--num_test >= 0, --videos_per_id >= 1')
    out = write_dataset(a.out, a.size, a.num_train, a.num_test, a.frames, a.format, a.seed, a.fps,
                        a.videos_per_id)
    print('wrote %d train and %d test videos to %s' % (a.num_train, a.num_test, out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
