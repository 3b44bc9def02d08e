"""The web page end to end in a real headless Chromium: app.py started on a free local port, the
bundled samples uploaded and animated from the page, the result fetched and checked; a text file
as the image gives the message in the page; the webcam (Chromium's fake camera) drives the Live tab.

Needs gradio and playwright (requirements-app.txt) and Debian's chromium (apt-get install -y
chromium; playwright's own browser download is not used). FOMM_CHROMIUM=/path picks another
browser binary. FOMM_SCREENSHOT=assets/app.png saves a screenshot of the page (for the README).
"""
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip('gradio', reason='the web app needs gradio: pip install -r requirements-app.txt')
playwright = pytest.importorskip('playwright.sync_api',
                                 reason='the browser test needs playwright: pip install -r requirements-app.txt')

from media.video_io import probe_video  # noqa: E402

SOURCE = ROOT / 'assets' / 'shapes-source.png'
DRIVING = ROOT / 'assets' / 'shapes-driving.mp4'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']  # a test-pattern webcam


def chromium() -> str:
    for candidate in (os.environ.get('FOMM_CHROMIUM'), '/usr/bin/chromium', shutil.which('chromium'),
                      shutil.which('chromium-browser')):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip('no Chromium found (apt-get install -y chromium, or set FOMM_CHROMIUM=/path/to/chromium)')


@pytest.fixture(scope='module')
def page(app_server, tmp_path_factory):  # conftest.app_server: app.py started once for the session
    with playwright.sync_playwright() as p:  # a fresh profile (--user-data-dir) for every run
        context = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp('chromium-profile')),
                                                       executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS,
                                                       viewport={'width': 1280, 'height': 1000})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(app_server[0], wait_until='load')
        tab.wait_for_selector('#animate-button')
        yield tab
        context.close()


def upload(page, elem_id: str, path) -> None:
    """Replace what a file component holds (the samples are there at first) by `path`."""
    clear = page.locator('#%s button[aria-label="Clear"]' % elem_id)
    if clear.count():
        clear.first.click()
    page.locator('#%s input[type=file]' % elem_id).set_input_files(str(path))


def fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as res, open(path, 'wb') as out:
        shutil.copyfileobj(res, out)
    return path


def test_animate_the_samples_from_the_page(page, tmp_path):
    upload(page, 'source-file', SOURCE)
    upload(page, 'driving-video', DRIVING)
    page.wait_for_selector('#driving-video video')
    page.click('#animate-button')
    video = page.wait_for_selector('#result-video video[src]', timeout=180_000)
    preview = page.wait_for_selector('#preview-video video[src]')
    driving = probe_video(DRIVING)
    for element, name, width in ((video, 'result.mp4', 64), (preview, 'preview.mp4', 3 * 64)):
        info = probe_video(fetch(element.get_attribute('src'), tmp_path / name))
        assert (info.num_frames, info.height, info.width) == (driving.num_frames, 64, width)
    page.wait_for_function("document.querySelector('#animate-status').innerText.includes('frames in')")
    assert '%d frames in' % driving.num_frames in page.inner_text('#animate-status')
    assert not page.locator('.toast-body').count()
    if os.environ.get('FOMM_SCREENSHOT'):
        page.screenshot(path=os.environ['FOMM_SCREENSHOT'], full_page=True)


def test_text_file_as_image_shows_the_message(page, app_server, tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('this is not an image\n')
    upload(page, 'source-file', notes)
    toast = page.wait_for_selector('.toast-body')
    page.click('#animate-button')
    page.wait_for_function("document.querySelectorAll('.toast-body').length > 0 && "
                           "document.querySelector('.toast-body').innerText.split('not an image file').length > 2")
    text = toast.inner_text()
    assert 'source image: notes.txt: not an image file' in text and 'Traceback' not in text
    assert app_server[1].poll() is None  # still serving


def test_webcam_drives_the_live_tab(page, app_server):
    page.get_by_role('tab', name='Live (webcam)').click()
    page.locator('#webcam div[title="grant webcam access"] button').click()
    page.locator('#webcam button[aria-label="capture photo"]').click()  # starts the stream
    page.wait_for_function("document.querySelector('#live-speed textarea').value.includes('frames/s')",
                           timeout=120_000)
    assert page.locator('#live-output img[src]').count() == 1
    page.click('#reference-button')
    page.wait_for_function("document.querySelector('#live-speed textarea').value.includes('frames/s')")
    assert app_server[1].poll() is None
