"""Benchmark: the inference engine vs the original per-frame loop, same weights, same frames.

    python bench/bench_animate.py                       # vox-256, random weights, CPU
    python bench/bench_animate.py --device cuda --frames 256 --batch_size 16

Prints, measured in this one run:
  * frames/s of the original-style loop (source keypoints and encoder recomputed every frame,
    every frame kept as float64 in a list) and of the engine in fp32 and bf16 (fp16 on CUDA
    too), the speed-up ratios, the engine's max abs difference to the loop (fp32) and PSNR
    against fp32 (reduced precision);
  * with --memory_frames, the RSS growth (peak while animating minus before) for a short and a
    long synthetic driving video streamed through the engine: flat memory means equal growth;
  * with --profile, where the engine's time goes (keypoints, dense motion, warp, decoder).
Timings interleave the variants and keep each one's best round (the CPU here is shared).
"""
import argparse
import copy
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baseline import per_frame_animation  # noqa: E402
from engine.torch_engine import AnimationEngine, load_networks  # noqa: E402
from core.runtime import cpu_count, cpu_has_native_bf16, resolve_device  # noqa: E402


# ------------------------------------------------------------------------------ inputs
def texture(size: int, seed: int) -> np.ndarray:
    """A smooth random colour texture, float32 (size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size, 3), 0.5, np.float32)
    for _ in range(6):
        fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        img += 0.08 * np.sin(2 * np.pi * (fx * x + fy * y) + phase)[..., None] * rng.uniform(0.2, 1, 3)
    cy, cx = size / 2, size / 2
    img[(y * size - cy) ** 2 + (x * size - cx) ** 2 < (size / 5) ** 2] = rng.uniform(0.6, 1, 3)  # a disc
    return np.clip(img, 0, 1)


def driving_frames(count: int, size: int, seed: int = 1):
    """Stream `count` uint8 frames: a texture sliding on a Lissajous path (nothing kept)."""
    base = (texture(size, seed) * 255).astype(np.uint8)
    for t in range(count):
        dy = int(round(size * 0.06 * np.sin(t / 7.0)))
        dx = int(round(size * 0.06 * np.cos(t / 5.0)))
        yield np.roll(base, (dy, dx), axis=(0, 1))


# ------------------------------------------------------------------------------ memory
class RssSampler:
    """Peak resident set size of this process, sampled every few ms from /proc (Linux)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.page = os.sysconf('SC_PAGE_SIZE')
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2 ** 20


# ------------------------------------------------------------------------------ helpers
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float('inf') if mse == 0 else 10 * np.log10(1.0 / mse)


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> str:
    """The software versions, the device (the GPU's name, or the CPU's name, cores, threads and
    whether it has native bf16: the case a benchmark measured) and the load at the start."""
    lines = ['torch %s, python %s, %s' % (torch.__version__, platform.python_version(), platform.machine())]
    if device.type == 'cuda':
        lines.append('device: %s (%s)' % (device, torch.cuda.get_device_name(device)))
    else:
        lines.append('device: cpu (%s), %d cores for this process, %d torch threads, native bf16 '
                     '(avx512_bf16/amx): %s' % (cpu_name(), cpu_count(), torch.get_num_threads(),
                                                'yes' if cpu_has_native_bf16() else 'no (emulated: slow)'))
    if hasattr(os, 'getloadavg'):
        load, cores = os.getloadavg()[0], cpu_count()
        lines.append('load average at the start: %.2f (%s)' % (load, 'above the %d cores: other processes compete for '
                                                              'the CPU' % cores if load > cores else '%d cores' % cores))
    return '\n'.join(lines)


def sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_engine(engine: AnimationEngine, source: np.ndarray, frames: list) -> tuple:
    """(seconds, frames (T, H, W, 3) float32): set_source + animate, the source work included."""
    sync(engine.device)
    t0 = time.perf_counter()
    engine.set_source(source)
    out = [b.cpu().numpy() for b in engine.animate(frames, output='batch')]
    sync(engine.device)
    return time.perf_counter() - t0, np.concatenate(out).transpose(0, 2, 3, 1)


def run_loop(generator, kp_detector, source, frames, device) -> tuple:
    sync(device)
    t0 = time.perf_counter()
    out = per_frame_animation(source, frames, generator, kp_detector, device=device)
    sync(device)
    return time.perf_counter() - t0, np.stack(out)


