"""The in-browser page (web/) in a real headless Chromium, served by app.py at /web/ with its
cross-origin isolation headers: the embedded export animates the bundled 64x64 samples like
`demo.py --backend onnx` does, the result downloads as WebM, Chromium's fake camera drives it, and a
non-image (as source or driving video), a corrupt export and a missing graph each give their
message on the page.

Needs the page built (make web), gradio and playwright (requirements-app.txt) and Debian's chromium;
without them the tests skip, saying what to run, except under CI=1 where they fail.
FOMM_CHROMIUM=/path picks another browser binary.
"""
import base64
import io
import os
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from conftest import ROOT

SOURCE = ROOT / 'assets' / 'shapes-source.png'
SAMPLE = ROOT / 'assets' / 'shapes-driving.mp4'
CLIP_FRAMES = 32  # the sample's first 32 frames: the browser on this 2-core machine does about 6 frames/s
EXPORT = ROOT / 'web' / 'models' / 'shapes-64'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run',
                  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']  # a test-pattern webcam
LEVELS = 2  # the brief's bar: within 2/255 ...
SHARE = 0.99  # ... on 99% of the pixels


def missing(reason: str):
    if os.environ.get('CI'):
        pytest.fail(reason + ' (CI is set: nothing may skip)')
    pytest.skip(reason)


def chromium() -> str:
    for candidate in (os.environ.get('FOMM_CHROMIUM'), '/usr/bin/chromium', shutil.which('chromium'),
                      shutil.which('chromium-browser')):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    missing('no Chromium found (apt-get install -y chromium, or set FOMM_CHROMIUM=/path/to/chromium)')


@pytest.fixture(scope='module')
def built():
    if not (ROOT / 'web' / 'vendor' / 'ort.min.mjs').is_file() or not (ROOT / 'web' / 'samples').is_dir():
        missing('the in-browser page is not built: run `make web` (npm ci in web/, files copied to web/vendor/)')
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing('the browser tests need playwright: pip install -r requirements-app.txt')


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """The driving clip: the sample's first frames, 64x64 H.264 (yuv420p, B-frames, an edit list) as
    ffmpeg writes it."""
    import imageio_ffmpeg
    path = tmp_path_factory.mktemp('clip') / 'driving.mp4'
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-i', str(SAMPLE),
                    '-frames:v', str(CLIP_FRAMES), '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(path)], check=True)
    return path


@pytest.fixture(scope='module')
def reference(tmp_path_factory, built, clip):
    """demo.py --backend onnx on the clip, and on the clip's frames as the page must decode them
    (PNGs of the exact BT.601 formula on PyAV's Y'CbCr planes; the test checks the page's are
    those), both started at once: they run while the page works."""
    from PIL import Image
    work = tmp_path_factory.mktemp('demo')
    pyav_rgb, exact = pyav_frames(clip)
    (work / 'decoded').mkdir()
    for i, frame in enumerate(exact):
        Image.fromarray(frame.astype(np.uint8)).save(work / 'decoded' / ('%06d.png' % i))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    runs = {name: (subprocess.Popen(demo_command(driving, work / (name + '.png')), cwd=str(ROOT), env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT), work / (name + '.png'))
            for name, driving in (('video', clip), ('decoded', work / 'decoded'))}
    yield pyav_rgb, exact, runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


def demo_command(driving, out) -> list:
    return [sys.executable, str(ROOT / 'demo.py'), '--backend', 'onnx', '--onnx_dir', str(EXPORT),
            '--source_image', str(SOURCE), '--driving_video', str(driving), '--result_video', str(out),
            '--relative', '--quiet']


def demo_frames(proc, out) -> np.ndarray:
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log.decode(errors='replace')[-2000:]
    return np.stack([png(p.read_bytes()) for p in sorted(out.glob('*.png'))])


def png(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert('RGB')).astype(np.int16)


def data_urls(urls) -> np.ndarray:
    return np.stack([png(base64.b64decode(u.split(',', 1)[1])) for u in urls])


