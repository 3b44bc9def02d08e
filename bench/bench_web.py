"""Benchmark: the in-browser page (web/, onnxruntime-web in headless Chromium) against
`demo.py --backend onnx` (onnxruntime in Python) on the same export, source and driving clip.

    make web                                             # the page's onnxruntime-web files
    python bench/bench_web.py                            # the embedded shapes-64 export, 32 frames
    python bench/bench_web.py --export /tmp/vox-256 --source face.png --driving face.mp4 --frames 8

The page is served by a small static server with the two cross-origin isolation headers (as any
static host would), loaded once, and animates the clip `--rounds` times after one warm-up run
(WebAssembly threads: the page's default, min(4, the cores Chromium reports); --threads 1 for
one). Printed per variant: frames/s (best round) and the rounds' spread:
  * the page: its own frames/s figure (decode + keypoints + generator + drawing, per frame);
  * onnx_engine in this process, the same loop (decode + keypoints + generator), onnxruntime's
    default threads (one per core) and --threads;
  * demo.py --backend onnx end to end (start-up, model load, writing PNG frames), wall time.
An export of vox-256 with random weights: save networks built from config/vox-256.yaml
(engine.torch_engine.load_networks(config, None)) to a checkpoint, then export.py --out DIR.
"""
import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import CROSS_ORIGIN_ISOLATION  # noqa: E402

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run']
SWIFTSHADER = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader']


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the headers WebAssembly threads need."""

    def end_headers(self):
        for name, value in CROSS_ORIGIN_ISOLATION.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args):
        pass


IsolatedHandler.extensions_map = dict(IsolatedHandler.extensions_map, **{'.mjs': 'text/javascript',
                                                                         '.wasm': 'application/wasm'})


def site(export: Path) -> Path:
    """A folder served as the site: web/'s files linked, the export under models/bench/."""
    folder = Path(tempfile.mkdtemp(prefix='fomm-bench-web-'))
    for entry in (ROOT / 'web').iterdir():
        if entry.name not in ('node_modules', 'models'):
            (folder / entry.name).symlink_to(entry)
    (folder / 'models').mkdir()
    (folder / 'models' / 'shapes-64').symlink_to(ROOT / 'web' / 'models' / 'shapes-64')
    (folder / 'models' / 'bench').symlink_to(export.resolve())
    return folder


def serve(folder: Path) -> tuple:
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(IsolatedHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, 'http://127.0.0.1:%d/' % server.server_address[1]


def cut(driving: Path, frames: int, out: Path) -> Path:
    """The first `frames` frames of the driving video, H.264 in MP4 (what the page decodes with WebCodecs)."""
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-y', '-i', str(driving),
                    '-frames:v', str(frames), '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-an', str(out)], check=True)
    return out


def page_runs(url: str, source: Path, driving: Path, rounds: int, backend: str, threads: int, chromium: str,
              swiftshader: bool) -> dict:
    from playwright.sync_api import sync_playwright
    query = '?model=models/bench/&backend=%s%s' % (backend, '&threads=%d' % threads if threads else '')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=CHROMIUM_FLAGS + (SWIFTSHADER if swiftshader else ['--disable-gpu']))
        page = browser.new_page()
        page.set_default_timeout(3_600_000)
        t0 = time.perf_counter()
        page.goto(url + 'index.html' + query)
        page.wait_for_function('window.fomm && window.fomm.info().state !== "starting"')
        load = time.perf_counter() - t0
        info = page.evaluate('fomm.info()')
        if not info['ready']:
            raise SystemExit('bench_web.py: the page did not load the export: %s' % info['message'])
        page.set_input_files('#source-input', str(source))
        page.set_input_files('#driving-input', str(driving))
        fps = []
        for i in range(rounds + 1):
            page.wait_for_function('!document.getElementById("animate").disabled')
            page.click('#animate')
            page.wait_for_function('["done", "ready"].includes(fomm.info().state)')
            info = page.evaluate('fomm.info()')
            if info['message'] or not info['frames']:
                raise SystemExit('bench_web.py: the page did not animate: %s' % info['message'])
            if i:  # the first run warms up (WebAssembly compilation, buffers)
                fps.append(info['fps'])
        browser.close()
    return {'fps': fps, 'load_s': load, 'backend': info['backend'], 'per_frame_ms': info['perFrameMs'],
            'frames': info['frames']}


