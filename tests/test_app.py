"""app.py's handlers without a browser: a good request gives playable videos with the driving
video's frame count (and its audio), models are loaded once and shared safely, every bad input
gives one readable line (gr.Error in the page), and the live handler caches its source."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

gr = pytest.importorskip('gradio', reason='the web app needs gradio: pip install -r requirements-app.txt')

import app as web  # noqa: E402
from engine.torch_engine import load_networks  # noqa: E402
from media.video_io import VideoWriter, open_video, probe_video  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

SOURCE = str(web.SAMPLE_SOURCE)
DRIVING = str(web.SAMPLE_DRIVING)
FP32 = web.ModelChoice(precision='fp32')


def ffmpeg() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope='module')
def uploads(tmp_path_factory):
    """Files as a browser would upload them: a short clip of the sample, one with audio, a
    one-frame video, a corrupt video, a text file, and a checkpoint of another model (tiny.yaml)."""
    folder = tmp_path_factory.mktemp('uploads')
    frames = open_video(DRIVING).read(range(6))
    with VideoWriter(folder / 'short.mp4', fps=25) as writer:
        writer.write(frames)
    with VideoWriter(folder / 'one.mp4', fps=25) as writer:
        writer.write(frames[:1])
    subprocess.run([ffmpeg(), '-hide_banner', '-loglevel', 'error', '-y',
                    '-f', 'lavfi', '-i', 'testsrc=size=80x64:rate=10:duration=0.7',  # 7 frames
                    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=16000:duration=1',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac', str(folder / 'talk.mp4')], check=True)
    (folder / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + os.urandom(3000))
    (folder / 'notes.txt').write_text('not an image\n')
    (folder / 'notes.png').write_text('not an image either\n')
    import cv2
    cv2.imwrite(str(folder / 'noise.png'), (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(str(ROOT / 'tests' / 'tiny.yaml'), None)
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 1,
                'config': config.to_dict()}, folder / 'tiny.pth.tar')  # a checkpoint of this project
    return folder


@pytest.fixture
def server():
    handlers = web.App(web.Limits(max_upload_mb=5, max_frames=100))
    yield handlers
    handlers.close()
    assert not os.path.exists(handlers.work)  # temporary files go with the server


def request(source=SOURCE, driving=DRIVING, **options) -> web.AnimateRequest:
    path = lambda p: None if p is None else str(p)  # noqa: E731
    return web.AnimateRequest(path(source), path(driving), model=options.pop('model', FP32), **options)


def page_error(handler, *args) -> str:
    """The one line the page shows for a request (gr.Error), checked to be one line, no traceback."""
    with pytest.raises(gr.Error) as info:
        web.page_call(handler, *args)
    message = info.value.message
    assert '\n' not in message and 'Traceback' not in message
    return message


def streams(path) -> str:
    res = subprocess.run([ffmpeg(), '-hide_banner', '-i', str(path)], capture_output=True, text=True)
    return '\n'.join(line for line in res.stderr.splitlines() if 'Stream #' in line)


def test_good_request_gives_playable_result_and_preview(server):
    seen = []
    result, preview = web.page_call(server.animate, request(), progress=lambda done, total: seen.append((done, total)))
    driving = probe_video(DRIVING)
    for path, width in ((result, 64), (preview, 3 * 64)):
        info = probe_video(path)
        assert (info.num_frames, info.height, info.width) == (driving.num_frames, 64, width)
        assert info.fps == pytest.approx(driving.fps)
        assert 'h264' in streams(path) and 'yuv420p' in streams(path)  # what browsers play
        assert open_video(path).read([info.num_frames - 1]).shape == (1, 64, width, 3)  # decodes to the end
    assert seen[-1] == (driving.num_frames, driving.num_frames) and len(seen) == driving.num_frames
    assert os.path.basename(result) == 'shapes-source-by-shapes-driving.mp4'


def test_result_keeps_the_driving_audio_and_frame_count(server, uploads):
    result, preview = server.animate(request(driving=uploads / 'talk.mp4', fit='crop'))
    assert probe_video(result).num_frames == probe_video(uploads / 'talk.mp4').num_frames == 7
    assert 'Audio' in streams(result) and 'Audio' in streams(preview)


def test_model_loaded_once_and_shared_by_concurrent_requests(server, uploads):
    """Two requests at once on one cached model, each with its own source: each result is what it
    is alone (the engine's cached source is per request), and the model was loaded once."""
    other = uploads / 'noise.png'
    alone = {s: open_video(server.animate(request(s, uploads / 'short.mp4'))[0]).read_all()
             for s in (SOURCE, str(other))}
    together, errors = {}, []

    def run(source):
        try:
            together[source] = open_video(server.animate(request(source, uploads / 'short.mp4'))[0]).read_all()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in alone]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for source, frames in alone.items():
        np.testing.assert_array_equal(together[source], frames)
    assert not np.array_equal(alone[SOURCE], alone[str(other)])
    assert server.models.loads == 1


