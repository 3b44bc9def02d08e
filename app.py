"""The web page: animate a photo with a driving video, or with your webcam, from a browser.

    pip install -r requirements-app.txt
    python app.py                                   # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --max_upload_mb 20 --max_frames 300 --concurrency 2

Animate tab: a source image and a driving video (uploads, or the bundled samples), the model (the
embedded default, or a config/*.yaml with a checkpoint from checkpoints/ or uploaded), the options
of demo.py; the result video (with the driving video's audio) and the side-by-side preview come
back for download. It runs pipeline.animate_photo, the same run mode as demo.py.
Live tab: the browser's webcam drives the source image through the engine at batch 1, the source
computed once; a button makes the current frame the reference for relative motion.

Models are loaded once and shared by requests (ModelCache); a queue bounds how many animations
run at once; uploads are capped; every bad input gives one line in the page. The handlers are
plain methods of `App` (tested without a browser); the Gradio blocks in `build_page` only call them.
Scripts call the Animate tab's endpoint, /animate (gradio_client or curl: docs/web.md).

The in-browser page (web/, built by `make web`: the networks run in the visitor's browser) is
served at /web/ with the cross-origin isolation headers that WebAssembly threads need.
"""
import argparse
import atexit
import copy
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from core.cli import HelpFormatter, one_line_warnings
from core.runtime import PRECISIONS
from engine.smoothing import KeypointSmoother
from engine.torch_engine import AnimationEngine
from media.formats import DEFAULT_VIDEO
from media.images import FITS, MediaError, fit, read_image
from media.outputs import OutputError, check_outputs
from pipeline import PhotoOptions, animate_photo

PROG = 'app.py'
ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / 'config'
CHECKPOINT_DIR = ROOT / 'checkpoints'
SAMPLE_SOURCE = ROOT / 'assets' / 'shapes-source.png'
SAMPLE_DRIVING = ROOT / 'assets' / 'shapes-driving.mp4'
DEFAULT_CONFIG = 'shapes-64.yaml'
DEFAULT_CHECKPOINT = 'shapes-64.pth.tar'
FROM_CHECKPOINT = '(the config stored in the checkpoint)'
CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.pt', '.tar')
INITIAL_FRAMES = ('first frame', 'frame number', 'find best frame')
KEEP_OUTPUTS_S = 600  # Gradio copies a result into its own cache when the handler returns
LIVE_SECONDS = 600  # one webcam stream's share of the queue before it has to be restarted
WEB_DIR = ROOT / 'web'  # the in-browser page (docs/web.md)
# SharedArrayBuffer, and so onnxruntime-web's WebAssembly threads, needs a cross-origin isolated page
CROSS_ORIGIN_ISOLATION = {'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp'}


class AppError(ValueError):
    """A bad request; the message is one line for the page."""


@dataclass
class Limits:
    max_upload_mb: float = 50.0  # source images and driving videos
    max_checkpoint_mb: float = 1024.0  # published checkpoints are ~700 MB with their optimizers
    max_frames: int = 1000  # driving video frames
    max_pixels: int = 25_000_000  # source image pixels, checked before decoding


@dataclass
class ModelChoice:
    """Which model a request asks for: names from the page's lists, or an uploaded checkpoint."""
    config: str = DEFAULT_CONFIG  # a file name in config/, or FROM_CHECKPOINT
    checkpoint: Optional[str] = DEFAULT_CHECKPOINT  # a file name in checkpoints/
    upload: Optional[str] = None  # an uploaded checkpoint (its path on the server); wins over `checkpoint`
    precision: str = 'auto'


@dataclass
class AnimateRequest:
    source: Optional[str]  # uploaded image path
    driving: Optional[str]  # uploaded video path
    model: ModelChoice = field(default_factory=ModelChoice)
    relative: bool = True
    adapt_scale: bool = False
    initial: str = INITIAL_FRAMES[0]
    best_frame: int = 0
    crop_source: bool = False
    paste_back: bool = False
    detector: str = 'haar'
    fit: str = 'resize'
    smooth: bool = False  # steady the driving keypoints (engine.smoothing)