def profile_engine(engine: AnimationEngine, source: np.ndarray, frames: list, rounds: int = 2) -> dict:
    """Seconds per frame spent in each stage of the engine (best of `rounds`)."""
    from core.runtime import autocast
    engine.set_source(source)
    fmt = torch.channels_last if engine.channels_last else torch.contiguous_format
    batch = engine.to_tensor(frames[0]).expand(engine.batch_size, -1, -1, -1).contiguous(memory_format=fmt)
    b = batch.shape[0]
    gen = engine.generator  # the source-side work runs the modules as they are
    times = {}

    def timed(name, fn, per=b):
        best = float('inf')
        for _ in range(rounds + 1):  # the first round warms up
            sync(engine.device)
            t0 = time.perf_counter()
            result = fn()
            sync(engine.device)
            best = min(best, time.perf_counter() - t0)
        times[name] = best / per
        return result

    gen_kp = engine.kp_detector
    parts = engine.parts()
    with torch.inference_mode(), autocast(engine.device, engine.precision):
        kp = timed('keypoint detector (driving)', lambda: parts['keypoints'](batch))
        src = engine.source.expand(b, -1, -1, -1)
        kp_src = {k: v.expand(b, *v.shape[1:]) for k, v in engine.kp_source.items()}
        dm = timed('dense motion network', lambda: parts['dense_motion'](src, kp, kp_src))
        enc = engine.encoded.expand(b, -1, -1, -1)

        def warp():  # as generator.warp: the occlusion map resized to the features when they differ
            out = gen.deform_input(enc, dm['deformation'])
            occlusion = dm['occlusion_map']
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode='bilinear', align_corners=False)
            return out * occlusion.to(out.dtype)
        warped = timed('warp + occlusion', warp)
        timed('decoder (bottleneck + up blocks)', lambda: parts['decode'](warped.contiguous(memory_format=fmt)))
        timed('[loop only] keypoint detector (source)', lambda: gen_kp(engine.source), per=1)
        timed('[loop only] encoder (source)', lambda: gen.encode(engine.source), per=1)
    return times


def memory_check(args, generator, kp_detector, device, layout) -> None:
    """RSS growth for a short and a long driving video streamed through the engine."""
    counts = [int(c) for c in args.memory_frames.split(',')]
    engine = AnimationEngine(generator, kp_detector, device, args.memory_precision, args.batch_size,
                             channels_last=layout, fuse=not args.no_fuse)
    msize = args.memory_size
    print('memory: engine %s, frames %dx%d streamed from a generator, writer %s'
          % (engine.precision, msize, msize, args.writer))
    engine.set_source(texture(msize, seed=0))
    list(engine.animate(driving_frames(2 * args.batch_size, msize)))  # warm-up: allocator pools
    growth = {}
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            writer = None
            if args.writer == 'mp4':
                from media.video_io import VideoWriter
                writer = VideoWriter(os.path.join(tmp, 'out.mp4'), fps=25)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with RssSampler() as rss:
                written = 0
                for frame in engine.animate(driving_frames(count, msize)):
                    if writer is not None:
                        writer.write(frame)
                    written += 1
                if writer is not None:
                    writer.close()
            seconds = time.perf_counter() - t0
        growth[count] = rss.growth_mb
        extra = ''
        if device.type == 'cuda':
            extra = ', CUDA peak allocated %.0f MB' % (torch.cuda.max_memory_allocated(device) / 2 ** 20)
        print('  %5d frames: RSS growth %7.1f MB (peak %.0f MB)%s, %.1f s, %.1f frames/s'
              % (written, rss.growth_mb, rss.peak / 2 ** 20, extra, seconds, written / seconds))
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        print('  growth difference %d vs %d frames: %.1f MB (the original loop would hold %.0f MB more '
              'of float64 frames)' % (b, a, growth[b] - growth[a], (b - a) * msize * msize * 3 * 8 / 2 ** 20))


# ------------------------------------------------------------------------------ demo, end to end
def write_demo_inputs(folder: str, generator, kp_detector, config_path: str, count: int, size: int) -> dict:
    """A checkpoint of the bench's weights (with its config), the source image and a `count`-frame
    driving clip, as files for demo.py."""
    import imageio.v2 as imageio

    from core.config import load_config
    from media.video_io import VideoWriter
    paths = {'checkpoint': os.path.join(folder, 'weights.pth.tar'), 'source': os.path.join(folder, 'source.png'),
             'driving': os.path.join(folder, 'driving.mp4'), 'result': os.path.join(folder, 'result.mp4')}
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 0,
                'config': load_config(config_path).to_dict()}, paths['checkpoint'])
    imageio.imwrite(paths['source'], (texture(size, seed=0) * 255).round().astype(np.uint8))
    with VideoWriter(paths['driving'], fps=25) as writer:
        for frame in driving_frames(count, size):
            writer.write(frame)
    return paths


