"""Live animation: a camera (or a video file standing in for one) drives a source image, frame by
frame, on the inference engine at batch 1 with the source computed once.

    python live.py --camera 0 --source me.png cat.png          # to a virtual camera (pyvirtualcam)
    python live.py --video driving.mp4 --source me.png --headless --output out.mp4
    python live.py --config config/vox-256.yaml --checkpoint vox-cpk.pth.tar --camera 0 --source photo.jpg

Motion is relative to a reference frame: the first one, until you press r (then the current frame).
Keys, typed in this terminal: n or space: next source image; r: the current frame becomes the
reference; q: quit. Output goes to a virtual camera when `pyvirtualcam` is installed (pick it in a
video-call app; on Linux it needs the v4l2loopback module), or with --headless to a video file
(--output, written through the project's output-path rule: never an input, never a file this tool
did not write unless --overwrite). At the end it prints the per-frame latency of the model
(keypoints + dense motion + decoder: p50, p95) and the frames per second of the whole loop.
"""
import argparse
import contextlib
import copy
import os
import select
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from core import cli
from core.runtime import PRECISIONS
from engine.smoothing import add_smoothing_flags, smoother_from_flags
from engine.torch_engine import AnimationEngine
from media.formats import VIDEO_OUTPUTS, listing
from media.images import FITS, MediaError, fit, read_image, resize
from media.outputs import OutputError, check_outputs

PROG = 'live.py'
DEFAULT_CHECKPOINT = 'checkpoints/shapes-64.pth.tar'
DEFAULT_SOURCE = 'assets/shapes-source.png'
KEYS = {'n': 'next', ' ': 'next', 'r': 'reference', 'q': 'quit'}


class UserError(Exception):
    """A mistake in the command line or the inputs: printed as one line, exit status 1."""