# what the page calls the options that pipeline.py's messages name (demo.py's flags there)
PAGE_NAMES = {'driving': 'driving video', 'best_frame': 'frame number', 'find_best_frame': '"find best frame"',
              'crop_source': '"Crop the face from the source"', 'paste_back': '"Paste back"'}


# ------------------------------------------------------------------------------ models
def list_configs() -> list:
    return sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))


def list_checkpoints() -> list:
    """Checkpoint files in checkpoints/, and ONNX export folders there (export.py --out
    checkpoints/NAME), listed as 'NAME/': those run on the torch-free onnxruntime engine."""
    if not CHECKPOINT_DIR.is_dir():
        return []
    return sorted([p.name for p in CHECKPOINT_DIR.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES)]
                  + [p.name + '/' for p in CHECKPOINT_DIR.iterdir() if (p / 'manifest.json').is_file()])


def load_engine(config: Optional[str], checkpoint: str, precision: str, device: Optional[str], batch_size: int):
    """The torch engine for a checkpoint file; the onnxruntime engine for an export folder (its
    manifest carries the config and the precision it was exported at)."""
    if os.path.isdir(checkpoint):
        from engine.onnx_engine import OnnxEngine
        return OnnxEngine.from_export(checkpoint, batch_size=batch_size, device=device)
    return AnimationEngine.from_checkpoint(config, checkpoint, device=device, precision=precision,
                                           batch_size=batch_size)