def run_demo(paths: dict, config_path: str, precision: str, device: torch.device, extra=()) -> float:
    """Seconds of `python demo.py ...` in a fresh process: imports, loading, decoding, animating,
    encoding, all of it."""
    command = [sys.executable, str(ROOT / 'demo.py'), '--config', config_path, '--checkpoint', paths['checkpoint'],
               '--source_image', paths['source'], '--driving_video', paths['driving'],
               '--result_video', paths['result'], '--relative', '--precision', precision, '--device', str(device),
               '--quiet', '--overwrite', *extra]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=str(ROOT), env=child_env())
    return time.perf_counter() - t0


def child_env() -> dict:
    """The environment for child processes: this process's torch thread count."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))


def demo_comparison(args, generator, kp_detector, device) -> None:
    """demo.py end to end (a fresh process per run) vs the per-frame loop run in this process on
    the same decoded frames, in interleaved rounds, the best of each kept."""
    from media.video_io import open_video
    precisions = (args.precisions.split(',') if args.precisions else ['fp32', 'bf16'])
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_demo_inputs(tmp, generator, kp_detector, args.config, args.demo_frames, args.size)
        frames = [f.astype(np.float32) / 255 for f in open_video(paths['driving'])]
        source = texture(args.size, seed=0)
        print('demo.py end to end: %d-frame %dx%d clip, default batch size, fresh process per run (imports, '
              'loading, decoding, encoding included), vs the per-frame loop in this process on the same frames'
              % (len(frames), args.size, args.size))
        best = {name: float('inf') for name in ['loop'] + precisions}
        for _ in range(args.rounds):
            best['loop'] = min(best['loop'], run_loop(generator, kp_detector, source, frames, device)[0])
            for p in precisions:
                best[p] = min(best[p], run_demo(paths, args.config, p, device))
        print('  %-34s %7.2f s' % ('per-frame loop (fp32), in process', best['loop']))
        for p in precisions:
            print('  %-34s %7.2f s  loop / demo %.2fx'
                  % ('demo.py --precision %s' % p, best[p], best['loop'] / best[p]))
        help_seconds = min(timed_command([sys.executable, str(ROOT / 'demo.py'), '--help']) for _ in range(3))
        print('  %-34s %7.2f s' % ('demo.py --help (interpreter + imports)', help_seconds))
        if args.startup:
            startup_report(paths, args.config, precisions[-1], device)


def timed_command(command) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=str(ROOT), env=child_env())
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ start-up stages
def startup_report(paths: dict, config_path: str, precision: str, device: torch.device) -> None:
    """Where a fresh process spends its time up to the first frames (demo.py's path), per stage:
    bench/startup_stages.py in a child process."""
    command = [sys.executable, str(ROOT / 'bench' / 'startup_stages.py'), '--config', config_path,
               '--checkpoint', paths['checkpoint'], '--source_image', paths['source'],
               '--driving_video', paths['driving'], '--precision', precision, '--device', str(device)]
    res = subprocess.run(command, check=True, capture_output=True, text=True, cwd=str(ROOT), env=child_env())
    print(res.stdout.rstrip())


# ------------------------------------------------------------------------------ main
def model_flags(p: argparse.ArgumentParser) -> None:
    """--config, --checkpoint and --device of the inference benchmarks (vox-256, random weights)."""
    d = ' (default: %(default)s)'
    p.add_argument('--config', default=str(ROOT / 'config' / 'vox-256.yaml'), help='model config' + d)
    p.add_argument('--checkpoint', default=None, help='weights; random (seeded) weights when absent' + d)
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ' (default: %(default)s)'
    model_flags(p)
    p.add_argument('--frames', type=int, default=16, help='driving frames for the speed comparison' + d)
    p.add_argument('--size', type=int, default=256, help='frame size for the speed comparison' + d)
    p.add_argument('--batch_size', type=int, default=8, help='engine batch size' + d)
    p.add_argument('--precisions', default=None,
                   help='engine precisions to time, comma separated (default: fp32,bf16 on CPU, '
                        'fp32,bf16,fp16 on CUDA)')
    p.add_argument('--rounds', type=int, default=2, help='timing rounds per variant, the best kept' + d)
    p.add_argument('--channels_last', choices=('auto', 'on', 'off'), default='auto',
                   help='engine memory layout: NHWC on, off, or auto (the engine default: on for CPU, on CUDA for bf16/fp16)' + d)
    p.add_argument('--no_fuse', action='store_true', help='run the modules as they are (no fused copies)' + d)
    p.add_argument('--compile', action='store_true', help='torch.compile the engine networks' + d)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--memory_frames', default='100,1000',
                   help='short,long driving videos for the memory check; "" skips it' + d)
    p.add_argument('--memory_size', type=int, default=128,
                   help='frame size for the memory check (smaller keeps it fast)' + d)
    p.add_argument('--memory_precision', default='auto', help='engine precision for the memory check' + d)
    p.add_argument('--writer', choices=('null', 'mp4'), default='null',
                   help='memory check: drop frames, or encode them to a temporary mp4' + d)
    p.add_argument('--profile', action='store_true', help='print the time per engine stage' + d)
    p.add_argument('--demo_frames', type=int, default=0,
                   help='also time demo.py end to end on a clip of this many frames (fresh processes) against '
                        'the per-frame loop in this process; 0 skips it' + d)
    p.add_argument('--startup', action='store_true',
                   help='with --demo_frames: also print the start-up stages of a fresh process' + d)
    return p


def time_variants(generator, kp_detector, engines, source, frames, device, args) -> None:
    """Warm up, then time the per-frame loop and each engine in interleaved rounds (best of
    args.rounds); print frames/s, speed-ups and the difference of each engine's frames."""
    # warm up every variant (oneDNN primitive caches, cuDNN autotune, compilation)
    run_loop(generator, kp_detector, source, frames[:2], device)
    for p, e in engines.items():
        t0 = time.perf_counter()
        run_engine(e, source, frames[:min(len(frames), args.batch_size)])
        if args.compile:
            print('  engine %s: first batch (compilation) %.1f s' % (p, time.perf_counter() - t0))

    best = {name: float('inf') for name in ['loop', *engines]}
    outputs = {}
    for _ in range(args.rounds):
        seconds, outputs['loop'] = run_loop(generator, kp_detector, source, frames, device)
        best['loop'] = min(best['loop'], seconds)
        for p, e in engines.items():
            seconds, outputs[p] = run_engine(e, source, frames)
            best[p] = min(best[p], seconds)

    n = len(frames)
    print('  %-34s %8.2f frames/s  (%.1f ms/frame)' % ('original per-frame loop (fp32)', n / best['loop'],
                                                       1000 * best['loop'] / n))
    for p in engines:
        line = '  %-34s %8.2f frames/s  (%.1f ms/frame)  speed-up %.2fx' % (
            'engine %s' % p, n / best[p], 1000 * best[p] / n, best['loop'] / best[p])
        if p == 'fp32':
            line += '  max abs diff to loop %.2e' % float(np.abs(outputs[p] - outputs['loop']).max())
        else:
            ref = outputs.get('fp32', outputs['loop'])
            line += '  PSNR vs fp32 %.1f dB (max abs diff %.3f)' % (psnr(outputs[p], ref),
                                                                      float(np.abs(outputs[p] - ref).max()))
        print(line)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(args.config, args.checkpoint)
    generator.to(device)
    kp_detector.to(device)

    print(describe_machine(device))
    print('config: %s, weights: %s' % (args.config, args.checkpoint or 'random (seed 0)'))
    precisions = (args.precisions.split(',') if args.precisions
                  else ['fp32', 'bf16'] + (['fp16'] if device.type == 'cuda' else []))

    size = args.size
    source = texture(size, seed=0)
    frames = [f.astype(np.float32) / 255 for f in driving_frames(args.frames, size)]
    layout = {'auto': None, 'on': True, 'off': False}[args.channels_last]
    # the loop runs the caller's modules in the default layout; engines get their own copies, so
    # that an NHWC engine does not change the layout under the loop
    engines = {p: AnimationEngine(copy.deepcopy(generator), copy.deepcopy(kp_detector), device, p, args.batch_size,
                                  channels_last=layout, fuse=not args.no_fuse, compile=args.compile)
               for p in precisions}
    print('speed: %d driving frames %dx%d, engine batch %d, %s, layout %s, best of %d rounds'
          % (len(frames), size, size, args.batch_size, 'eager modules' if args.no_fuse else 'fused copies',
             ', '.join('%s %s' % (p, 'NHWC' if e.channels_last else 'NCHW') for p, e in engines.items())
             + (', compiled' if args.compile else ''), args.rounds))

    time_variants(generator, kp_detector, engines, source, frames, device, args)
    if args.profile:
        for p, e in engines.items():
            print('profile, engine %s, batch %d (ms per frame):' % (p, args.batch_size))
            for stage, t in profile_engine(e, source, frames).items():
                print('  %-42s %7.1f' % (stage, 1000 * t))

    if args.memory_frames:
        memory_check(args, generator, kp_detector, device, layout)
    if args.demo_frames:
        demo_comparison(args, generator, kp_detector, device)
    return 0


if __name__ == '__main__':
    sys.exit(main())
