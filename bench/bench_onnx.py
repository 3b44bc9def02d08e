"""Benchmark: the torch-free runtime (onnx_engine, onnxruntime) vs the torch engine vs the
original per-frame loop, same weights, same frames, in one run.

    python bench/bench_onnx.py                       # vox-256, random weights, CPU, 2 threads
    python bench/bench_onnx.py --install_sizes --no_speed   # site-packages of fresh venvs in /tmp

Prints, measured in this one run (rounds interleave the variants and keep each one's best):
  * frames/s of the per-frame loop (fp32), the torch engine (fp32 and bf16, bf16 where the CPU
    runs it natively) and onnx_engine on what onnxruntime's CPU provider offers: the fp32 export,
    the --fp16 export, and the fp32 export with its convolutions quantized to int8 (dynamic
    quantization, onnxruntime.quantization; no bf16 kernels there), each with the speed-up over
    the loop and its difference to the torch engine in fp32 (max abs diff; PSNR for the others);
  * the export's time and file sizes;
  * with --install_sizes, the site-packages size of a fresh venv holding what the torch-free demo
    needs (numpy, onnxruntime, opencv-python-headless, imageio, imageio-ffmpeg, pillow, pyyaml,
    tqdm) next to the same venv with torch instead of onnxruntime (pip, from the configured index),
    and `demo.py --backend onnx` run in the torch-free venv on the embedded shapes-64 model.
"""
import argparse
import copy
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

from baseline import per_frame_animation  # noqa: E402
from bench_animate import driving_frames, psnr, texture  # noqa: E402
from engine.torch_engine import AnimationEngine, load_networks  # noqa: E402
from core.runtime import cpu_has_native_bf16  # noqa: E402

RUNTIME_PACKAGES = ['numpy', 'opencv-python-headless<5', 'imageio', 'imageio-ffmpeg', 'pillow', 'pyyaml', 'tqdm']


def timed(fn) -> tuple:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def animate(engine, source, frames) -> np.ndarray:
    """set_source + animate (the source work included) -> float32 (T, H, W, 3)."""
    engine.set_source(source)
    return np.concatenate([np.asarray(b) for b in engine.animate(frames, output='batch')]).transpose(0, 2, 3, 1)


def quantized_copy(folder: str, dst: str) -> None:
    """The export in `folder` with every graph's convolutions quantized to int8 (weights uint8,
    activations quantized on the fly), checksums updated in the manifest."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from engine.onnx_engine import MANIFEST, sha256
    shutil.copytree(folder, dst)
    with open(os.path.join(dst, MANIFEST)) as f:
        manifest = json.load(f)
    for entry in manifest['graphs'].values():
        path = os.path.join(dst, entry['file'])
        quantize_dynamic(os.path.join(folder, entry['file']), path, weight_type=QuantType.QUInt8,
                         op_types_to_quantize=['Conv'])
        entry['sha256'] = sha256(path)
    manifest['precision'] = 'int8'
    with open(os.path.join(dst, MANIFEST), 'w') as f:
        json.dump(manifest, f)


def folder_mb(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob('*') if f.is_file()) / 2 ** 20


def venv_size(folder: str, packages: list) -> float:
    """MB of site-packages of a fresh venv with `packages` (pip as configured here)."""
    subprocess.run([sys.executable, '-m', 'venv', folder], check=True)
    pip = os.path.join(folder, 'bin', 'pip')
    subprocess.run([pip, 'install', '-q', '--no-cache-dir'] + packages, check=True)
    python = os.path.join(folder, 'bin', 'python')
    site = subprocess.run([python, '-c', 'import site; print(site.getsitepackages()[0])'], check=True,
                          capture_output=True, text=True).stdout.strip()
    return folder_mb(site)


def demo_without_torch(python: str, tmp: str) -> str:
    """Export the embedded model here, run demo.py --backend onnx with the venv's `python`."""
    import export
    folder = os.path.join(tmp, 'shapes-onnx')
    assert export.main(['--checkpoint', str(ROOT / 'checkpoints' / 'shapes-64.pth.tar'), '--out', folder]) == 0
    result = os.path.join(tmp, 'result.mp4')
    res = subprocess.run([python, str(ROOT / 'demo.py'), '--backend', 'onnx', '--onnx_dir', folder, '--relative',
                          '--source_image', str(ROOT / 'assets' / 'shapes-source.png'), '--quiet',
                          '--driving_video', str(ROOT / 'assets' / 'shapes-driving.mp4'), '--result_video', result],
                         capture_output=True, text=True)
    torch_there = subprocess.run([python, '-c', 'import torch'], capture_output=True).returncode == 0
    return 'exit %d, %s, torch importable there: %s' % (
        res.returncode, 'wrote %s (%.0f kB)' % (os.path.basename(result), os.path.getsize(result) / 1024)
        if res.returncode == 0 else res.stderr.strip()[-300:], torch_there)