def tidy(message: str, names: Dict[str, str]) -> str:
    """One line for the page: the server's paths of uploads replaced by the names the user gave."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    line = lines[0] if lines else 'failed'
    for path, name in sorted(names.items(), key=lambda item: -len(item[0])):
        if path:
            line = line.replace(path, name)
    return line


class ModelCache:
    """Engines loaded once and shared by every request: at most `size` models, the least recently
    used one dropped, keyed by config, checkpoint file (path, size, mtime) and precision.

    `get` hands out a shallow copy of the cached engine: the networks are shared, while the
    source, its keypoints and the reference frame that set_source/set_reference store are the
    request's own, so concurrent requests on one model do not see each other's source."""

    def __init__(self, size: int = 2, device: Optional[str] = None, batch_size: int = 4):
        self.size, self.device, self.batch_size = int(size), device, int(batch_size)
        self.engines: 'OrderedDict[tuple, AnimationEngine]' = OrderedDict()
        self.lock = threading.Lock()  # guards the tables
        self.loading: Dict[tuple, threading.Lock] = {}  # one per key: the first request loads, the others wait
        self.loads = 0  # models loaded from disk (tests check the sharing)

    def key(self, config: Optional[str], checkpoint: str, precision: str) -> tuple:
        stat = os.stat(os.path.join(checkpoint, 'manifest.json') if os.path.isdir(checkpoint) else checkpoint)
        return (config, os.path.realpath(checkpoint), stat.st_size, stat.st_mtime_ns, precision)

    def get(self, config: Optional[str], checkpoint: str, precision: str = 'auto') -> AnimationEngine:
        key = self.key(config, checkpoint, precision)
        with self.lock:
            loading = self.loading.setdefault(key, threading.Lock())
        with loading:
            with self.lock:
                engine = self.engines.get(key)
                if engine is not None:
                    self.engines.move_to_end(key)
            if engine is None:
                try:
                    engine = load_engine(config, checkpoint, precision, self.device, self.batch_size)
                except BaseException:
                    with self.lock:
                        self.loading.pop(key, None)  # bad uploads leave no entry behind
                    raise
                with self.lock:
                    self.loads += 1
                    self.engines[key] = engine
                    while len(self.engines) > self.size:
                        old, _ = self.engines.popitem(last=False)
                        self.loading.pop(old, None)
        return copy.copy(engine)


# --------------------------------------------------------------------------- handlers
class App:
    """The page's handlers as plain methods. Bad input raises AppError (one line); `page_call`
    turns any error into the page's message."""

    def __init__(self, limits: Optional[Limits] = None, device: Optional[str] = None, cache_size: int = 2,
                 batch_size: int = 4, work_dir: Optional[str] = None):
        self.limits = limits or Limits()
        self.models = ModelCache(cache_size, device=device, batch_size=batch_size)
        self.work = tempfile.mkdtemp(prefix='fomm-app-', dir=work_dir)  # all this server's temporary files
        self.outputs = os.path.join(self.work, 'outputs')  # results, until Gradio has copied them
        os.makedirs(self.outputs)
        atexit.register(shutil.rmtree, self.work, True)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------------------- inputs
    def check_upload(self, path: Optional[str], what: str, limit_mb: float, flag: str) -> str:
        """The uploaded file's own name, after the presence and size checks."""
        if not path:
            raise AppError('%s: none given; upload one' % what)
        name = os.path.basename(str(path))
        if not os.path.isfile(path):
            raise AppError('%s: %s was not received; upload it again' % (what, name))
        size = os.path.getsize(path)
        if size > limit_mb * 1e6:
            raise AppError('%s: %s is %.1f MB, over this server\'s upload limit of %g MB (%s %s)'
                           % (what, name, size / 1e6, limit_mb, PROG, flag))
        return name

    def read_source(self, path: Optional[str]) -> np.ndarray:
        """The source image as uint8 (H, W, 3); AppError for anything that is not a readable image."""
        name = self.check_upload(path, 'source image', self.limits.max_upload_mb, '--max_upload_mb')
        try:
            return read_image(path, limit=self.limits.max_pixels)
        except MediaError as e:
            raise AppError('source image: %s' % tidy(e, {str(path): name})) from None

    def open_driving(self, path: Optional[str]):
        """The driving video (video_io.VideoSource), with 2 to max_frames frames."""
        from media.formats import VIDEO_INPUTS, listing, suffix_of
        from media.video_io import open_video

        name = self.check_upload(path, 'driving video', self.limits.max_upload_mb, '--max_upload_mb')
        if suffix_of(name) not in VIDEO_INPUTS:
            raise AppError('driving video: %s is not a video file (expected %s)'
                           % (name, listing(VIDEO_INPUTS)))
        try:
            video = open_video(path)
        except MediaError as e:
            raise AppError('driving video: %s' % tidy(e, {str(path): name})) from None
        if video.num_frames < 2:
            raise AppError('driving video: %s has %d frame%s; a driving video needs at least 2'
                           % (name, video.num_frames, '' if video.num_frames == 1 else 's'))
        if video.num_frames > self.limits.max_frames:
            raise AppError('driving video: %s has %d frames, over this server\'s limit of %d (%s --max_frames); '
                           'cut it shorter' % (name, video.num_frames, self.limits.max_frames, PROG))
        return video

    def model_paths(self, choice: ModelChoice) -> Tuple[Optional[str], str, Dict[str, str]]:
        """(config path or None, checkpoint path, {server path: name the user knows}) for a choice
        made on the page: names from the lists only, never a path typed by the user."""
        names = {}
        if choice.upload:
            name = self.check_upload(choice.upload, 'checkpoint', self.limits.max_checkpoint_mb, '--max_checkpoint_mb')
            checkpoint = str(choice.upload)
            names[checkpoint] = name
        elif choice.checkpoint in list_checkpoints():
            checkpoint = str(CHECKPOINT_DIR / choice.checkpoint)
            names[checkpoint] = 'checkpoints/' + choice.checkpoint
        else:
            raise AppError('checkpoint: %r is not in checkpoints/; choose one from the list or upload one'
                           % (choice.checkpoint or ''))
        if choice.config == FROM_CHECKPOINT:
            return None, checkpoint, names
        if choice.config not in list_configs():
            raise AppError('model config: %r is not in config/; choose one from the list' % (choice.config or ''))
        config = str(CONFIG_DIR / choice.config)
        names[config] = 'config/' + choice.config
        return config, checkpoint, names

    def engine(self, choice: ModelChoice) -> AnimationEngine:
        """The chosen model from the cache (loaded on first use), as this request's own view."""
        from core.checkpoint import CheckpointError
        from core.config import ConfigError

        config, checkpoint, names = self.model_paths(choice)
        if choice.precision not in PRECISIONS:
            raise AppError('precision: %r is not one of %s' % (choice.precision, ', '.join(PRECISIONS)))
        try:
            return self.models.get(config, checkpoint, choice.precision)
        except (CheckpointError, ConfigError, ValueError, OSError) as e:
            what = ' + '.join(names[p] for p in (config, checkpoint) if p)
            raise AppError('model %s: %s' % (what, tidy(e, names))) from None

    # ------------------------------------------------------------------------ animate
    def photo_options(self, request: AnimateRequest, fps: Optional[float] = None) -> PhotoOptions:
        """demo.py's options from the page's controls (fps: the driving video's, for the keypoint
        filter), checked with the page's names for them."""
        if request.fit not in FITS:
            raise AppError('fit: %r is not one of %s' % (request.fit, ', '.join(FITS)))
        if request.initial not in INITIAL_FRAMES:
            raise AppError('initial frame: %r is not one of %s' % (request.initial, ', '.join(INITIAL_FRAMES)))
        best = None
        if request.initial == 'frame number':
            try:
                best = int(request.best_frame)
            except (TypeError, ValueError):
                raise AppError('frame number: %r is not a whole number' % (request.best_frame,)) from None
        options = PhotoOptions(relative=bool(request.relative), adapt_scale=bool(request.adapt_scale), fit=request.fit,
                               crop_source=bool(request.crop_source), paste_back=bool(request.paste_back),
                               detector=request.detector, best_frame=best,
                               find_best_frame=request.initial == 'find best frame',
                               smooth=KeypointSmoother(fps or 25.0) if request.smooth else None)
        try:
            options.check(PAGE_NAMES)
        except ValueError as e:
            raise AppError(str(e)) from None
        return options

    def output_paths(self, source: str, driving: str) -> Tuple[str, str]:
        """A fresh folder for one request's result and preview, named after the inputs."""
        self.prune()
        folder = tempfile.mkdtemp(dir=self.outputs)
        stem = '%s-by-%s' % (safe_stem(source), safe_stem(driving))
        result, preview = os.path.join(folder, stem + DEFAULT_VIDEO), os.path.join(folder, stem + '-preview' + DEFAULT_VIDEO)
        check_outputs({'result': result, 'preview': preview}, {'source image': source, 'driving video': driving})
        return result, preview

    def animate(self, request: AnimateRequest,
                progress: Optional[Callable[[int, int], None]] = None) -> Tuple[str, str]:
        """(result video, side-by-side preview) for one request: pipeline.animate_photo, as demo.py."""
        from analysis.face import FaceToolsError

        self.photo_options(request)  # the controls first: a wrong one fails before any file is read
        photo = self.read_source(request.source)
        video = self.open_driving(request.driving)
        options = self.photo_options(request, video.info.fps)
        names = {str(request.source): os.path.basename(str(request.source)),
                 str(request.driving): os.path.basename(str(request.driving))}
        engine = self.engine(request.model)
        result, preview = self.output_paths(request.source, request.driving)
        try:
            animate_photo(engine, photo, video, result, options, preview=preview, progress=progress,
                          device=str(engine.device), names=PAGE_NAMES)
        except (MediaError, OutputError, FaceToolsError, ValueError) as e:
            shutil.rmtree(os.path.dirname(result), ignore_errors=True)
            raise AppError(tidy(e, names)) from None
        except BaseException:
            shutil.rmtree(os.path.dirname(result), ignore_errors=True)
            raise
        return result, preview

    def prune(self) -> None:
        """Remove the output folders of requests older than KEEP_OUTPUTS_S (Gradio serves its copies)."""
        now = time.time()
        for entry in os.scandir(self.outputs):
            try:
                if entry.is_dir() and now - entry.stat().st_mtime > KEEP_OUTPUTS_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                pass

    # --------------------------------------------------------------------------- live
    def live_frame(self, session: Optional['LiveSession'], frame: Optional[np.ndarray], source: Optional[str],
                   choice: ModelChoice, relative: bool = True, adapt_scale: bool = False, smooth: bool = False):
        """One webcam frame -> (animated frame or None, speed line, session). The source is set
        once per (source, model); the reference is the first frame, or the one after a reset."""
        session = session if session is not None else LiveSession()
        if frame is None:
            return None, 'waiting for the webcam', session
        try:
            config, checkpoint, _ = self.model_paths(choice)
            key = (source, self.models.key(config, checkpoint, choice.precision))
        except OSError:
            key = (source, choice)
        if session.key != key or session.engine is None:
            if session.key == key and session.error:
                raise AppError(session.error)  # the same bad input: not read again for every frame
            session.start(None, key)
            try:
                photo = self.read_source(source)
                engine = self.engine(choice)
            except AppError as e:
                session.error = str(e)
                raise
            engine.set_source(fit(photo, engine.frame_shape, 'resize'))
            session.start(engine, key)
        driving = fit(np.asarray(frame), session.engine.frame_shape, 'crop')  # webcams are wider than tall
        return session.animate(driving, relative, adapt_scale, smooth), session.speed(), session

    def live_reference(self, session: Optional['LiveSession']):
        """The 'use this frame as reference' button: the next webcam frame becomes the reference."""
        session = session if session is not None else LiveSession()
        session.reset = True
        return session, 'the next frame becomes the reference'


