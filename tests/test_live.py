"""live.py: a video file standing in for the camera, --headless into a file: one animated frame
per input frame and the latency printed; the source switch and reference keys; one-line errors."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import live  # noqa: E402
from media.images import fit, read_image  # noqa: E402
from engine.torch_engine import AnimationEngine  # noqa: E402
from media.video_io import VideoWriter, open_video, probe_video  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

SOURCE = ROOT / 'assets' / 'shapes-source.png'
DRIVING = ROOT / 'assets' / 'shapes-driving.mp4'
CHECKPOINT = ROOT / 'checkpoints' / 'shapes-64.pth.tar'


def run_live(*args):
    return subprocess.run([sys.executable, str(ROOT / 'live.py'), *map(str, args)], capture_output=True, text=True,
                          cwd=str(ROOT), env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)


@pytest.fixture(scope='module')
def engine():
    return AnimationEngine.from_checkpoint(None, str(CHECKPOINT), device='cpu', precision='fp32', batch_size=1)


def test_headless_writes_one_animated_frame_per_input_frame(tmp_path, engine):
    out = tmp_path / 'out.mp4'
    res = run_live('--video', DRIVING, '--source', SOURCE, '--headless', '--output', out, '--precision', 'fp32')
    assert res.returncode == 0, res.stderr
    driving = probe_video(DRIVING)
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width, info.fps) == (driving.num_frames, 64, 64, driving.fps)
    match = re.search(r'(\d+) frames; model latency per frame .*: p50 ([\d.]+) ms, p95 ([\d.]+) ms; '
                      r'([\d.]+) frames/s end to end', res.stdout)
    assert match, res.stdout
    assert int(match.group(1)) == driving.num_frames
    p50, p95, fps = map(float, match.groups()[1:])
    assert 0 < p50 <= p95 and fps > 0
    # the frames are the source animated by the video (through the codec: a small difference)
    engine.set_source(fit(read_image(SOURCE), engine.frame_shape, 'resize'))
    engine.set_reference(None)
    frames = open_video(DRIVING).read_all()
    expected = tmp_path / 'expected.mp4'
    with VideoWriter(expected, fps=driving.fps) as writer:
        writer.write(np.stack([engine.animate_frame(f) for f in frames]))
    written = open_video(out).read_all().astype(float)
    assert np.abs(written - open_video(expected).read_all()).max() <= 1
    assert np.abs(written[1:] - written[:1]).mean() > 2.0  # and they move


def loop_args(**kw) -> argparse.Namespace:
    args = dict(fit='crop', absolute=False, adapt_scale=False, out_size=None, max_frames=0)
    args.update(kw)
    return argparse.Namespace(**args)


class ListSink(list):
    write = list.append


def test_keys_switch_the_source_and_reset_the_reference(engine):
    frames = list(open_video(DRIVING).read(range(12)))
    other = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    sources = live.Sources(engine, [read_image(SOURCE), other])
    assert [v.source is not None for v in sources.views] == [True, True]
    sink = ListSink()
    latency, count, _ = live.run_loop(iter(frames), sources, sink, live.Keys('4:n,8:r'), loop_args())
    assert count == len(sink) == len(latency) == 12
    # the same reference (frame 0) for both sources until frame 8, then frame 8
    alone = [live.Sources(engine, [image]) for image in (read_image(SOURCE), other)]
    alone[0].set_reference(frames[0])
    alone[1].set_reference(frames[0])
    for i in range(8):
        np.testing.assert_array_equal(sink[i], alone[0 if i < 4 else 1].engine.animate_frame(frames[i]))
    alone[1].set_reference(frames[8])
    for i in range(8, 12):
        np.testing.assert_array_equal(sink[i], alone[1].engine.animate_frame(frames[i]))


def test_quit_key_and_max_frames_stop_the_loop(engine):
    frames = list(open_video(DRIVING).read(range(10)))
    sources = live.Sources(engine, [read_image(SOURCE)])
    sink = ListSink()
    assert live.run_loop(iter(frames), sources, sink, live.Keys('6:q'), loop_args())[1] == 6 == len(sink)
    sink = ListSink()
    assert live.run_loop(iter(frames), sources, sink, live.Keys(), loop_args(max_frames=3, out_size=32))[1] == 3
    assert sink[0].shape == (32, 32, 3)


@pytest.mark.parametrize('extra, message', [
    (['--headless'], '--headless needs --output out.mp4'),
    (['--headless', '--output', DRIVING], '--output: %s is also the input --video' % DRIVING),
    (['--headless', '--output', 'x.txt'], '--output: x.txt: unknown format'),
    (['--headless', '--output', 'x.mp4', '--keys', '3:z'], '--keys: \'3:z\' is not FRAME:KEY'),
    (['--headless', '--output', 'x.mp4', '--source', 'missing.png'], '--source: file not found: missing.png'),
])
def test_bad_input_is_one_line(extra, message, capsys):
    assert live.main(['--video', str(DRIVING)] + [str(a) for a in extra]) == 1
    err = capsys.readouterr().err
    assert err.strip() == err.strip().splitlines()[0]
    assert err.startswith('live.py: error: ' + message), err


def test_without_pyvirtualcam_says_how_to_get_output(capsys):
    try:
        import pyvirtualcam  # noqa: F401 - only whether it imports
        pytest.skip('pyvirtualcam is installed here')
    except ImportError:
        pass
    assert live.main(['--video', str(DRIVING)]) == 1
    err = capsys.readouterr().err
    assert 'pyvirtualcam is not installed' in err and '--headless --output out.mp4' in err