@pytest.fixture(scope='module')
def page(built, reference, app_server):
    """One tab on the page, its embedded model loaded (the tests below run in this order on it);
    demo.py's reference runs (`reference`) start first and work meanwhile."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS)
        tab = browser.new_page(accept_downloads=True)
        tab.set_default_timeout(60_000)
        errors = []
        tab.on('pageerror', lambda e: errors.append(str(e)))
        tab.goto(app_server[0] + 'web/')
        tab.wait_for_function('window.fomm && window.fomm.info().ready')
        tab.errors = errors
        yield tab
        browser.close()


def info(page) -> dict:
    return page.evaluate('fomm.info()')


def wait_idle(page):
    page.wait_for_function('["done", "ready", "error"].includes(fomm.info().state)')


def pyav_frames(path):
    """The sample's frames as demo.py decodes them (PyAV: RGB by swscale), and the decoded
    Y'CbCr planes converted by the exact BT.601 formula (what the page must compute from the same
    planes)."""
    import av
    from test_web_maths import exact_rgb
    rgb, exact = [], []
    with av.open(str(path)) as c:
        convert = av.video.reformatter.VideoReformatter()
        for frame in c.decode(video=0):
            rgb.append(convert.reformat(frame, format='rgb24').to_ndarray())
            planes = frame.to_ndarray(format='yuv420p')
            h, w = frame.height, frame.width
            y, u, v = planes[:h], planes[h:h + h // 4].reshape(h // 2, w // 2), planes[h + h // 4:].reshape(h // 2, w // 2)
            exact.append(exact_rgb(y, u, v, 0.299, 0.114, False))
    return np.stack(rgb).astype(np.int16), np.stack(exact).astype(np.int16)


def close_share(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((np.abs(a - b) <= LEVELS).mean())


def test_page_is_cross_origin_isolated_and_gradio_links_to_it(page, app_server):
    now = info(page)
    assert now['crossOriginIsolated'] and 'WebAssembly' in now['backend'] and 'cross-origin isolated' in now['backend']
    assert now['frameShape'] == [64, 64] and 'shapes-64' in now['model']
    with urllib.request.urlopen(app_server[0] + 'web/index.html', timeout=30) as res:
        assert res.headers['Cross-Origin-Opener-Policy'] == 'same-origin'
        assert res.headers['Cross-Origin-Embedder-Policy'] == 'require-corp'
    assert page.get_attribute('#source-input', 'accept') == 'image/*'
    assert page.get_attribute('#driving-input', 'accept').startswith('video/*')
    with urllib.request.urlopen(app_server[0], timeout=30) as res:  # the Gradio page's config holds its markdown
        assert '[run in your browser](web/)' in res.read().decode()


def test_page_animates_the_samples_as_demo_py_does(page, clip, reference):
    page.set_input_files('#source-input', str(SOURCE))
    page.set_input_files('#driving-input', str(clip))
    page.get_by_role('button', name='Animate').click()
    page.wait_for_function('fomm.info().state === "done"', timeout=180_000)
    now = info(page)
    assert now['decoder'].startswith('WebCodecs') and not now['warnings'] and not now['message']
    assert 'frames/s' in page.inner_text('#fps') and now['fps'] > 0
    frames = data_urls(page.evaluate('fomm.frames()'))
    driving = data_urls(page.evaluate('fomm.drivingFrames()'))

    # decoding: every frame, in order, of the same Y'CbCr planes as FFmpeg's (the page's RGB is
    # the exact formula on PyAV's planes); swscale's fixed-point RGB is within 3 levels of it
    pyav_rgb, exact, runs = reference
    assert frames.shape == driving.shape == pyav_rgb.shape == (CLIP_FRAMES, 64, 64, 3)
    np.testing.assert_array_equal(driving, exact)
    assert np.abs(driving - pyav_rgb).max() <= 3

    # the animation: demo.py --backend onnx on the same video file, and on the very frames the page
    # decoded (PNGs), which isolates the networks and the keypoint maths
    same_video = close_share(frames, demo_frames(*runs['video']))
    same_frames = close_share(frames, demo_frames(*runs['decoded']))
    print('page vs demo.py: %.4f of pixels within %d/255 on the video, %.4f on the same frames'
          % (same_video, LEVELS, same_frames))
    assert same_video >= SHARE and same_frames >= SHARE
    assert not page.errors


def test_result_downloads_as_webm(page, tmp_path):
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role('button', name='Download the result (WebM)').click()
    path = tmp_path / 'result.webm'
    download.value.save_as(path)
    data = path.read_bytes()
    assert download.value.suggested_filename == 'fomm-result.webm'
    assert data[:4] == b'\x1a\x45\xdf\xa3' and len(data) > 1000  # an EBML (WebM) file with frames in it
    from media.video_io import probe_video
    # a real-time recording (the frames replayed at the clip's rate): a busy machine may drop a few
    assert probe_video(path).num_frames >= 0.75 * info(page)['frames']


def test_webcam_drives_the_page(page):
    page.check('#steady')  # the One-Euro filter on the camera's real frame times
    page.get_by_role('button', name='Start webcam').click()
    page.wait_for_function('fomm.info().state === "running" && fomm.info().frames >= 3 && fomm.info().fps > 0')
    assert 'frames/s' in page.inner_text('#fps')
    before = info(page)['frames']
    page.get_by_role('button', name='Use this frame as reference').click()
    page.wait_for_function('fomm.info().frames >= %d' % (before + 2))
    page.get_by_role('button', name='Stop').click()
    page.wait_for_function('fomm.info().state === "done"')
    assert not info(page)['message'] and not page.errors
    page.uncheck('#steady')


def ffmpeg(*args):
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-y', *args], check=True)


def test_other_videos_turned_upright_or_played(page, tmp_path):
    """A phone-style MP4 (display matrix: a quarter turn) comes out upright as demo.py reads it; a
    WebM (not demuxed here) plays in a <video> element, with the warning that frames may be missing."""
    from media.images import fit
    from media.video_io import open_video
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=10:duration=0.5', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
           str(tmp_path / 'plain.mp4'))
    ffmpeg('-display_rotation', '90', '-i', str(tmp_path / 'plain.mp4'), '-c', 'copy', str(tmp_path / 'turned.mp4'))
    page.set_input_files('#driving-input', str(tmp_path / 'turned.mp4'))
    page.get_by_role('button', name='Animate').click()
    page.wait_for_function('fomm.info().state === "done"')
    got = data_urls(page.evaluate('fomm.drivingFrames()')).astype(float)
    video = open_video(tmp_path / 'turned.mp4')  # upright, as demo.py reads it
    upright = np.stack([fit(f, (64, 64), 'resize') for f in video.read(range(video.num_frames))]).astype(float)
    assert got.shape == upright.shape
    error = np.abs(got - upright).mean()  # the browser's and OpenCV's resizing differ a little
    for k in (1, 2, 3):  # any other orientation is far further away
        other = np.stack([fit(np.rot90(f, k), (64, 64), 'resize') for f in upright.astype(np.uint8)]).astype(float)
        assert error < 0.25 * np.abs(got - other).mean()

    ffmpeg('-i', str(SAMPLE), '-frames:v', '8', '-c:v', 'libvpx-vp9', '-b:v', '500k', str(tmp_path / 'clip.webm'))
    page.set_input_files('#driving-input', str(tmp_path / 'clip.webm'))
    page.get_by_role('button', name='Animate').click()
    page.wait_for_function('fomm.info().state === "done"')
    now = info(page)
    assert now['decoder'].startswith('<video> element') and 1 <= now['frames'] <= 8
    assert 'decoded by a <video> element (not an MP4/MOV file)' in now['message']
    assert not page.errors


def test_bad_inputs_give_a_message_on_the_page(page, tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('this is not an image\n')
    page.set_input_files('#source-input', str(notes))
    page.wait_for_function('document.getElementById("message").textContent.includes("not an image")')
    assert page.inner_text('#message').startswith('source image: notes.txt: not an image file')
    page.set_input_files('#driving-input', str(notes))
    page.get_by_role('button', name='Animate').click()
    page.wait_for_function('document.getElementById("message").textContent.includes("not a video")')
    assert page.inner_text('#message') == 'driving video: notes.txt: not a video this browser can decode'

    corrupt = tmp_path / 'corrupt'
    shutil.copytree(EXPORT, corrupt)
    data = bytearray((corrupt / 'generator.onnx').read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / 'generator.onnx').write_bytes(bytes(data))
    page.set_input_files('#export-files', sorted(str(p) for p in corrupt.iterdir()))
    page.wait_for_function('document.getElementById("message").textContent.includes("checksum")')
    assert page.inner_text('#message') == ('generator.onnx: checksum mismatch with manifest.json '
                                           '(the file changed after export: export again)')

    page.set_input_files('#export-files', [str(EXPORT / n) for n in ('manifest.json', 'kp_detector.onnx', 'source.onnx')])
    page.wait_for_function('document.getElementById("message").textContent.includes("missing")')
    assert page.inner_text('#message') == 'generator.onnx: missing (listed in manifest.json as the generator graph)'
    assert info(page)['ready']  # the embedded model is still there

    # the same picker takes a good export
    page.set_input_files('#export-files', sorted(str(p) for p in EXPORT.iterdir()))
    page.wait_for_function('fomm.info().ready && document.getElementById("status").textContent.startsWith("ready")')
    assert not info(page)['message'] and not page.errors