class LiveSession:
    """One browser's webcam stream: its engine view (source cached), the reference, timings."""

    def __init__(self):
        self.engine: Optional[AnimationEngine] = None
        self.key = None  # (source, model) the engine's source was set from
        self.error: Optional[str] = None  # why that source or model could not be used
        self.reset = True
        self.latency = deque(maxlen=50)  # seconds per frame in the engine
        self.arrivals = deque(maxlen=50)  # when frames were answered

    def start(self, engine: AnimationEngine, key) -> None:
        self.engine, self.key, self.reset, self.error = engine, key, True, None
        self.latency.clear()
        self.arrivals.clear()

    def animate(self, driving: np.ndarray, relative: bool, adapt_scale: bool, smooth: bool = False) -> np.ndarray:
        start = time.perf_counter()
        if bool(smooth) != (self.engine.smoother is not None):  # the page's checkbox turned on or off
            self.engine.set_smoothing(KeypointSmoother() if smooth else None)
        if self.reset:
            self.engine.set_reference(driving)
            self.reset = False
        dt = start - self.arrivals[-1] if self.arrivals else None  # the webcam's frames, filtered at their times
        out = self.engine.animate_frame(driving, relative=bool(relative), adapt_scale=bool(adapt_scale), dt=dt)
        now = time.perf_counter()
        self.latency.append(now - start)
        self.arrivals.append(now)
        return out

    def fps(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        return (len(self.arrivals) - 1) / max(self.arrivals[-1] - self.arrivals[0], 1e-9)

    def speed(self) -> str:
        if not self.latency:
            return 'starting'
        return '%.1f frames/s, model %.0f ms per frame (median of the last %d)' % (
            self.fps(), 1000 * float(np.median(self.latency)), len(self.latency))


def safe_stem(path: str) -> str:
    """A file name stem safe to serve: letters, digits, '-', '_' (uploads are named by anyone)."""
    from media.video_io import media_stem
    return re.sub(r'[^A-Za-z0-9_-]+', '_', media_stem(os.path.basename(str(path))))[:40] or 'upload'


def page_call(fn: Callable, *args, **kwargs):
    """Run a handler for the page: a bad input becomes one readable gr.Error line, and any other
    failure too (its traceback goes to the server's log, never to the page)."""
    import gradio as gr

    try:
        return fn(*args, **kwargs)
    except gr.Error:
        raise
    except AppError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # the server keeps serving: the next request starts afresh
        traceback.print_exc(file=sys.stderr)
        raise gr.Error('the server could not finish this request (%s: %s)'
                       % (type(e).__name__, tidy(e, {})), print_exception=False) from None


# ------------------------------------------------------------------------------ page
def precision_choices(device) -> list:
    return ['auto', 'fp32', 'bf16'] + (['fp16'] if str(device).startswith('cuda') else [])


def model_block(gr, app: App, precision: str) -> list:
    """The model controls shared by both tabs: [config, checkpoint, upload, precision]."""
    with gr.Accordion('Model: the embedded default (64x64 shapes), or your own', open=False):
        gr.Markdown('A config from `config/` with a checkpoint from `checkpoints/`, or a checkpoint you upload '
                    '(it wins over the list). Checkpoints written by this project carry their config: choose "%s". '
                    'A folder `NAME/` in the list is an ONNX export (`export.py --out checkpoints/NAME`): it runs '
                    'on onnxruntime, with the config and precision it was exported with.' % FROM_CHECKPOINT)
        with gr.Row():
            config = gr.Dropdown([FROM_CHECKPOINT] + list_configs(), value=DEFAULT_CONFIG, label='Config')
            checkpoint = gr.Dropdown(list_checkpoints(), value=DEFAULT_CHECKPOINT, label='Checkpoint')
            upload = gr.File(label='Upload a checkpoint (.pth.tar, at most %g MB)' % app.limits.max_checkpoint_mb)
            precision = gr.Radio(precision_choices(app.models.device or ''), value=precision, label='Precision',
                                 info='auto: bf16 on GPUs and on CPUs with native bf16, else fp32')
    return [config, checkpoint, upload, precision]


def shown_image(image: np.ndarray, least: int = 220) -> np.ndarray:
    """An image to show on the page: a small one enlarged (a 64x64 source would be a speck)."""
    from media.images import resize

    scale = least / min(image.shape[:2])
    return resize(image, round(image.shape[0] * scale), round(image.shape[1] * scale)) if scale > 1 else image


def source_preview(app: App, path: Optional[str]):
    """The uploaded source image shown below the upload (a bad file is reported at once)."""
    return None if not path else shown_image(page_call(app.read_source, path))


def animate_tab(gr, app: App, model: list) -> None:
    limits = app.limits
    with gr.Row():
        with gr.Column():
            source = gr.File(value=str(SAMPLE_SOURCE), label='Source image (upload, at most %g MB)'
                             % limits.max_upload_mb, elem_id='source-file')
            shown = gr.Image(value=shown_image(read_image(SAMPLE_SOURCE)), label='Source', interactive=False,
                             height=220)
        driving = gr.Video(value=str(SAMPLE_DRIVING), sources=['upload'], height=300, elem_id='driving-video',
                           label='Driving video (upload, at most %g MB and %d frames)'
                           % (limits.max_upload_mb, limits.max_frames))
    with gr.Accordion('Options (as demo.py)', open=False):
        with gr.Row():
            relative = gr.Checkbox(True, label='Relative motion', info='move the source as the driving video moves '
                                   'from its initial frame (use it when source and driving differ)')
            adapt = gr.Checkbox(False, label='Adapt scale', info='scale the motion by the keypoints\' spread')
            fitting = gr.Radio(list(FITS), value='resize', label='Fit', info='how images reach the model\'s size')
        with gr.Row():
            initial = gr.Radio(list(INITIAL_FRAMES), value=INITIAL_FRAMES[0], label='Initial driving frame',
                               info='find best frame needs face-alignment (requirements-face.txt)')
            best = gr.Number(0, precision=0, minimum=0, label='Frame number')
        with gr.Row():
            crop = gr.Checkbox(False, label='Crop the face from the source')
            paste = gr.Checkbox(False, label='Paste back into the full photo')
            detector = gr.Radio(['haar', 'face_alignment'], value='haar', label='Face detector')
            smooth = gr.Checkbox(False, label='Steady keypoints', info='less trembling when still, no lag when moving')
    button = gr.Button('Animate', variant='primary', elem_id='animate-button')
    with gr.Row():
        result = gr.Video(label='Result', buttons=['download'], elem_id='result-video', interactive=False,
                          height=300)
        preview = gr.Video(label='Source | driving | result', buttons=['download'], elem_id='preview-video',
                           interactive=False, height=300)
    status = gr.Markdown(elem_id='animate-status')

    def animate(source, driving, relative, adapt, fitting, initial, best, crop, paste, detector,
                config, checkpoint, upload, precision, smooth=False, progress=gr.Progress()):
        request = AnimateRequest(source=source, driving=driving,
                                 model=ModelChoice(config=config, checkpoint=checkpoint, upload=upload,
                                                   precision=precision),
                                 relative=relative, adapt_scale=adapt, initial=initial, best_frame=best,
                                 crop_source=crop, paste_back=paste, detector=detector, fit=fitting, smooth=smooth)
        start, frames = time.perf_counter(), [0]

        def step(done: int, total: int) -> None:
            frames[0] = done
            progress((done, total), desc='animating', unit='frames')

        progress(0, desc='loading')
        result, preview = page_call(app.animate, request, progress=step)
        return result, preview, '%d frames in %.1f s' % (frames[0], time.perf_counter() - start)

    source.change(lambda path: source_preview(app, path), source, shown, show_progress='hidden',
                  api_visibility='private')  # the page's own preview, not for scripts
    # api_name: the endpoint scripts call (gradio_client's api_name='/animate', curl's /gradio_api/call/animate)
    # smooth comes last: scripts written before it keep their order (it defaults to off)
    button.click(animate, [source, driving, relative, adapt, fitting, initial, best, crop, paste, detector] + model
                 + [smooth], [result, preview, status], concurrency_id='animate', api_name='animate')


def live_tab(gr, app: App, model: list) -> None:
    gr.Markdown('Your webcam drives the source image (the model runs on this server, one frame at a time, the '
                'source computed once). Start the webcam, hold a neutral pose and press "Use this frame as '
                'reference": motion is measured from there.')
    with gr.Row():
        source = gr.File(value=str(SAMPLE_SOURCE), label='Source image', elem_id='live-source')
        webcam = gr.Image(sources=['webcam'], streaming=True, type='numpy', label='Webcam', elem_id='webcam')
        shown = gr.Image(label='Animated', interactive=False, height=300, elem_id='live-output')
    with gr.Row():
        reference = gr.Button('Use this frame as reference', elem_id='reference-button')
        relative = gr.Checkbox(True, label='Relative motion')
        adapt = gr.Checkbox(False, label='Adapt scale')
        smooth = gr.Checkbox(False, label='Steady keypoints')
        speed = gr.Textbox(label='Speed', interactive=False, elem_id='live-speed')
    session = gr.State(None)

    def frame_in(frame, source, relative, adapt, smooth, session, config, checkpoint, upload, precision):
        session = session if session is not None else LiveSession()
        try:
            choice = ModelChoice(config=config, checkpoint=checkpoint, upload=upload, precision=precision)
            out, line, session = app.live_frame(session, frame, source, choice, relative, adapt, smooth)
        except AppError as e:  # shown in place of the speed: a toast per frame would flood the page
            return None, str(e), session
        return (shown_image(out, 256) if out is not None else None), line, session

    webcam.stream(frame_in, [webcam, source, relative, adapt, smooth, session] + model, [shown, speed, session],
                  stream_every=0.1, time_limit=LIVE_SECONDS, concurrency_id='live', show_progress='hidden')
    reference.click(app.live_reference, session, [session, speed], show_progress='hidden')


def build_page(app: App, precision: str = 'auto', concurrency: int = 1):
    """The Gradio Blocks of the page (not launched)."""
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # no calls out from a local tool
    import gradio as gr

    with gr.Blocks(title='First Order Motion Model', delete_cache=(KEEP_OUTPUTS_S, 3600)) as page:
        gr.Markdown('## First Order Motion Model: animate a picture with the motion of a video\n'
                    'Upload a source image and a driving video (or keep the samples) and press Animate. '
                    'Or [run in your browser](web/): the same model on your own computer (onnxruntime-web), '
                    'with a video or your webcam.', elem_id='intro')
        model = model_block(gr, app, precision)
        with gr.Tab('Animate'):
            animate_tab(gr, app, model)
        with gr.Tab('Live (webcam)'):
            live_tab(gr, app, model)
    # every event is queued; these limits bound the animations (and webcam streams) running at once
    page.queue(default_concurrency_limit=concurrency, max_size=max(16, 8 * concurrency))
    return page


def web_routes() -> list:
    """The in-browser page (web/) mounted at /web/, every response with the cross-origin isolation
    headers (CROSS_ORIGIN_ISOLATION); npm's node_modules folder is not served."""
    from starlette.exceptions import HTTPException
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    class IsolatedFiles(StaticFiles):
        async def get_response(self, path: str, scope):
            if path.replace('\\', '/').split('/')[0] == 'node_modules':
                raise HTTPException(status_code=404)
            response = await super().get_response(path, scope)
            response.headers.update(CROSS_ORIGIN_ISOLATION)
            return response

    return [Mount('/web', app=IsolatedFiles(directory=str(WEB_DIR), html=True, check_dir=False), name='web')]


def theme(gr):
    """The default look with the system's fonts: the default theme fetches web fonts, and a
    local tool should not call out (nor wait for a font server that cannot be reached)."""
    return gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                             font_mono=['ui-monospace', 'monospace'])


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--host', default='127.0.0.1', help='address to listen on (0.0.0.0: every interface)')
    p.add_argument('--port', type=int, default=7860, help='port to listen on')
    p.add_argument('--max_upload_mb', type=float, default=Limits.max_upload_mb,
                   help='largest source image or driving video accepted, in MB')
    p.add_argument('--max_checkpoint_mb', type=float, default=Limits.max_checkpoint_mb,
                   help='largest uploaded checkpoint accepted, in MB')
    p.add_argument('--max_frames', type=int, default=Limits.max_frames, help='most frames of a driving video')
    p.add_argument('--concurrency', type=int, default=1,
                   help='animations (and webcam streams) running at once; more requests wait in the queue')
    p.add_argument('--models', type=int, default=2, help='models kept loaded (least recently used dropped)')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N; none: cuda when available, else cpu')
    p.add_argument('--precision', default='auto', choices=PRECISIONS,
                   help='the page\'s default; auto: bf16 on CUDA and on CPUs with native bf16, else fp32')
    p.add_argument('--batch_size', type=int, default=4, help='driving frames per forward pass')
    return p


