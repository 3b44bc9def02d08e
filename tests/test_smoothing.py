"""Steady keypoints (engine.smoothing, the One-Euro filter in the engine's driver): the filter's
arithmetic, and on the embedded model: a still driving video with per-frame noise shimmers at least
2x less with it, a moving one lags by at most one frame; demo.py / live.py flags."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from engine.smoothing import DEFAULT_BETA, KeypointSmoother, OneEuroFilter, smoothing_factor

CONFIG, CHECKPOINT = ROOT / 'config' / 'shapes-64.yaml', ROOT / 'checkpoints' / 'shapes-64.pth.tar'
SOURCE, DRIVING = ROOT / 'assets' / 'shapes-source.png', ROOT / 'assets' / 'shapes-driving.mp4'


def test_one_euro_filter_arithmetic():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    assert f.filter(np.array([2.0]), 0.04)[0] == 2.0  # the first sample passes unchanged
    a = smoothing_factor(1.0, 0.04)
    assert a == pytest.approx(1 / (1 + 1 / (2 * np.pi * 0.04)))
    assert f.filter(np.array([3.0]), 0.04)[0] == pytest.approx(2 + a)  # beta 0: a fixed low-pass
    g = OneEuroFilter()
    values = [g.filter(np.full(3, 0.5), 0.04) for _ in range(5)]
    assert all(np.array_equal(v, np.full(3, 0.5)) for v in values)  # still input, still output
    # a step: the faster it moves, the higher the cut-off, so beta > 0 follows a jump sooner
    slow, fast = OneEuroFilter(beta=0.0), OneEuroFilter(beta=DEFAULT_BETA)
    for flt in (slow, fast):
        flt.filter(np.zeros(1), 0.04)
    assert fast.filter(np.ones(1), 0.04)[0] > slow.filter(np.ones(1), 0.04)[0]
    with pytest.raises(ValueError, match='min_cutoff'):
        OneEuroFilter(min_cutoff=0)


def test_keypoint_smoother_is_the_same_on_numpy_and_torch_and_across_batches():
    rng = np.random.default_rng(0)
    kp = {'value': rng.random((6, 10, 2)), 'jacobian': rng.random((6, 10, 2, 2))}
    whole = KeypointSmoother(25)(kp)
    split = KeypointSmoother(25)
    parts = [split({k: v[i:j] for k, v in kp.items()}) for i, j in ((0, 4), (4, 6))]  # batches of 4 and 2
    on_torch = KeypointSmoother(25)({k: torch.from_numpy(v) for k, v in kp.items()})
    for k in kp:
        np.testing.assert_allclose(np.concatenate([p[k] for p in parts]), whole[k], rtol=0, atol=1e-15)
        np.testing.assert_allclose(on_torch[k].numpy(), whole[k], rtol=0, atol=1e-12)
        assert np.array_equal(whole[k][0], kp[k][0])  # the first frame is untouched
        assert not np.allclose(whole[k][1:], kp[k][1:])


@pytest.fixture(scope='module')
def engine():
    from engine.torch_engine import AnimationEngine
    from media.images import read_image
    eng = AnimationEngine.from_checkpoint(str(CONFIG), str(CHECKPOINT), device='cpu', precision='fp32', batch_size=8)
    eng.set_source(read_image(SOURCE))
    return eng


def driving_frames():
    from media.video_io import open_video
    video = open_video(DRIVING)
    return list(video), video.info.fps


def animate(engine, frames, fps, smooth: bool) -> np.ndarray:
    smoother = KeypointSmoother(fps) if smooth else None
    return np.stack(list(engine.animate(frames, output='float', smooth=smoother))).astype(np.float64)


def test_a_still_driving_video_shimmers_less(engine, one_thread):
    """The first frame held still for 32 frames with sensor-like noise (sigma 4 levels): the
    keypoints tremble and so does the output; the filter steadies it at least 2x (4.5x here)."""
    frames, fps = driving_frames()
    rng = np.random.default_rng(0)
    still = [np.clip(frames[0] + rng.normal(0, 4, frames[0].shape), 0, 255).astype(np.uint8) for _ in range(32)]
    plain, smooth = animate(engine, still, fps, False), animate(engine, still, fps, True)
    change = lambda video: np.abs(np.diff(video, axis=0)).mean()  # noqa: E731
    assert change(plain) > 0 and change(plain) >= 2 * change(smooth), (change(plain), change(smooth))


def test_a_moving_driving_video_lags_at_most_one_frame(engine, one_thread):
    """Smoothed frame t is compared with unsmoothed frames t, t-1, t-2, t-3: the best match (the
    lag) is at most one frame behind (0 here)."""
    frames, fps = driving_frames()
    plain, smooth = animate(engine, frames, fps, False), animate(engine, frames, fps, True)
    assert np.abs(np.diff(plain, axis=0)).mean() > 0.005  # it does move
    errors = [np.abs(smooth[8 + k:] - plain[8:len(plain) - k]).mean() for k in range(4)]
    assert int(np.argmin(errors)) <= 1, errors


def test_live_use_is_steadied_and_the_reference_restarts_the_filter(engine, one_thread):
    frames, fps = driving_frames()
    rng = np.random.default_rng(1)
    still = [np.clip(frames[0] + rng.normal(0, 4, frames[0].shape), 0, 255).astype(np.uint8) for _ in range(16)]
    engine.set_reference(still[0])
    plain = np.stack([engine.animate_frame(f) for f in still]).astype(float)
    engine.set_smoothing(KeypointSmoother(fps))
    try:
        engine.set_reference(still[0])
        steady = np.stack([engine.animate_frame(f, dt=1 / fps) for f in still]).astype(float)
        assert engine.smoother.filters  # it ran
        engine.set_reference(still[0])
        assert not engine.smoother.filters  # a new reference: the filter starts afresh
    finally:
        engine.set_smoothing(None)
        engine.set_reference(None)
    assert np.abs(np.diff(plain, axis=0)).mean() >= 2 * np.abs(np.diff(steady, axis=0)).mean()


def test_demo_and_live_flags(tmp_path):
    base = [sys.executable, str(ROOT / 'demo.py'), '--config', str(CONFIG), '--checkpoint', str(CHECKPOINT),
            '--source_image', str(SOURCE), '--driving_video', str(DRIVING), '--device', 'cpu', '--quiet',
            '--relative', '--no_audio']
    out = tmp_path / 'smooth.mp4'
    res = subprocess.run(base + ['--result_video', str(out), '--smooth'], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and out.exists(), res.stderr
    res = subprocess.run(base + ['--result_video', str(tmp_path / 'bad.mp4'), '--smooth', '--smooth_cutoff', '0'],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        'demo.py: error: --smooth_cutoff: must be > 0 Hz, got 0'], res.stderr
    assert not (tmp_path / 'bad.mp4').exists()
    live = subprocess.run([sys.executable, str(ROOT / 'live.py'), '--video', str(DRIVING), '--headless', '--output',
                           str(tmp_path / 'live.mp4'), '--smooth', '--max_frames', '8', '--precision', 'fp32'],
                          capture_output=True, text=True, cwd=ROOT)
    assert live.returncode == 0 and '8 frames' in live.stdout, live.stdout + live.stderr