def install_sizes(onnxruntime_version: str, torch_version: str) -> None:
    with tempfile.TemporaryDirectory(dir='/tmp') as tmp:
        pins = ['onnxruntime==%s' % onnxruntime_version, 'torch==%s' % torch_version.split('+')[0]]
        sizes = {}
        for name, extra in (('base', []), ('onnxruntime', pins[:1]), ('torch', pins[1:])):
            sizes[name] = venv_size(os.path.join(tmp, name), RUNTIME_PACKAGES + extra)
            if name == 'onnxruntime':
                demo = demo_without_torch(os.path.join(tmp, name, 'bin', 'python'), tmp)
            shutil.rmtree(os.path.join(tmp, name))
    print('install size (site-packages of a fresh venv; common packages: %s):' % ' '.join(RUNTIME_PACKAGES))
    print('  %-40s %7.0f MB' % ('common packages alone', sizes['base']))
    for name, pin in zip(('onnxruntime', 'torch'), pins):
        print('  %-40s %7.0f MB  (%s with its dependencies: %.0f MB)'
              % ('common + %s' % pin, sizes[name], name, sizes[name] - sizes['base']))
    print('  torch-free runtime / torch runtime: %.2f' % (sizes['onnxruntime'] / sizes['torch']))
    print('  demo.py --backend onnx in the torch-free venv: %s' % demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ' (default: %(default)s)'
    p.add_argument('--config', default=str(ROOT / 'config' / 'vox-256.yaml'), help='model config' + d)
    p.add_argument('--frames', type=int, default=16, help='driving frames' + d)
    p.add_argument('--batch_size', type=int, default=8, help='engine batch size (both engines)' + d)
    p.add_argument('--threads', type=int, default=2, help='CPU threads of torch and of onnxruntime' + d)
    p.add_argument('--rounds', type=int, default=2, help='timing rounds, the best kept' + d)
    p.add_argument('--no_fp16', action='store_true', help='skip the fp16 export')
    p.add_argument('--no_int8', action='store_true', help='skip the int8 (dynamic quantization) variant')
    p.add_argument('--no_speed', action='store_true', help='skip the speed comparison')
    p.add_argument('--install_sizes', action='store_true', help='measure the install sizes (fresh venvs in /tmp)')
    return p


def onnx_engines(generator, kp_detector, config, tmp: str, args) -> dict:
    """{name: OnnxEngine} of the fp32 export, the fp16 export and the int8 copy, written into `tmp`."""
    import export
    from engine.onnx_engine import OnnxEngine

    engines = {}
    for precision in ('fp32',) if args.no_fp16 else ('fp32', 'fp16'):
        folder = os.path.join(tmp, precision)
        seconds, _ = timed(lambda: export.export_model(generator, kp_detector, config, folder,
                                                       fp16=precision == 'fp16', threads=args.threads))
        print('export %s: %.0f s, %s' % (precision, seconds, graph_sizes(folder)))
        engines['onnx_engine %s' % precision] = OnnxEngine.from_export(folder, batch_size=args.batch_size,
                                                                       threads=args.threads)
    if not args.no_int8:
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process
        folder = os.path.join(tmp, 'int8')
        seconds, _ = timed(lambda: quantized_copy(os.path.join(tmp, 'fp32'), folder))
        print('int8 (dynamic quantization of the convolutions): %.0f s, %s' % (seconds, graph_sizes(folder)))
        engines['onnx_engine int8'] = OnnxEngine.from_export(folder, batch_size=args.batch_size, threads=args.threads)
    return engines


def graph_sizes(folder: str) -> str:
    return ', '.join('%s %.0f MB' % (f, os.path.getsize(os.path.join(folder, f)) / 2 ** 20)
                     for f in sorted(os.listdir(folder)) if f.endswith('.onnx'))


def compare_speed(args) -> None:
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(args.config, None)
    size = int(config.dataset_params.frame_shape[0])
    print('config: %s, random weights (seed 0); %d driving frames %dx%d, batch %d, best of %d rounds'
          % (args.config, args.frames, size, size, args.batch_size, args.rounds))
    tmp = tempfile.mkdtemp(prefix='bench-onnx-')
    try:
        engines = onnx_engines(generator, kp_detector, config, tmp, args)
        # the torch engines get their own copies: their NHWC layout must not change the loop's modules
        for precision in ('fp32', 'bf16'):
            engines['torch engine %s' % precision] = AnimationEngine(
                copy.deepcopy(generator), copy.deepcopy(kp_detector), 'cpu', precision, args.batch_size)
        source = texture(size, seed=0)
        frames = [f.astype(np.float32) / 255 for f in driving_frames(args.frames, size)]
        for engine in engines.values():  # warm-up: oneDNN primitives, onnxruntime's first run
            animate(engine, source, frames[:args.batch_size])
        best, outputs = {}, {}
        for _ in range(args.rounds):
            seconds, outputs['loop'] = timed(lambda: np.stack(per_frame_animation(source, frames, generator,
                                                                                  kp_detector)))
            best['loop'] = min(best.get('loop', np.inf), seconds)
            for name, engine in engines.items():
                seconds, outputs[name] = timed(lambda: animate(engine, source, frames))
                best[name] = min(best.get(name, np.inf), seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(best, outputs, len(frames))


def report(best: dict, outputs: dict, n: int) -> None:
    reference = outputs['torch engine fp32']
    print('  %-24s %7.2f frames/s  %7.1f ms/frame' % ('per-frame loop fp32', n / best['loop'],
                                                      1000 * best['loop'] / n))
    for name in sorted(best, key=lambda k: (not k.startswith('torch'), k)):
        if name == 'loop':
            continue
        diff = float(np.abs(outputs[name] - reference).max())
        to_loop = 'to the loop %.1e' % float(np.abs(outputs[name] - outputs['loop']).max())
        if name == 'torch engine fp32':
            check = 'max abs diff ' + to_loop
        elif name.endswith('fp32'):
            check = 'max abs diff to torch engine fp32 %.1e, %s' % (diff, to_loop)
        else:
            check = 'PSNR vs torch engine fp32 %.1f dB (max abs diff %.4f)' % (psnr(outputs[name], reference), diff)
        print('  %-24s %7.2f frames/s  %7.1f ms/frame  %5.2fx loop  %s'
              % (name, n / best[name], 1000 * best[name] / n, best['loop'] / best[name], check))


def main(argv=None) -> int:
    import onnxruntime as ort

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    print('torch %s, onnxruntime %s, python %s, %s; cpu, %d threads each, native bf16 (avx512_bf16/amx): %s'
          % (torch.__version__, ort.__version__, platform.python_version(), platform.machine(), args.threads,
             cpu_has_native_bf16()))
    if not args.no_speed:
        compare_speed(args)
    if args.install_sizes:
        install_sizes(ort.__version__, torch.__version__)
    return 0


if __name__ == '__main__':
    sys.exit(main())