def engine_runs(export: Path, source: Path, driving: Path, rounds: int, threads) -> list:
    """frames/s of onnx_engine's loop: decode + keypoints + generator (as the page's figure)."""
    from engine.onnx_engine import OnnxEngine
    from media.images import fit, read_image
    from media.video_io import iter_video_frames
    engine = OnnxEngine.from_export(str(export), threads=threads, batch_size=4)
    engine.set_source(fit(read_image(source), engine.frame_shape, 'resize'))
    fps = []
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        n = sum(1 for _ in engine.animate(fit(f, engine.frame_shape, 'resize') for f in iter_video_frames(driving)))
        if i:
            fps.append(n / (time.perf_counter() - t0))
    return fps


def demo_runs(export: Path, source: Path, driving: Path, rounds: int, out: Path) -> list:
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / 'demo.py'), '--backend', 'onnx', '--onnx_dir', str(export),
                        '--source_image', str(source), '--driving_video', str(driving), '--result_video', str(out),
                        '--relative', '--quiet', '--overwrite'], check=True, cwd=str(ROOT))
        seconds.append(time.perf_counter() - t0)
    return seconds


def chromium_version(path: str) -> str:
    try:
        return subprocess.run([path, '--version'], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--export', default=str(ROOT / 'web' / 'models' / 'shapes-64'), help='an export folder (export.py)')
    p.add_argument('--source', default=str(ROOT / 'assets' / 'shapes-source.png'), help='source image')
    p.add_argument('--driving', default=str(ROOT / 'assets' / 'shapes-driving.mp4'), help='driving video')
    p.add_argument('--frames', type=int, default=32, help='frames of the driving video used (its first ones)')
    p.add_argument('--rounds', type=int, default=2, help='timed runs of each variant (after a warm-up run)')
    p.add_argument('--threads', type=int, default=0, help='page and engine threads (0: their defaults)')
    p.add_argument('--backend', default='wasm', choices=('wasm', 'webgpu'), help='the page\'s backend')
    p.add_argument('--swiftshader', action='store_true', help='Chromium\'s software WebGPU adapter (with --backend webgpu)')
    p.add_argument('--chromium', default=os.environ.get('FOMM_CHROMIUM', '/usr/bin/chromium'), help='browser binary')
    args = p.parse_args(argv)
    if not (ROOT / 'web' / 'vendor' / 'ort.min.mjs').is_file():
        print('bench_web.py: error: the page is not built: run make web', file=sys.stderr)
        return 1
    export, source = Path(args.export), Path(args.source)
    manifest = json.loads((export / 'manifest.json').read_text())
    work = Path(tempfile.mkdtemp(prefix='fomm-bench-web-work-'))
    folder = site(export)
    server, url = serve(folder)
    try:
        driving = cut(Path(args.driving), args.frames, work / 'driving.mp4')
        print('machine: %s, %d cores, python %s, %s; load average at the start %.2f'
              % (platform.processor() or platform.machine(), os.cpu_count(), platform.python_version(),
                 chromium_version(args.chromium), os.getloadavg()[0]))
        print('export: %s (%dx%d, %s), %d driving frames, %d rounds after a warm-up'
              % (manifest.get('checkpoint'), manifest['frame_shape'][1], manifest['frame_shape'][0],
                 manifest.get('precision'), args.frames, args.rounds))
        page = page_runs(url, source, driving, args.rounds, args.backend, args.threads, args.chromium, args.swiftshader)
        print('page (%s): %s frames/s (best %.2f), model %.0f ms per frame, page load %.1f s'
              % (page['backend'], ', '.join('%.2f' % f for f in page['fps']), max(page['fps']), page['per_frame_ms'],
                 page['load_s']))
        for threads in sorted({None, args.threads or None}, key=lambda t: t or 0):
            fps = engine_runs(export, source, driving, args.rounds, threads)
            print('onnx_engine (onnxruntime, %s threads): %s frames/s (best %.2f)'
                  % (threads or 'default', ', '.join('%.2f' % f for f in fps), max(fps)))
        seconds = demo_runs(export, source, driving, args.rounds, work / 'frames.png')
        print('demo.py --backend onnx, end to end: %s s for %d frames'
              % (', '.join('%.1f' % s for s in seconds), args.frames))
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