# ------------------------------------------------------------------------------ inputs
def open_camera(index: int):
    """An OpenCV capture of camera `index`, opened (or UserError)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # one line of ours, not OpenCV's warnings
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise UserError('--camera %d: cannot open the camera (is it connected, and free?)' % index)
    return capture


def camera_frames(capture) -> Iterator[np.ndarray]:
    """RGB uint8 frames from an opened capture until the camera stops delivering."""
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB
    finally:
        capture.release()


class Keys:
    """Key presses: typed in the terminal (when stdin is one), or scripted as 'FRAME:KEY,...'."""

    def __init__(self, script: str = ''):
        self.script: Dict[int, List[str]] = {}
        for item in filter(None, (s.strip() for s in script.split(','))):
            frame, _, key = item.partition(':')
            if not frame.isdigit() or key not in KEYS:
                raise UserError('--keys: %r is not FRAME:KEY with KEY one of %s' % (item, ' '.join(sorted(KEYS))))
            self.script.setdefault(int(frame), []).append(key)
        self.terminal = None

    def __enter__(self) -> 'Keys':
        if sys.stdin.isatty():
            import termios
            import tty
            self.terminal = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())  # keys without Enter; restored on exit
        return self

    def __exit__(self, *exc) -> None:
        if self.terminal is not None:
            import termios
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self.terminal)

    def actions(self, frame: int) -> List[str]:
        keys = list(self.script.get(frame, ()))
        while self.terminal is not None and select.select([sys.stdin], [], [], 0)[0]:
            keys.append(sys.stdin.read(1))
        return [KEYS[k] for k in keys if k in KEYS]


# ----------------------------------------------------------------------------- outputs
class VirtualCamera:
    """Frames to a virtual camera (pyvirtualcam), paced to its fps."""

    def __init__(self, width: int, height: int, fps: float):
        import pyvirtualcam  # check_args made sure it is there

        try:
            self.camera = pyvirtualcam.Camera(width=width, height=height, fps=fps,
                                              fmt=pyvirtualcam.PixelFormat.RGB)
        except RuntimeError as e:
            raise UserError('virtual camera: %s' % e) from None
        print('%s: sending to the virtual camera %s' % (PROG, self.camera.device), file=sys.stderr)

    def write(self, frame: np.ndarray) -> None:
        self.camera.send(frame)
        self.camera.sleep_until_next_frame()

    def close(self) -> None:
        self.camera.close()


# ------------------------------------------------------------------------------- engine
class Sources:
    """One engine view per source image, each with its source set once (the networks are shared);
    all views measure motion from the same reference frame."""

    def __init__(self, engine: AnimationEngine, images: Sequence[np.ndarray]):
        self.views = []
        for image in images:
            view = copy.copy(engine)
            view.set_source(fit(image, engine.frame_shape, 'resize'))
            self.views.append(view)
        self.index = 0

    @property
    def engine(self) -> AnimationEngine:
        return self.views[self.index]

    def next(self) -> None:
        reference = self.engine.kp_reference
        self.index = (self.index + 1) % len(self.views)
        self.engine.kp_reference = reference  # the same driving frame as before the switch

    def set_reference(self, frame: np.ndarray) -> None:
        self.engine.set_reference(frame)
        for view in self.views:
            view.kp_reference = self.engine.kp_reference


def percentile_ms(values: Sequence[float], q: float) -> float:
    return 1000 * float(np.percentile(np.asarray(values), q)) if len(values) else float('nan')


def run_loop(frames: Iterator[np.ndarray], sources: Sources, sink, keys: Keys, args: argparse.Namespace) -> tuple:
    """Animate every frame into the sink; (latencies in s, frames, seconds) of the loop."""
    size = sources.engine.frame_shape
    latency: List[float] = []
    start, count, last = time.perf_counter(), 0, None
    try:
        for count, frame in enumerate(frames, start=1):
            now = time.perf_counter()
            # a camera's frames are filtered at the times they came; a video's at its own rate
            dt = now - last if getattr(args, 'video', None) is None and last is not None and now > last else None
            last = now
            driving = fit(frame, size, args.fit)
            actions = keys.actions(count - 1)
            if 'quit' in actions:
                count -= 1
                break
            for _ in range(actions.count('next')):
                sources.next()
            if 'reference' in actions or sources.engine.kp_reference is None:
                sources.set_reference(driving)
            begin = time.perf_counter()
            out = sources.engine.animate_frame(driving, relative=not args.absolute, adapt_scale=args.adapt_scale, dt=dt)
            latency.append(time.perf_counter() - begin)
            sink.write(resize(out, args.out_size, args.out_size) if args.out_size else out)
            if args.max_frames and count >= args.max_frames:
                break
    except KeyboardInterrupt:  # Ctrl-C ends a camera session: the output so far is kept
        pass
    return latency, count, time.perf_counter() - start


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument('--config', default=None,
                   help='model config (YAML); none: the config stored in the checkpoint')
    p.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT, help='weights (.pth.tar) that fit the config')
    p.add_argument('--source', nargs='+', default=[DEFAULT_SOURCE],
                   help='one or more source images (n switches between them)')
    given = p.add_mutually_exclusive_group()
    given.add_argument('--camera', type=int, default=None, help='camera index (OpenCV); with neither --camera nor --video: 0')
    given.add_argument('--video', default=None, help='a video file standing in for the camera')
    p.add_argument('--headless', action='store_true', help='no virtual camera: write the frames to --output')
    p.add_argument('--output', default=None, help='with --headless: the video to write (%s)'
                   % listing([s for s in VIDEO_OUTPUTS if s != '.png']))
    p.add_argument('--overwrite', action='store_true', help='replace an existing --output this tool did not write')
    p.add_argument('--fit', choices=FITS, default='crop',
                   help='how camera frames reach the model\'s size (crop: centre square, no distortion)')
    p.add_argument('--absolute', action='store_true', help='absolute keypoints instead of motion relative to '
                   'the reference frame')
    p.add_argument('--adapt_scale', action='store_true', help='scale the motion by the keypoints\' spread')
    p.add_argument('--out_size', type=int, default=None, help='output frames resized to N x N; none: the model\'s size')
    p.add_argument('--fps', type=float, default=None, help='output fps; none: the video\'s or the camera\'s')
    p.add_argument('--max_frames', type=int, default=0, help='stop after this many frames (0: when the input ends)')
    p.add_argument('--keys', default='', help='scripted key presses FRAME:KEY,... (e.g. "30:n,60:r"), as if typed')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N; none: cuda when available, else cpu')
    add_smoothing_flags(p)
    p.add_argument('--precision', default='auto', choices=PRECISIONS,
                   help='auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32')
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, before any work starts (the output-path rule included)."""
    from media.formats import output_format

    Keys(args.keys)  # a typo in the script fails here, before the model loads
    if args.headless and not args.output:
        raise UserError('--headless needs --output out.mp4 (where the frames go)')
    if args.output and not args.headless:
        raise UserError('--output is for --headless (without it, frames go to the virtual camera)')
    if not args.headless:
        try:
            import pyvirtualcam  # noqa: F401
        except ImportError:
            raise UserError('no output: pyvirtualcam is not installed (pip install pyvirtualcam; on Linux also the '
                            'v4l2loopback module), or write to a file with --headless --output out.mp4') from None
    for flag, value in (('--out_size', args.out_size), ('--fps', args.fps)):
        if value is not None and value <= 0:
            raise UserError('%s: must be > 0, got %r' % (flag, value))
    inputs = {'--video': args.video, '--checkpoint': args.checkpoint, '--config': args.config}
    inputs.update({'--source %s' % path: path for path in args.source})
    for flag, path in inputs.items():
        if path is not None and not os.path.exists(path):
            raise UserError('%s: file not found: %s' % (flag.split()[0], path))
    if args.output:
        output_format(args.output, '--output', [s for s in VIDEO_OUTPUTS if s != '.png'])  # a stream: no frame folder
        check_outputs({'--output': args.output}, inputs, overwrite=args.overwrite)


