"""crop_video: IoU tracking on synthetic boxes, clip planning, the CLI end to end."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import crop_video  # noqa: E402
from analysis import face  # noqa: E402
from conftest import box_inside, haar_ok  # noqa: E402
from crop_video import main, plan_clips, track_faces  # noqa: E402

FACE_VIDEO = ROOT.parent / 'shared' / 'data' / 'faces-256' / 'test' / 'face-h.mp4'


def box_at(x, y, size=100):
    return np.array([[x, y, x + size, y + size]], dtype=np.float64)


def jitter(rng, boxes, px=2.0):
    return boxes + rng.uniform(-px, px, boxes.shape)


# --------------------------------------------------------------------------- tracker

def test_cut_splits_the_track():
    rng = np.random.default_rng(0)
    frames = [(i, jitter(rng, box_at(50, 40))) for i in range(100)]
    frames += [(i, jitter(rng, box_at(300, 60))) for i in range(100, 180)]  # another shot
    tracks = track_faces(frames)
    assert [(t.start, t.end) for t in tracks] == [(0, 99), (100, 179)]
    clips, rejected = plan_clips(tracks, (360, 480), min_frames=50, min_size=64)
    assert [(c.track, c.start, c.end) for c in clips] == [(0, 0, 99), (1, 100, 179)]
    assert box_inside(box_at(50, 40)[0], clips[0].geometry.box) and not rejected


def test_zoom_cut_of_the_same_face_splits():
    frames = [(i, box_at(100, 100)) for i in range(30)]
    frames += [(i, np.array([[25.0, 25.0, 275.0, 275.0]])) for i in range(30, 60)]  # close-up
    assert [(t.start, t.end) for t in track_faces(frames)] == [(0, 29), (30, 59)]


def test_jump_after_drift_splits_on_iou_with_previous():
    # Drifting right keeps IoU with the first box high; the jump back keeps it above
    # --iou_with_initial (0.43) but its IoU with the latest box is 0.25: a jump.
    frames = [(i, box_at(i, 0)) for i in range(21)]
    frames += [(i, box_at(-40, 0)) for i in range(21, 40)]
    tracks = track_faces(frames, iou_with_initial=0.25, iou_with_previous=0.3)
    assert [(t.start, t.end) for t in tracks] == [(0, 20), (21, 39)]
    # With the original rule alone (first box only), it is one track.
    assert len(track_faces(frames, iou_with_previous=0.0)) == 1


def test_short_track_and_small_face_make_no_clip():
    frames = [(i, box_at(50, 50)) for i in range(60)]
    frames[10:13] = [(i, np.concatenate([box_at(50, 50), box_at(300, 200, 40)])) for i in range(10, 13)]
    tracks = track_faces(frames)
    assert [(t.start, t.end) for t in tracks] == [(0, 59), (10, 12)]
    clips, rejected = plan_clips(tracks, (360, 480), min_frames=30, min_size=64)
    assert [c.track for c in clips] == [0]
    assert rejected == ['track 1 (frames 10-12): 3 frames < --min_frames 30']
    clips, rejected = plan_clips(tracks[:1], (360, 480), min_frames=30, min_size=200)
    assert not clips and 'crop of 120 px < --min_size 200' in rejected[0]


def test_gap_tolerance():
    frames = [(i, box_at(50, 50) if not 20 <= i < 24 else np.zeros((0, 4))) for i in range(50)]
    assert [(t.start, t.end) for t in track_faces(frames, max_gap=5)] == [(0, 49)]
    assert [(t.start, t.end) for t in track_faces(frames, max_gap=0)] == [(0, 19), (24, 49)]


def test_two_faces_keep_their_own_tracks():
    rng = np.random.default_rng(1)
    frames = [(i, jitter(rng, np.concatenate([box_at(300 - i, 50), box_at(20 + i, 60)]))) for i in range(40)]
    tracks = track_faces(frames)
    assert len(tracks) == 2 and all(t.length == 40 for t in tracks)
    left = min(tracks, key=lambda t: t.initial[0])
    assert left.last[0] == pytest.approx(59, abs=3)  # it followed the face moving right


def test_track_box_union_and_mean():
    frames = [(0, box_at(0, 0)), (1, box_at(10, 0)), (2, box_at(20, 0))]
    [track] = track_faces(frames)
    assert np.allclose(track.box('union'), [0, 0, 120, 100])
    assert np.allclose(track.box('mean'), [10, 0, 110, 100])


# --------------------------------------------------------------------------- the CLI on a synthetic video

def _write_video(path, frames, fps=10):
    import imageio

    with imageio.get_writer(str(path), format='FFMPEG', fps=fps, codec='libx264', quality=9,
                            macro_block_size=2, ffmpeg_log_level='error') as writer:
        for frame in frames:
            writer.append_data(frame)


def _square_frame(x, y, size=40, shape=(120, 160)):
    frame = np.full(shape + (3,), 30, np.uint8)
    frame[y:y + size, x:x + size] = (230, 200, 60)
    return frame


def bright_blob_detector(frame):
    """Stand-in detector: the box around the bright pixels."""
    ys, xs = np.nonzero(frame[..., 0] > 128)
    if len(xs) == 0:
        return np.zeros((0, 4))
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)


@pytest.fixture()
def synthetic_video(tmp_path):
    """30 frames of a square at the left, a cut, 20 frames at the right, 3 empty frames."""
    frames = [_square_frame(10 + i % 3, 30) for i in range(30)]
    frames += [_square_frame(100, 50) for _ in range(20)]
    frames += [np.full((120, 160, 3), 30, np.uint8)] * 3
    path = tmp_path / 'talk.mp4'
    _write_video(path, frames)
    return path


def test_cli_writes_one_clip_per_track(synthetic_video, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(crop_video, 'make_detector', lambda *a, **k: bright_blob_detector)
    out_dir = tmp_path / 'clips'
    code = main(['--inp', str(synthetic_video), '--out_dir', str(out_dir), '--min_frames', '10',
                 '--min_size', '32', '--image_shape', '64,64', '--quiet'])
    assert code == 0
    import imageio.v3 as iio

    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ['talk_0_0-29.mp4', 'talk_1_30-49.mp4']
    first = np.stack(list(iio.imiter(out_dir / names[0])))
    second = np.stack(list(iio.imiter(out_dir / names[1])))
    assert first.shape == (30, 64, 64, 3) and second.shape == (20, 64, 64, 3)
    assert iio.immeta(out_dir / names[0])['fps'] == pytest.approx(10)
    # The square fills the middle of every crop (40 px of a ~50 px crop).
    assert first[:, 24:40, 24:40, 0].mean() > 180 and second[:, 24:40, 24:40, 0].mean() > 180
    assert str(out_dir / names[0]) in capsys.readouterr().out


def test_cli_default_out_dir_is_next_to_input(synthetic_video, monkeypatch):
    monkeypatch.setattr(crop_video, 'make_detector', lambda *a, **k: bright_blob_detector)
    assert main(['--inp', str(synthetic_video), '--min_frames', '25', '--min_size', '32', '--quiet']) == 0
    assert sorted(p.name for p in synthetic_video.parent.glob('talk_*.mp4')) == ['talk_0_0-29.mp4']


def test_cli_says_why_nothing_was_written(synthetic_video, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(crop_video, 'make_detector', lambda *a, **k: bright_blob_detector)
    assert main(['--inp', str(synthetic_video), '--out_dir', str(tmp_path / 'none'), '--quiet']) == 0
    err = capsys.readouterr().err
    assert '30 frames < --min_frames 150' in err and 'no clip written' in err
    assert not (tmp_path / 'none').exists()


@pytest.mark.parametrize('kind', ['missing', 'folder', 'not_a_video', 'empty'])
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, capsys, kind):
    path = tmp_path / 'input.mp4'
    if kind == 'folder':
        path.mkdir()
    elif kind == 'not_a_video':
        path.write_text('hello')
    elif kind == 'empty':
        path.write_bytes(b'')
    assert main(['--inp', str(path), '--detector', 'haar', '--quiet']) == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and str(path) in err and err.startswith('crop_video.py: error:')


def test_cli_rejects_bad_image_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--inp', 'x.mp4', '--image_shape', '255,256'])
    assert exit_info.value.code == 2 and 'HEIGHT,WIDTH' in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(['--help'])
    text = capsys.readouterr().out
    for flag, default in [('--increase', '0.1'), ('--iou_with_initial', '0.25'),
                          ('--min_frames', '150'), ('--detector', 'face_alignment'),
                          ('--image_shape', '256,256')]:
        assert flag in text and '(default: %s)' % (default,) in text
    assert '(default: None)' not in text and '(default: False)' not in text


# --------------------------------------------------------------------------- real detectors

@pytest.mark.skipif(not haar_ok(),
                    reason='OpenCV with Haar cascades not installed (needs '
                           'opencv-python-headless>=4.8,<5; OpenCV 5 dropped cv2.CascadeClassifier)')
def test_haar_cli_on_a_real_face_video(tmp_path):
    if not FACE_VIDEO.is_file():
        pytest.skip('%s absent (shared data not laid out here)' % (FACE_VIDEO,))
    assert main(['--inp', str(FACE_VIDEO), '--detector', 'haar', '--out_dir', str(tmp_path),
                 '--detect_every', '3', '--min_frames', '100', '--quiet']) == 0
    import imageio.v3 as iio

    clips = sorted(tmp_path.glob('face-h_*.mp4'))
    assert len(clips) >= 1
    start, end = (int(v) for v in clips[0].stem.rsplit('_', 1)[1].split('-'))
    frames = np.stack(list(iio.imiter(clips[0])))
    assert frames.shape == (end - start + 1, 256, 256, 3)
    # The detector still sees a face in the crop, near its middle.
    box = face.HaarFaceDetector()(frames[len(frames) // 2])[0]
    assert box[0] < 128 < box[2] and box[1] < 128 < box[3]


@pytest.mark.skipif(importlib.util.find_spec('face_alignment') is None,
                    reason='face-alignment not installed (optional: requirements-face.txt)')
def test_face_alignment_cli_offline_is_one_line(tmp_path, monkeypatch, capsys, synthetic_video):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(face.FA_WEIGHTS_ENV, raising=False)
    assert main(['--inp', str(synthetic_video), '--detector', 'face_alignment', '--cpu',
                 '--offline', '--quiet']) == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 's3fd' in err and '$TORCH_HOME/hub/checkpoints' in err
