"""Training-sample throughput: FramesDataset vs the original's whole-video read.

The original FramesDataset decoded every frame of a video (imageio.mimread), converted all of
them to float, then kept two. This pipeline reads the frame count at start-up and decodes only
up to the two frames a sample needs (from the key frame before each), and keeps frames decoded on
the way in a bounded per-process cache. All sides draw the same kind of sample (two sorted random
frames of one video, resized to frame_shape, the same augmentation) in one process
(num_workers=0), interleaved in rounds so a busy machine slows them alike:

  ours            FramesDataset(cache_mb=0): decode only what the sample needs, nothing kept
  ours+cache      FramesDataset(cache_mb=--cache_mb), the default, after --warmup untimed passes
  original        decode all frames, float, resize, pick two

    python bench/bench_data.py --root ../shared/data/faces-256 --samples 48

Prints samples/s of each, ratios to the original, and the peak Python/numpy heap of each
(tracemalloc, in a separate short pass so tracing does not slow the timed runs).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from augmentation import AllAugmentationTransform  # noqa: E402
from frames_dataset import DatasetWarning, FramesDataset  # noqa: E402
from images import resize  # noqa: E402
from video_io import decode_stats  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--root', default=str(ROOT / '..' / 'shared' / 'data' / 'faces-256'),
                   help='dataset root (with train/ or videos directly); training videos are used')
    p.add_argument('--frame_size', type=int, default=256, help='frame_shape height = width')
    p.add_argument('--samples', type=int, default=48, help='timed samples per pipeline')
    p.add_argument('--rounds', type=int, default=4, help='alternating rounds the samples are split into')
    p.add_argument('--cache_mb', type=float, default=256, help='frame cache of the ours+cache side')
    p.add_argument('--warmup', type=int, default=10,
                   help='untimed passes over the videos before timing ours+cache (a long run\'s '
                        'steady state; the cache fills with each video\'s furthest sampled frame)')
    p.add_argument('--mem_samples', type=int, default=6, help='samples per pipeline in the memory pass')
    p.add_argument('--no_augment', action='store_true', help='skip flips and colour jitter (vox values)')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    a = p.parse_args()

    shape = (a.frame_size, a.frame_size, 3)
    aug = None if a.no_augment else VOX_AUGMENTATION
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DatasetWarning)  # "resized to ..." once per video
        plain = FramesDataset(a.root, frame_shape=shape, is_train=True, random_seed=a.seed,
                              augmentation_params=aug, cache_mb=0)
        cached = FramesDataset(a.root, frame_shape=shape, is_train=True, random_seed=a.seed,
                               augmentation_params=aug, cache_mb=a.cache_mb)
    paths = [os.path.join(plain.root_dir, v) for v in plain.videos]
    frames = [plain.sources[v].num_frames for v in plain.videos]
    transform = AllAugmentationTransform.from_params(aug)
    rng = np.random.default_rng(a.seed)
    print('data: %s, %d videos, %d-%d frames each, frame_shape %s, augmentation %s, %d CPUs'
          % (plain.root_dir, len(paths), min(frames), max(frames), shape, 'vox' if aug else 'none',
             os.cpu_count()))

    sides = {
        'ours': lambda i: plain[i % len(plain)],
        'ours+cache': lambda i: cached[i % len(cached)],
        'original': lambda i: original_sample(paths[i % len(paths)], shape, rng, transform),
    }
    for fn in sides.values():  # warm the page cache and imports
        fn(0)
    for i in range(a.warmup * len(cached)):  # fill the cache as the first epochs would; not timed
        cached[i % len(cached)]
    t = dict.fromkeys(sides, 0.0)
    decoded = dict.fromkeys(sides, 0)
    per_round = max(1, a.samples // a.rounds)
    n = 0
    for _ in range(a.rounds):
        for name, fn in sides.items():
            d0 = decode_stats['decoded']
            start = time.perf_counter()
            for i in range(n, n + per_round):
                fn(i)
            t[name] += time.perf_counter() - start
            decoded[name] += decode_stats['decoded'] - d0
        n += per_round

    peaks = {}
    for name, fn in sides.items():
        tracemalloc.start()
        for i in range(a.mem_samples):
            fn(i)
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2 ** 20  # the cache itself: see notes
        tracemalloc.stop()

    rate = {k: n / v for k, v in t.items()}
    print('samples per pipeline: %d (in %d rounds), num_workers=0; ours+cache after %d warm-up '
          'passes' % (n, a.rounds, a.warmup))
    notes = {'ours': 'ffmpeg decoded %.1f frames/sample' % (decoded['ours'] / n),
             'ours+cache': 'ffmpeg decoded %.1f frames/sample, cache %.0f MiB' % (
                 decoded['ours+cache'] / n, (cached._cache.used if cached._cache else 0) / 2 ** 20),
             'original': 'decodes every frame: %.0f/sample' % np.mean(frames)}
    for name in sides:
        print('%-11s %8.2f samples/s  %6.1fx  peak heap %7.1f MiB  (%s)'
              % (name, rate[name], rate[name] / rate['original'], peaks[name], notes[name]))
    print('process max RSS: %.0f MiB' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == '__main__':
    main()
