"""Metrics on cases computed by hand; reconstruction and animation end to end on a tiny model."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import metrics  # noqa: E402
from baseline import per_frame_animation  # noqa: E402
from engine.torch_engine import load_networks  # noqa: E402

TINY = str(ROOT / 'tests' / 'tiny.yaml')


pytestmark = pytest.mark.usefixtures('one_thread')


def test_identical_frames():
    rng = np.random.default_rng(0)
    frame = rng.random((32, 40, 3))
    assert metrics.l1(frame, frame) == 0
    assert metrics.psnr(frame, frame) == math.inf
    assert metrics.ssim(frame, frame) == pytest.approx(1.0)
    video = metrics.video_metrics([frame] * 3, [frame.copy()] * 3, name='same')
    assert video['l1'] == 0 and video['psnr'] == metrics.PSNR_CAP_DB and video['psnr_inf_frames'] == 3


def test_constant_offset():
    """|a - b| = 0.1 everywhere: L1 = 0.1, MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB."""
    a = np.full((16, 16, 3), 0.4)
    b = a + 0.1
    assert metrics.l1(a, b) == pytest.approx(0.1)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    # uint8: 51/255 = 0.2 -> PSNR 10 log10(1 / 0.04) = 13.979 dB; the same as the float frames
    u, v = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 151, np.uint8)
    assert metrics.l1(u, v) == pytest.approx(0.2)
    assert metrics.psnr(u, v) == pytest.approx(10 * math.log10(25))
    assert metrics.psnr(u, v) == pytest.approx(metrics.psnr(u / 255.0, v / 255.0))


def test_mean_over_frames_and_videos(tmp_path):
    a = np.zeros((8, 8, 3))
    # frames with offsets 0.1 and 0.2: L1 mean 0.15; PSNR mean (20 + 13.979) / 2
    v1 = metrics.video_metrics([a, a], [a + 0.1, a + 0.2], name='v1', with_ssim=False)
    assert v1['l1'] == pytest.approx(0.15)
    assert v1['psnr'] == pytest.approx((20 + 10 * math.log10(25)) / 2)
    # an identical frame counts as the cap in the mean, so the mean stays finite
    v2 = metrics.video_metrics([a, a], [a, a + 0.1], name='v2', with_ssim=False)
    assert v2['psnr'] == pytest.approx((metrics.PSNR_CAP_DB + 20) / 2)
    mean = metrics.summarize([v1, v2])
    assert mean['l1'] == pytest.approx((0.15 + 0.05) / 2) and mean['videos'] == 2 and mean['frames'] == 4
    with pytest.raises(ValueError, match='length'):
        metrics.video_metrics([a], [a, a])

    v1['akd'] = float('nan')  # e.g. no face found: null in JSON, left out of the mean
    v2['akd'] = 2.0
    paths = metrics.write_report(str(tmp_path), [v1, v2])
    text = Path(paths['json']).read_text()
    assert 'NaN' not in text and 'Infinity' not in text
    report = json.loads(text)
    assert report['videos'][0]['akd'] is None and report['mean']['akd'] == 2.0
    assert report['psnr_cap_db'] == metrics.PSNR_CAP_DB
    rows = Path(paths['csv']).read_text().splitlines()
    assert rows[0].startswith('name,frames,l1,psnr') and rows[-1].startswith('mean,4,0.1')


def test_identical_videos_report_the_cap_as_the_docs_say(tmp_path):
    frame = np.random.default_rng(1).random((8, 8, 3))
    same = metrics.video_metrics([frame] * 4, [frame] * 4, name='same', with_ssim=False)
    report = json.loads(Path(metrics.write_report(str(tmp_path), [same])['json']).read_text())
    assert report['videos'][0]['psnr'] == metrics.PSNR_CAP_DB == 100.0 and report['mean']['psnr'] == 100.0
    assert report['videos'][0]['psnr_inf_frames'] == 4 and report['written_by']
    docs = (ROOT / 'docs' / 'training.md').read_text()
    assert 'count as %g dB' % metrics.PSNR_CAP_DB in docs and 'never `null`' in docs


class _EchoEngine:
    """A stand-in engine whose prediction is the driving frame plus an offset."""

    def __init__(self, offset):
        self.offset = offset

    def set_source(self, image):
        self.source = image

    def stream(self, frames, relative=True):
        assert relative is False  # reconstruction uses absolute keypoints
        batch, given = [], []
        for f in frames:
            given.append(f)
            batch.append(torch.from_numpy(f.astype(np.float32) / 255 + self.offset).permute(2, 0, 1))
            if len(batch) == 3:
                yield {'prediction': torch.stack(batch), 'frames': given}
                batch, given = [], []
        if batch:
            yield {'prediction': torch.stack(batch), 'frames': given}


def test_reconstruct_video_pairs_each_prediction_with_its_frame():
    from reconstruction import reconstruct_video
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 200, (8, 8, 3), dtype=np.uint8) for _ in range(7)]
    scores = metrics.VideoMetrics('echo', with_ssim=False)
    assert reconstruct_video(_EchoEngine(0.0), iter(frames), None, scores) == 7
    result = scores.result()
    assert result['l1'] < 1e-7 and result['psnr'] >= 80 and result['frames'] == 7
    scores = metrics.VideoMetrics('offset', with_ssim=False)
    reconstruct_video(_EchoEngine(0.1), iter(frames), None, scores)
    assert scores.result()['l1'] == pytest.approx(0.1, abs=1e-6)
    assert scores.result()['psnr'] == pytest.approx(20.0, abs=1e-3)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    """Two 64x64 test videos (mp4) and one frame folder, under <root>/test."""
    from media.video_io import write_video
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    for n, name in enumerate(['a.mp4', 'b.mp4', 'c']):
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(1, 3) * y))[..., None] \
            * rng.uniform(0.3, 1, 3)
        frames = []
        for t in range(5 + n):
            f = base.copy()
            f[10 + 3 * t:26 + 3 * t, 12:28] = (0.9, 0.7, 0.1)
            frames.append((f * 255).astype(np.uint8))
        write_video(root / 'test' / name, np.stack(frames), fps=10, fmt='.png' if name == 'c' else None)
    (root / 'train').mkdir()
    return root


@pytest.fixture(scope='module')
def tiny_nets():
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(TINY, None)
    return generator, kp_detector, config


def test_reconstruction_end_to_end(tmp_path, tiny_data, tiny_nets):
    from frames_dataset import FramesDataset
    from reconstruction import reconstruction
    from media.video_io import iter_video_frames, probe_video
    generator, kp_detector, config = tiny_nets
    dataset = FramesDataset(root_dir=str(tiny_data), frame_shape=(64, 64, 3), is_train=False)
    report = reconstruction(config, generator, kp_detector, None, str(tmp_path), dataset, device='cpu',
                            precision='fp32', batch_size=2, with_akd=False, progress=False)
    out = tmp_path / 'reconstruction'
    assert sorted(p.name for p in out.iterdir()) == ['a.mp4', 'b.mp4', 'c.mp4', 'metrics.csv', 'metrics.json']
    assert probe_video(out / 'b.mp4').num_frames == 6 and probe_video(out / 'b.mp4').fps == pytest.approx(10)
    saved = json.loads((out / 'metrics.json').read_text())
    assert [v['name'] for v in saved['videos']] == ['a.mp4', 'b.mp4', 'c']
    # the reported L1 is the per-frame loop's (absolute keypoints, source = frame 0) L1
    frames = [f.astype(np.float32) / 255 for f in iter_video_frames(tiny_data / 'test' / 'b.mp4')]
    expected = per_frame_animation(frames[0], frames, generator, kp_detector, relative=False)
    l1 = np.mean([np.abs(p - f).mean() for p, f in zip(expected, frames)])
    assert saved['videos'][1]['l1'] == pytest.approx(l1, abs=1e-5)
    assert report['mean']['l1'] == pytest.approx(np.mean([v['l1'] for v in saved['videos']]))
    assert 0 < saved['mean']['ssim'] <= 1 and saved['mean']['psnr'] > 0


def test_animate_end_to_end(tmp_path, tiny_data, tiny_nets):
    from animate import animate
    from frames_dataset import FramesDataset, PairedDataset
    from media.video_io import probe_video
    generator, kp_detector, config = tiny_nets
    dataset = PairedDataset(FramesDataset(root_dir=str(tiny_data), frame_shape=(64, 64, 3), is_train=False),
                            number_of_pairs=2)
    written = animate(config, generator, kp_detector, None, str(tmp_path), dataset, device='cpu',
                      precision='fp32', batch_size=4, progress=False)
    assert len(written) == len(dataset) and all(Path(p).is_file() for p in written)
    assert probe_video(written[0]).height == 64
    vis = animate(config, generator, kp_detector, None, str(tmp_path / 'vis'), dataset, device='cpu',
                  precision='fp32', batch_size=4, visualize=True, progress=False)
    info = probe_video(vis[0])
    assert info.height == 64 and info.width == 6 * 64  # source, driving, deformed, occlusion, 2x prediction