def test_cache_loads_a_model_once_for_simultaneous_first_requests(uploads):
    cache = web.ModelCache(size=1)
    config, checkpoint = str(web.CONFIG_DIR / web.DEFAULT_CONFIG), str(web.CHECKPOINT_DIR / web.DEFAULT_CHECKPOINT)
    views = []
    threads = [threading.Thread(target=lambda: views.append(cache.get(config, checkpoint, 'fp32'))) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert cache.loads == 1 and len(views) == 3
    assert views[0] is not views[1] and views[0].generator is views[1].generator  # own views, shared networks
    cache.get(None, str(uploads / 'tiny.pth.tar'), 'fp32')  # a second model pushes the first out (size 1)
    assert cache.loads == 2 and len(cache.engines) == 1
    cache.get(config, checkpoint, 'fp32')
    assert cache.loads == 3
    with pytest.raises(Exception):
        cache.get(config, str(uploads / 'tiny.pth.tar'), 'fp32')  # does not fit: nothing kept
    assert len(cache.loading) == len(cache.engines) == 1


def test_bad_inputs_each_give_one_line(server, uploads):
    tiny = web.ModelChoice(upload=str(uploads / 'tiny.pth.tar'), precision='fp32')
    short = uploads / 'short.mp4'
    cases = [
        (request(uploads / 'notes.txt', short), 'source image: notes.txt: not an image file'),
        (request(uploads / 'notes.png', short), 'source image: notes.png: not an image file'),
        (request(None, short), 'source image: none given'),
        (request(SOURCE, uploads / 'broken.mp4'), 'driving video: broken.mp4: corrupt'),
        (request(SOURCE, uploads / 'one.mp4'), 'one.mp4 has 1 frame; a driving video needs at least 2'),
        (request(SOURCE, uploads / 'notes.txt'), 'driving video: notes.txt is not a video file'),
        (request(SOURCE, short, crop_source=True), 'no face found in source image'),
        (request(SOURCE, short, paste_back=True), '"Paste back" needs "Crop the face from the source"'),
        (request(SOURCE, short, initial='frame number', best_frame=6), 'frame number: 6 is outside 0..5'),
        (request(SOURCE, short, model=tiny), 'model config/shapes-64.yaml + tiny.pth.tar: tiny.pth.tar: generator.'),
        (request(SOURCE, short, model=web.ModelChoice(config='../../etc/passwd')), 'is not in config/'),
        (request(SOURCE, short, model=web.ModelChoice(checkpoint='/etc/passwd')), 'is not in checkpoints/'),
    ]
    for bad, expected in cases:
        message = page_error(server.animate, bad)
        assert expected in message, (expected, message)
        assert str(uploads) not in message and '/tmp/' not in message  # names the user's file, not the server's path
    assert os.listdir(server.outputs) == []  # failed requests leave nothing behind
    result, _ = server.animate(request(SOURCE, short))  # and the next request is served
    assert probe_video(result).num_frames == 6


def test_checkpoint_that_does_not_fit_names_the_tensor(server, uploads):
    message = page_error(server.animate, request(SOURCE, uploads / 'short.mp4',
                                                 model=web.ModelChoice(upload=str(uploads / 'tiny.pth.tar'))))
    assert message.startswith('model config/shapes-64.yaml + tiny.pth.tar: tiny.pth.tar: generator.')
    assert 'has shape' in message and 'the config expects' in message
    # a project checkpoint carries its config: with it, the same upload loads
    result, _ = server.animate(request(SOURCE, uploads / 'short.mp4', fit='resize',
                                       model=web.ModelChoice(config=web.FROM_CHECKPOINT,
                                                             upload=str(uploads / 'tiny.pth.tar'), precision='fp32')))
    assert probe_video(result).num_frames == 6


def test_uploads_over_the_limits_are_refused(uploads):
    small = web.App(web.Limits(max_upload_mb=0.001, max_frames=5, max_checkpoint_mb=0.001))
    try:
        assert 'over this server\'s upload limit of 0.001 MB (app.py --max_upload_mb)' in page_error(
            small.animate, request(SOURCE, uploads / 'short.mp4'))
        small.limits.max_upload_mb = 5
        assert 'short.mp4 has 6 frames, over this server\'s limit of 5 (app.py --max_frames)' in page_error(
            small.animate, request(SOURCE, uploads / 'short.mp4'))
        small.limits.max_frames = 10
        upload = web.ModelChoice(upload=str(uploads / 'tiny.pth.tar'))
        assert 'checkpoint: tiny.pth.tar is' in page_error(small.animate, request(SOURCE, uploads / 'short.mp4',
                                                                                 model=upload))
    finally:
        small.close()


def test_unexpected_failure_is_one_line_and_the_server_goes_on(server, uploads, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError('out of memory\nsecond line')

    monkeypatch.setattr(web, 'animate_photo', broken)
    message = page_error(server.animate, request(SOURCE, uploads / 'short.mp4'))
    assert message == 'the server could not finish this request (RuntimeError: out of memory)'
    assert 'Traceback' in capsys.readouterr().err  # for the server's log
    monkeypatch.undo()
    assert probe_video(server.animate(request(SOURCE, uploads / 'short.mp4'))[0]).num_frames == 6


def test_live_sets_the_source_once_and_resets_the_reference(server, uploads):
    frames = open_video(DRIVING).read([0, 10, 20, 30])
    session = None
    outputs = []
    for frame in frames:
        out, line, session = server.live_frame(session, frame, SOURCE, FP32)
        outputs.append(out)
    engine = session.engine
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in outputs)
    assert 'frames/s' in line and 'ms per frame' in line
    assert server.models.loads == 1 and engine.source is not None
    # the reference is the first frame: later frames move the source
    assert not np.array_equal(outputs[0], outputs[3])
    # after the button, the next frame is the reference: no motion, as for the very first frame
    still = []
    for frame in frames[2:]:
        session, _ = server.live_reference(session)
        out, _, session = server.live_frame(session, frame, SOURCE, FP32)
        still.append(out.astype(int))
    assert session.engine is engine  # the source was not computed again
    assert np.abs(still[0] - outputs[0]).max() <= 2 and np.abs(still[1] - outputs[0]).max() <= 2
    # a new source is set once, on its first frame
    out, _, session = server.live_frame(session, frames[1], str(uploads / 'noise.png'), FP32)
    assert session.engine is not engine and server.models.loads == 1


def test_live_bad_source_is_reported_once(server, uploads):
    session = web.LiveSession()
    for _ in range(2):
        with pytest.raises(web.AppError, match='source image: notes.txt: not an image file'):
            server.live_frame(session, np.zeros((48, 64, 3), np.uint8), str(uploads / 'notes.txt'), FP32)
    assert session.engine is None and session.error
    assert server.live_frame(session, None, SOURCE, FP32)[1] == 'waiting for the webcam'


def test_page_builds_with_the_samples_and_the_models():
    handlers = web.App()
    try:
        page = web.build_page(handlers, 'auto', concurrency=2)
        names = [getattr(block, 'elem_id', None) for block in page.blocks.values()]
        for elem in ('source-file', 'driving-video', 'animate-button', 'result-video', 'preview-video', 'webcam',
                     'reference-button', 'live-speed'):
            assert elem in names
        assert web.DEFAULT_CONFIG in web.list_configs() and web.DEFAULT_CHECKPOINT in web.list_checkpoints()
        # the queue bounds the animations (and webcam streams) that run at once
        assert page._queue.default_concurrency_limit == 2
        groups = {fn.name: fn.concurrency_id for fn in page.fns.values()}
        assert groups['animate'] == 'animate' and groups['frame_in'] == 'live'
    finally:
        handlers.close()


def test_cli_refuses_bad_flags(capsys):
    assert web.main(['--port', '0']) == 1
    assert capsys.readouterr().err.strip() == 'app.py: error: --port: 0 is not a port (1-65535)'
    assert web.main(['--max_frames', '0']) == 1
    assert '--max_frames: must be > 0' in capsys.readouterr().err


def test_an_onnx_export_in_checkpoints_runs_on_onnxruntime(server, tmp_path, monkeypatch):
    """An export folder (export.py --out checkpoints/NAME) is listed as 'NAME/' and animates through
    the torch-free engine: the same frames as the torch engine, to within a grey level."""
    pytest.importorskip('onnxruntime', reason='needs requirements-onnx.txt')
    import export
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    os.symlink(web.CHECKPOINT_DIR / web.DEFAULT_CHECKPOINT, folder / web.DEFAULT_CHECKPOINT)
    assert export.main(['--checkpoint', str(folder / web.DEFAULT_CHECKPOINT), '--out', str(folder / 'shapes')]) == 0
    monkeypatch.setattr(web, 'CHECKPOINT_DIR', folder)
    assert web.list_checkpoints() == [web.DEFAULT_CHECKPOINT, 'shapes/']
    onnx = web.ModelChoice(config=web.FROM_CHECKPOINT, checkpoint='shapes/', precision='fp32')
    from media.images import read_image
    from engine.onnx_engine import OnnxEngine
    engines = server.engine(onnx), server.engine(FP32)
    assert isinstance(engines[0], OnnxEngine)
    frames = list(open_video(DRIVING))
    outputs = []
    for engine in engines:
        engine.set_source(read_image(SOURCE))
        outputs.append(np.stack(list(engine.animate(frames, relative=True))).astype(int))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1  # rounding of outputs 1e-4 apart
    result, _ = web.page_call(server.animate, request(model=onnx))
    assert probe_video(result).num_frames == len(frames)


def test_steady_keypoints_from_the_page(server):
    """The Animate tab's and the Live tab's 'Steady keypoints': the same One-Euro filter as demo.py
    --smooth (the driving video's rate for a video, the frames' own times for the webcam), and on a
    still, noisy webcam it shimmers less; turning it off removes the filter."""
    plain, _ = web.page_call(server.animate, request())
    steady, _ = web.page_call(server.animate, request(smooth=True))
    a, b = (np.stack(list(open_video(p))).astype(int) for p in (plain, steady))
    assert a.shape == b.shape and not np.array_equal(a, b)  # the filter was applied
    frame = open_video(DRIVING).read([0])[0]
    rng = np.random.default_rng(0)
    noisy = [np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8) for _ in range(12)]
    change = {}
    for smooth in (False, True):
        session, outs = None, []
        for f in noisy:
            out, _, session = server.live_frame(session, f, SOURCE, FP32, smooth=smooth)
            outs.append(out.astype(int))
        assert (session.engine.smoother is not None) == smooth
        change[smooth] = np.abs(np.diff(np.stack(outs), axis=0)).mean()
    assert change[False] > 0 and change[True] < change[False], change
    server.live_frame(session, noisy[0], SOURCE, FP32, smooth=False)
    assert session.engine.smoother is None