def check_args(args: argparse.Namespace) -> None:
    from core.runtime import resolve_device, resolve_precision

    for flag in ('max_upload_mb', 'max_checkpoint_mb', 'max_frames', 'concurrency', 'models', 'batch_size'):
        if getattr(args, flag) <= 0:
            raise ValueError('--%s: must be > 0, got %r' % (flag, getattr(args, flag)))
    if not 0 < args.port < 65536:
        raise ValueError('--port: %d is not a port (1-65535)' % args.port)
    args.device = str(resolve_device(args.device))
    resolve_precision(args.precision, resolve_device(args.device))


def stop(signum, frame):
    raise KeyboardInterrupt  # Gradio's launch() closes the server on it and returns


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        # uploads and Gradio's copies of results in a folder of this server's own, removed when it
        # stops (Gradio reads the variable when it is imported)
        if not os.environ.get('GRADIO_TEMP_DIR'):
            os.environ['GRADIO_TEMP_DIR'] = tempfile.mkdtemp(prefix='fomm-app-gradio-')
            atexit.register(shutil.rmtree, os.environ['GRADIO_TEMP_DIR'], True)
        import gradio as gr
    except ValueError as e:
        print('%s: error: %s' % (PROG, e), file=sys.stderr)
        return 1
    except ImportError as e:
        print('%s: error: %s: install the web app\'s extra: pip install -r requirements-app.txt' % (PROG, e),
              file=sys.stderr)
        return 1
    limits = Limits(args.max_upload_mb, args.max_checkpoint_mb, args.max_frames)
    app = App(limits, device=args.device, cache_size=args.models, batch_size=args.batch_size)
    page = build_page(app, args.precision, args.concurrency)
    signal.signal(signal.SIGTERM, stop)  # a clean stop, so that the temporary files are removed
    try:
        page.launch(server_name=args.host, server_port=args.port, show_error=False, ssr_mode=False, quiet=True,
                    max_file_size='%dmb' % int(max(limits.max_upload_mb, limits.max_checkpoint_mb) + 1),
                    theme=theme(gr), footer_links=[], allowed_paths=[], prevent_thread_lock=True,
                    app_kwargs={'routes': web_routes()})
    except OSError as e:  # the port is taken, or the address is not this machine's
        app.close()
        reason = 'in use, or not an address of this machine' if 'empty port' in str(e) else tidy(e, {})
        print('%s: error: --host %s --port %d: %s (choose another with --port N)'
              % (PROG, args.host, args.port, reason), file=sys.stderr)
        return 1
    print('%s: serving on http://%s:%d (Ctrl-C stops); the in-browser page at /web/%s'
          % (PROG, args.host, args.port, '' if (WEB_DIR / 'vendor').is_dir() else ' (build it first: make web)'),
          file=sys.stderr)
    try:
        page.block_thread()  # until Ctrl-C or SIGTERM, which close the server
    finally:
        app.close()
    return 0


if __name__ == '__main__':
    one_line_warnings('app.py')
    sys.exit(main())