def open_input(args: argparse.Namespace):
    """(frames iterator, fps) from --video or --camera."""
    from media.video_io import open_video

    if args.video is not None:
        video = open_video(args.video)
        if video.num_frames < 1:
            raise UserError('--video: %s has no frames' % args.video)
        return iter(video), args.fps or video.info.fps
    import cv2

    capture = open_camera(0 if args.camera is None else args.camera)
    fps = capture.get(cv2.CAP_PROP_FPS)
    return camera_frames(capture), args.fps or (fps if 1 <= fps <= 240 else 30.0)


def report(latency: Sequence[float], count: int, seconds: float, engine: AnimationEngine) -> str:
    return ('%s: %d frames; model latency per frame (keypoints + dense motion + decoder, batch 1, %s %s): '
            'p50 %.1f ms, p95 %.1f ms; %.1f frames/s end to end (input, model, output)'
            % (PROG, count, engine.device, engine.precision, percentile_ms(latency, 50), percentile_ms(latency, 95),
               count / seconds if seconds > 0 else 0.0))


def run(args: argparse.Namespace) -> str:
    from media.video_io import VideoWriter

    check_args(args)
    images = [read_image(path) for path in args.source]
    frames, fps = open_input(args)
    engine = AnimationEngine.from_checkpoint(args.config, args.checkpoint, device=args.device,
                                             precision=args.precision, batch_size=1)
    engine.set_smoothing(smoother_from_flags(args, fps))  # shared by the views: one stream of driving keypoints
    sources = Sources(engine, images)
    height, width = (args.out_size, args.out_size) if args.out_size else engine.frame_shape
    with contextlib.ExitStack() as stack:
        if args.headless:
            sink = stack.enter_context(VideoWriter(args.output, fps=fps))
        else:
            sink = VirtualCamera(width, height, fps)
            stack.callback(sink.close)
        keys = stack.enter_context(Keys(args.keys))
        if keys.terminal is not None:
            print('%s: keys: n next source, r reset the reference, q quit' % PROG, file=sys.stderr)
        latency, count, seconds = run_loop(frames, sources, sink, keys, args)
    return report(latency, count, seconds, engine)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from core.checkpoint import CheckpointError
    from core.config import ConfigError

    try:
        print(run(args))
    except (UserError, ConfigError, CheckpointError, MediaError, OutputError, ValueError, OSError) as e:
        return cli.report(PROG, e)
    except (KeyboardInterrupt, SystemExit) as e:
        return cli.interrupted(PROG, e)
    return 0


if __name__ == '__main__':
    cli.one_line_warnings('live.py')
    sys.exit(main())
