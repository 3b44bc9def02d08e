"""Benchmark: live latency, one driving frame at a time (batch 1), the engine with the source
cached (keypoints + dense motion + decoder per frame: what live.py and the web page's Live tab
run) against the original per-frame loop (source keypoints and encoder recomputed every frame).

    python bench/bench_live.py                        # vox-256, random weights, CPU, fp32 and bf16
    python bench/bench_live.py --device cuda --frames 50

Prints, measured in this one run with the variants interleaved in rounds (the CPU may be shared):
per-frame latency p50 / p95 of each variant, the ratio of the loop's p50 to each engine's, the
engine's largest difference to the loop (fp32, uint8 pixels) and the machine it ran on.
"""
import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baseline import per_frame_animation  # noqa: E402
from bench_animate import describe_machine, driving_frames, model_flags, sync, texture  # noqa: E402
from media.images import float_to_uint8  # noqa: E402
from engine.torch_engine import AnimationEngine, load_networks  # noqa: E402
from core.runtime import resolve_device  # noqa: E402


class TimedFrames:
    """Driving frames for the per-frame loop that stamp the time each one is taken: the loop takes
    frame i + 1 when frame i is done, so the differences are its per-frame latencies."""

    def __init__(self, frames: list):
        self.frames = frames
        self.stamps = []

    def __getitem__(self, index):  # the loop reads frame 0 for its initial keypoints
        return self.frames[index]

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        for frame in self.frames:
            self.stamps.append(time.perf_counter())
            yield frame
        self.stamps.append(time.perf_counter())

    def latencies(self) -> list:
        return list(np.diff(self.stamps))


def loop_round(generator, kp_detector, source, frames, device) -> tuple:
    """(per-frame seconds, uint8 frames) of the original loop over `frames`."""
    timed = TimedFrames(frames)
    out = per_frame_animation(source, timed, generator, kp_detector, device=device)
    return timed.latencies(), float_to_uint8(np.stack(out))


def engine_round(engine: AnimationEngine, frames: list) -> tuple:
    """(per-frame seconds, uint8 frames) of engine.animate_frame, the reference being frame 0
    (as the loop's initial frame); the source was set once, before."""
    engine.set_reference(frames[0])
    seconds, out = [], []
    for frame in frames:
        sync(engine.device)
        start = time.perf_counter()
        out.append(engine.animate_frame(frame))
        sync(engine.device)
        seconds.append(time.perf_counter() - start)
    return seconds, np.stack(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ' (default: %(default)s)'
    model_flags(p)
    p.add_argument('--frames', type=int, default=8, help='driving frames per round and variant' + d)
    p.add_argument('--rounds', type=int, default=3, help='rounds; each runs every variant in turn' + d)
    p.add_argument('--precisions', default='fp32,bf16', help='engine precisions, comma separated' + d)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = resolve_device(args.device)
    torch.manual_seed(0)  # the same random weights in every run
    generator, kp_detector, config = load_networks(args.config, args.checkpoint)
    generator, kp_detector = generator.to(device), kp_detector.to(device)
    size = config.dataset_params.frame_shape[0]
    precisions = args.precisions.split(',')
    print(describe_machine(device))
    print('config: %s (%dx%d), weights: %s; %d frames x %d rounds per variant, batch 1'
          % (args.config, size, size, args.checkpoint or 'random (seed 0)', args.frames, args.rounds))

    source = texture(size, seed=0)
    frames = [f.astype(np.float32) / 255 for f in driving_frames(args.frames, size)]
    # engines get their own copies: an NHWC engine must not change the layout under the loop
    engines = {p: AnimationEngine(copy.deepcopy(generator), copy.deepcopy(kp_detector), device, p, batch_size=1)
               for p in precisions}
    for engine in engines.values():
        engine.set_source(source)  # once: live use keeps the source
        engine_round(engine, frames[:2])  # warm-up (oneDNN primitives, cuDNN)
    loop_round(generator, kp_detector, source, frames[:2], device)

    seconds = {name: [] for name in ['loop'] + precisions}
    outputs = {}
    for _ in range(args.rounds):
        times, outputs['loop'] = loop_round(generator, kp_detector, source, frames, device)
        seconds['loop'] += times
        for p, engine in engines.items():
            times, outputs[p] = engine_round(engine, frames)
            seconds[p] += times
    if hasattr(os, 'getloadavg'):
        print('load average at the end: %.2f' % os.getloadavg()[0])
    report(seconds, outputs, engines)
    return 0


def report(seconds: dict, outputs: dict, engines: dict) -> None:
    base = float(np.median(seconds['loop']))
    print('%-44s %9s %9s %8s' % ('per-frame latency (batch 1)', 'p50 ms', 'p95 ms', 'vs loop'))
    print('%-44s %9.1f %9.1f %8s' % ('original per-frame loop, fp32', 1000 * base,
                                     1000 * np.percentile(seconds['loop'], 95), '1.00x'))
    for p, engine in engines.items():
        p50 = float(np.median(seconds[p]))
        diff = np.abs(outputs[p].astype(int) - outputs['loop'].astype(int)).max()
        print('%-44s %9.1f %9.1f %7.2fx  max |engine - loop| %d/255'
              % ('engine %s, source cached' % engine.precision, 1000 * p50, 1000 * np.percentile(seconds[p], 95),
                 base / p50, diff))


if __name__ == '__main__':
    sys.exit(main())
