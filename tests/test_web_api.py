"""The page's API for scripts, as docs/web.md documents it: app.py started on a free port, then the
documented examples run against it as they are (docs/examples/animate_folder.py with gradio_client,
docs/examples/animate_curl.sh with curl), so the documentation cannot rot."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, require
from media.video_io import VideoWriter, open_video, probe_video

EXAMPLES = ROOT / 'docs' / 'examples'
SAMPLE = ROOT / 'assets' / 'shapes-driving.mp4'
SOURCE = ROOT / 'assets' / 'shapes-source.png'


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A folder of photos (the sample, a larger one of another aspect, a text file named .png) and
    a short driving clip."""
    import cv2
    folder = tmp_path_factory.mktemp('api')
    photos = folder / 'photos'
    photos.mkdir()
    shutil.copyfile(SOURCE, photos / 'shapes.png')
    cv2.imwrite(str(photos / 'wide.jpg'), cv2.resize(cv2.imread(str(SOURCE)), (120, 80)))
    (photos / 'notes.png').write_text('not an image\n')
    driving = folder / 'short.mp4'
    with VideoWriter(driving, fps=25) as writer:
        writer.write(open_video(SAMPLE).read(range(6)))
    return photos, driving


def test_animate_endpoint_takes_the_documented_inputs(app_server):
    import json
    import urllib.request
    with urllib.request.urlopen(app_server[0] + 'gradio_api/info', timeout=30) as res:
        endpoints = json.load(res)['named_endpoints']
    names = [p['parameter_name'] for p in endpoints['/animate']['parameters']]
    assert names == ['source', 'driving', 'relative', 'adapt', 'fitting', 'initial', 'best', 'crop', 'paste', 'detector',
                     'config', 'checkpoint', 'upload', 'precision', 'smooth']  # docs/web.md and animate_curl.sh give them in this order
    smooth = endpoints['/animate']['parameters'][-1]
    assert smooth['parameter_has_default'] and smooth['parameter_default'] is False  # older scripts need not send it
    assert '/lambda' not in endpoints  # the page's own source preview is not offered to scripts


def test_gradio_client_example_animates_a_folder(app_server, inputs, tmp_path):
    require('gradio_client', 'the example needs gradio_client (installed with gradio)')
    photos, driving = inputs
    out = tmp_path / 'results'
    res = subprocess.run([sys.executable, str(EXAMPLES / 'animate_folder.py'), '--server', app_server[0],
                          '--photos', str(photos), '--driving', str(driving), '--out', str(out), '--preview',
                          '--precision', 'fp32'], capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert res.returncode == 1, res.stderr  # one photo was refused
    assert 'notes.png: source image: notes.png: not an image file' in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ['shapes-preview.mp4', 'shapes.mp4', 'wide-preview.mp4', 'wide.mp4']
    for name, width in (('shapes.mp4', 64), ('wide.mp4', 64), ('shapes-preview.mp4', 3 * 64)):
        info = probe_video(out / name)
        assert (info.num_frames, info.height, info.width) == (6, 64, width), name
    frames = open_video(out / 'shapes.mp4').read(range(6)).astype(np.int16)
    assert np.abs(frames[-1] - frames[0]).mean() > 1  # the result moves
    assert app_server[1].poll() is None


def test_curl_example_animates_a_photo(app_server, inputs, tmp_path):
    if not shutil.which('curl'):
        reason = 'curl is not installed (apt-get install -y curl)'
        if os.environ.get('CI'):
            pytest.fail(reason + ' (CI is set)')
        pytest.skip(reason)
    photos, driving = inputs
    script = EXAMPLES / 'animate_curl.sh'
    res = subprocess.run(['bash', str(script), app_server[0], str(photos / 'shapes.png'), str(driving),
                          str(tmp_path / 'result.mp4')], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert '"6 frames in' in res.stdout
    info = probe_video(tmp_path / 'result.mp4')
    assert (info.num_frames, info.height, info.width) == (6, 64, 64)
    res = subprocess.run(['bash', str(script), app_server[0], str(photos / 'notes.png'), str(driving),
                          str(tmp_path / 'refused.mp4')], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and 'source image: notes.png: not an image file' in res.stderr
    assert not (tmp_path / 'refused.mp4').exists()
