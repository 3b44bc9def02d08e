"""Cold training-sample throughput: FramesDataset on raw and on prepared videos vs the original's read.

The original FramesDataset decoded every frame of a video (imageio.mimread), converted all of
them to float, then kept two. FramesDataset reads the frame count at start-up and decodes, in
process (PyAV), from the key frame before each of the two frames a sample needs up to it. On raw
videos that have one key frame (these faces videos, most camera files) that is still about 2/3 of
the video per sample; `prepare_dataset.py` writes a copy at frame_shape with a key frame every
--gop frames, where a sample decodes a few frames. All sides draw the same kind of sample (two
sorted random frames of one video, resized to frame_shape, the same augmentation) in one process
(num_workers=0), interleaved in rounds so a busy machine slows them alike, with the frame cache
off (cache_mb 0: every sample touches its video cold, as on a large dataset):

  original        decode all frames, float, resize, pick two
  raw             FramesDataset(cache_mb=0) on the videos as they are
  prepared        FramesDataset(cache_mb=0) on their prepared copy (made first, in a temp folder)
  raw+cache       (--cache_mb > 0) FramesDataset with the frame cache, after --warmup passes

    python bench/bench_data.py --root ../shared/data/faces-256 --frame_size 256 --samples 48

Prints samples/s of each, ratios to the original, frames decoded per sample, and the peak
Python/numpy heap of each (tracemalloc, in a separate short pass so tracing does not slow the
timed runs).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media.augmentation import AllAugmentationTransform  # noqa: E402
from frames_dataset import DatasetWarning, FramesDataset  # noqa: E402
from media.images import resize  # noqa: E402
from prepare_dataset import Settings, prepare  # noqa: E402
from media.video_io import decode_stats  # noqa: E402

VOX_AUGMENTATION = {'flip_param': {'horizontal_flip': True, 'time_flip': True},
                    'jitter_param': {'brightness': 0.1, 'contrast': 0.1, 'saturation': 0.1, 'hue': 0.1}}


def original_sample(path: str, frame_shape: tuple, rng: np.random.Generator, transform) -> dict:
    """The original's way: decode the whole video, convert to float, resize, then pick two."""
    import imageio
    from skimage import img_as_float32
    video = img_as_float32(np.array(imageio.mimread(path, memtest=False)))  # (T, h, w, 3)
    if video.shape[1:3] != tuple(frame_shape[:2]):
        video = np.stack([resize(f, *frame_shape[:2]) for f in video])
    idx = np.sort(rng.choice(len(video), replace=True, size=2))
    pair = video[idx]
    if transform is not None:
        pair = transform(pair, rng)
    return {'driving': pair[1].transpose((2, 0, 1)), 'source': pair[0].transpose((2, 0, 1)),
            'name': os.path.basename(path)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--root', default=str(ROOT / '..' / 'shared' / 'data' / 'faces-256'),
                   help='dataset root (with train/ or videos directly); training videos are used')
    p.add_argument('--frame_size', type=int, default=256, help='frame_shape height = width')
    p.add_argument('--gop', type=int, default=8, help='key-frame interval of the prepared copy')
    p.add_argument('--prepared', default=None,
                   help='an existing prepared copy of --root (prepare_dataset.py, same frame size); '
                        'default: prepare one in a temporary folder first')
    p.add_argument('--samples', type=int, default=48, help='timed samples per pipeline')
    p.add_argument('--rounds', type=int, default=4, help='alternating rounds the samples are split into')
    p.add_argument('--cache_mb', type=float, default=0,
                   help='> 0: also time FramesDataset with this frame cache (warm, after --warmup passes)')
    p.add_argument('--warmup', type=int, default=10, help='untimed passes before timing raw+cache')
    p.add_argument('--mem_samples', type=int, default=6, help='samples per pipeline in the memory pass')
    p.add_argument('--no_augment', action='store_true', help='skip flips and colour jitter (vox values)')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    return p


def make_sides(a, prepared: str) -> tuple:
    """{name: sample(i)} of the pipelines to time, and the datasets behind them."""
    shape = (a.frame_size, a.frame_size, 3)
    aug = None if a.no_augment else VOX_AUGMENTATION
    kw = dict(frame_shape=shape, is_train=True, random_seed=a.seed, augmentation_params=aug)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DatasetWarning)  # "resized to ..." once per video
        data = {'raw': FramesDataset(a.root, cache_mb=0, **kw),
                'prepared': FramesDataset(prepared, cache_mb=0, **kw)}
        if a.cache_mb > 0:
            data['raw+cache'] = FramesDataset(a.root, cache_mb=a.cache_mb, **kw)
    raw = data['raw']
    paths = [os.path.join(raw.root_dir, v) for v in raw.videos]
    transform = AllAugmentationTransform.from_params(aug)
    rng = np.random.default_rng(a.seed)
    sides = {'original': lambda i: original_sample(paths[i % len(paths)], shape, rng, transform)}
    for name, ds in data.items():
        sides[name] = (lambda d: lambda i: d[i % len(d)])(ds)
    return sides, data


def time_sides(sides: dict, samples: int, rounds: int) -> tuple:
    """Interleaved rounds: (seconds per side, frames decoded per side, samples per side)."""
    seconds, decoded = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0)
    per_round = max(1, samples // rounds)
    n = 0
    for _ in range(rounds):
        for name, fn in sides.items():
            d0 = decode_stats['decoded']
            start = time.perf_counter()
            for i in range(n, n + per_round):
                fn(i)
            seconds[name] += time.perf_counter() - start
            decoded[name] += decode_stats['decoded'] - d0
        n += per_round
    return seconds, decoded, n


def main() -> None:
    a = build_parser().parse_args()
    with tempfile.TemporaryDirectory(prefix='bench-data-') as tmp:
        prepared = a.prepared
        if prepared is None:
            prepared = os.path.join(tmp, 'prepared')
            start = time.perf_counter()
            prepare(a.root, prepared, Settings((a.frame_size, a.frame_size), gop=a.gop), workers=1,
                    progress=False, log=lambda line: None)
            print('prepared a copy (%dx%d, a key frame every %d frames) in %.1f s'
                  % (a.frame_size, a.frame_size, a.gop, time.perf_counter() - start))
        sides, data = make_sides(a, prepared)
        frames = [data['raw'].sources[v].num_frames for v in data['raw'].videos]
        print('data: %s, %d videos, %d-%d frames each, frame_shape %d, augmentation %s, %d CPUs'
              % (data['raw'].root_dir, len(frames), min(frames), max(frames), a.frame_size,
                 'none' if a.no_augment else 'vox', os.cpu_count()))
        for fn in sides.values():  # warm the page cache and imports
            fn(0)
        if 'raw+cache' in data:
            for i in range(a.warmup * len(data['raw+cache'])):  # the cache after a few epochs; not timed
                sides['raw+cache'](i)
        seconds, decoded, n = time_sides(sides, a.samples, a.rounds)
        peaks = {}
        for name, fn in sides.items():
            tracemalloc.start()
            for i in range(a.mem_samples):
                fn(i)
            peaks[name] = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()

    rate = {k: n / v for k, v in seconds.items()}
    print('samples per pipeline: %d (in %d rounds), num_workers=0, frame cache off unless named'
          % (n, a.rounds))
    for name in sides:
        note = ('decodes every frame: %.0f/sample' % np.mean(frames) if name == 'original'
                else 'decoded %.1f frames/sample' % (decoded[name] / n))
        print('%-10s %8.2f samples/s  %6.1fx  peak heap %7.1f MiB  (%s)'
              % (name, rate[name], rate[name] / rate['original'], peaks[name], note))
    print('process max RSS: %.0f MiB' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == '__main__':
    main()
