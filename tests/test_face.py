"""Face tools: Haar detection on real photos, crop/paste-back, best frame, AKD, weights loading."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import face  # noqa: E402
from analysis.face import (CropGeometry, FaceToolsError, akd, convex_hull_area, crop_face,  # noqa: E402
                  feather_mask, find_best_frame, normalize_landmarks, paste_back, square_box)
from conftest import box_inside, haar_ok  # noqa: E402

SOURCES = ROOT.parent / 'shared' / 'data' / 'sources'
HAS_FA = importlib.util.find_spec('face_alignment') is not None
needs_haar = pytest.mark.skipif(
    not haar_ok(),
    reason='OpenCV with Haar cascades not installed (needs opencv-python-headless>=4.8,<5; '
           'OpenCV 5 dropped cv2.CascadeClassifier)')
needs_fa = pytest.mark.skipif(not HAS_FA, reason='face-alignment not installed '
                                                 '(optional: requirements-face.txt)')

# Face centres marked by hand on each photo, as fractions of (width, height).
FACE_CENTRES = {
    'cartoon-boy.jpg': (0.50, 0.52), 'painting-boy.jpg': (0.50, 0.35),
    'painting-mona.jpg': (0.50, 0.25), 'painting-pearl.jpg': (0.46, 0.45),
    'photo-woman.jpg': (0.45, 0.58), 'statue.jpg': (0.51, 0.43),
}


# --------------------------------------------------------------------------- Haar on real photos

@needs_haar
@pytest.mark.parametrize('name', sorted(FACE_CENTRES))
def test_haar_finds_face_and_crop_contains_it(name):
    path = SOURCES / name
    if not path.is_file():
        pytest.skip('%s absent (shared data not laid out here)' % (path,))
    import imageio.v3 as iio

    image = iio.imread(path)[..., :3]
    height, width = image.shape[:2]
    box = face.find_face(image, face.HaarFaceDetector(), what=name)
    cx, cy = FACE_CENTRES[name][0] * width, FACE_CENTRES[name][1] * height
    assert box[0] < cx < box[2] and box[1] < cy < box[3], '%s: box %s misses the face at %s' % (name, box, (cx, cy))
    assert 0.1 * width < box[2] - box[0] < 0.9 * width
    crop, geometry = crop_face(image, box, 256, increase=0.1)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    assert box_inside(box, geometry.box)
    assert (geometry.image_height, geometry.image_width) == (height, width)


# --------------------------------------------------------------------------- geometry

def test_square_box_grows_centres_and_stays_inside():
    g = square_box((100, 100, 200, 160), (480, 640), increase=0.1)
    assert g.size == 120 and g.box == (90, 70, 210, 190)
    # Near a border the square is shifted, not clipped: still square, still inside.
    g = square_box((600, -10, 640, 40), (480, 640), increase=0.5)
    assert g.size == 100 and g.left + g.size == 640 and g.top == 0
    # Larger than the image: shrunk to the image's shorter side.
    g = square_box((0, 0, 640, 480), (480, 640), increase=0.1)
    assert g.size == 480 and 0 <= g.left <= 160 and g.top == 0
    with pytest.raises(ValueError, match='empty'):
        square_box((10, 10, 10, 20), (100, 100))


def test_crop_face_keeps_dtype_and_content():
    image = np.zeros((300, 400, 3), np.float32)
    image[100:200, 150:250] = 1.0
    crop, geometry = crop_face(image, (150, 100, 250, 200), out_size=64, increase=0.0)
    assert crop.dtype == np.float32 and crop.shape == (64, 64, 3)
    assert geometry == CropGeometry(150, 100, 100, 300, 400)
    assert crop.min() > 0.99  # exactly the white square
    with pytest.raises(ValueError, match='RGB'):
        crop_face(np.zeros((10, 10)), (0, 0, 5, 5))


# --------------------------------------------------------------------------- paste-back

def test_feather_mask_is_zero_on_border_and_one_inside():
    mask = feather_mask(100, 0.1)
    assert mask.shape == (100, 100)
    assert np.all(mask[0] == 0) and np.all(mask[:, -1] == 0)
    assert np.all(mask[10:90, 10:90] == 1.0)
    assert np.all(np.diff(mask[50, :50]) >= 0)  # ramps up monotonically
    assert np.all(feather_mask(8, 0.0) == 1.0)
    with pytest.raises(ValueError, match='feather'):
        feather_mask(10, 0.7)


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_paste_back_changes_only_the_feathered_square(dtype):
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (300, 420, 3)).astype(np.uint8)
    full = full if dtype == np.uint8 else (full / 255.0).astype(np.float32)
    crop, geometry = crop_face(full, (330, 20, 410, 90), out_size=256, increase=0.2)
    generated = np.full((256, 256, 3), 0.25, np.float32)  # what a model returns: float in [0, 1]
    out = paste_back(full, generated, geometry, feather=0.1)

    assert out.shape == full.shape and out.dtype == full.dtype  # the photo's resolution
    x0, y0, x1, y1 = geometry.box
    outside = np.ones(full.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    outside[y0, x0:x1] = outside[y1 - 1, x0:x1] = True  # the border ring has weight 0
    outside[y0:y1, x0] = outside[y0:y1, x1 - 1] = True
    assert np.array_equal(out[outside], full[outside])
    ramp = int(0.1 * geometry.size) + 1
    centre = out[y0 + ramp:y1 - ramp, x0 + ramp:x1 - ramp].astype(np.float64)
    expected = 0.25 * 255 if dtype == np.uint8 else 0.25
    assert np.allclose(centre, expected, atol=0.51 if dtype == np.uint8 else 1e-6)
    # Half-way up the ramp: a blend of both (differs from the photo and from the crop).
    y, x = (y0 + y1) // 2, x0 + ramp // 2
    assert not np.array_equal(out[y, x], full[y, x])
    assert not np.allclose(out[y, x].astype(np.float64), expected, atol=1 if dtype == np.uint8 else 1 / 255)


def test_paste_back_rejects_another_photo():
    full = np.zeros((100, 120, 3), np.uint8)
    _, geometry = crop_face(full, (10, 10, 50, 50))
    with pytest.raises(ValueError, match='120x100'):
        paste_back(np.zeros((100, 100, 3), np.uint8), np.zeros((64, 64, 3), np.uint8), geometry)


# --------------------------------------------------------------------------- best frame

def _face_landmarks(rng, jaw_open=0.0):
    """68 points shaped roughly like a face (an oval plus inner points)."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    oval = np.stack([np.cos(t), 1.3 * np.sin(t)], 1)
    inner = rng.uniform(-0.6, 0.6, (28, 2))
    inner[20:, 1] += jaw_open  # the mouth moves
    return np.concatenate([oval, inner]) * 50 + 128


def test_convex_hull_area():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [0.5, 1.5]])
    assert convex_hull_area(square) == pytest.approx(4.0)
    points = np.random.default_rng(1).normal(size=(68, 2))
    scipy_spatial = pytest.importorskip('scipy.spatial')
    assert convex_hull_area(points) == pytest.approx(scipy_spatial.ConvexHull(points).volume)


def test_find_best_frame_ignores_scale_and_position():
    rng = np.random.default_rng(0)
    source = _face_landmarks(rng)
    base_inner = source.copy()
    driving = []
    for jaw in (0.5, 0.3, 0.0, 0.2, 0.6):
        pose = base_inner.copy()
        pose[60:, 1] += jaw * 50
        driving.append(pose)
    # The matching pose (index 2), far away and three times larger: still the best.
    driving[2] = (driving[2] - 128) * 3 + np.array([400.0, -50.0])
    driving.insert(1, None)  # a frame without a face
    assert find_best_frame(source, driving) == 3
    assert np.allclose(normalize_landmarks(source), normalize_landmarks(driving[3]))


def test_find_best_frame_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(FaceToolsError, match='source'):
        find_best_frame(None, [_face_landmarks(rng)])
    with pytest.raises(FaceToolsError, match='driving'):
        find_best_frame(_face_landmarks(rng), [None, None])


# --------------------------------------------------------------------------- AKD

def test_akd_distance_and_missing_ratio():
    rng = np.random.default_rng(0)
    points = {i: _face_landmarks(rng) for i in range(5)}

    def frame(i, kind):
        f = np.zeros((8, 8, 3), np.uint8)
        f[0, 0] = (i, kind, 0)
        return f

    def landmark_fn(f):
        i, kind = int(f[0, 0, 0]), int(f[0, 0, 1])
        if kind == 0:  # real
            return None if i == 4 else points[i]
        if i == 3:     # the generated frame lost the face
            return None
        return points[i] + np.array([3.0, 4.0])  # 5 px off everywhere

    result = akd([frame(i, 0) for i in range(5)], (frame(i, 1) for i in range(5)), landmark_fn)
    assert result.akd == pytest.approx(5.0)
    assert (result.frames, result.pairs, result.real_missing) == (5, 3, 1)
    assert result.missing_ratio == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match='length'):
        akd([frame(0, 0)], [], landmark_fn)


# --------------------------------------------------------------------------- face-alignment

def test_missing_face_alignment_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, 'face_alignment', None)  # import fails as if absent
    with pytest.raises(FaceToolsError, match='face-alignment is not installed') as err:
        face.make_detector('face_alignment', device='cpu')
    assert '\n' not in str(err.value) and 'requirements-face.txt' in str(err.value)
    assert '--detector haar' in str(err.value)
    # landmarks (best frame, AKD) cannot come from the Haar detector: the hint says what can be done
    with pytest.raises(FaceToolsError, match='face-alignment is not installed') as err:
        face.FaceLandmarker(device='cpu')
    assert '--best_frame' in str(err.value) and 'haar' not in str(err.value)


def _no_network(monkeypatch):
    """Any download attempt fails at once, as offline, without touching the network."""
    import urllib.error

    import torch

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


@needs_fa
@pytest.mark.parametrize('allow_download', [False, True])
def test_offline_error_names_files_and_folder(tmp_path, monkeypatch, allow_download):
    _no_network(monkeypatch)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(face.FA_WEIGHTS_ENV, raising=False)
    with pytest.raises(FaceToolsError) as err:
        face.FaceLandmarker(device='cpu', allow_download=allow_download)
    message = str(err.value)
    names = [face._file_name(u) for u in face.fa_weight_urls(landmarks=True)]
    assert '\n' not in message
    assert all(name in message for name in names)
    assert str(tmp_path / 'torch' / 'hub' / 'checkpoints') in message
    assert '$TORCH_HOME/hub/checkpoints' in message and '--fa_weights_dir' in message
    assert ('download failed' in message) == allow_download


def _write_random_fa_weights(directory: Path) -> None:
    """face-alignment's weight files with seeded random weights, of the right architectures.

    The S3FD heads are set so that only the coarsest level (stride 128) fires, everywhere, with
    no box offset: on a 128x128 image that is exactly one detection, so FAN runs once.
    """
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    directory.mkdir(parents=True, exist_ok=True)
    sfd_url, fan_url = face.fa_weight_urls(landmarks=True)
    torch.manual_seed(0)
    state = s3fd().state_dict()
    for key, value in state.items():
        if '_mbox_' in key:
            state[key] = torch.zeros_like(value)
        if key.endswith('_mbox_conf.bias'):
            logits = torch.full_like(value, 5.0)
            logits[-1] = 5.0 if key.startswith('conv7_2') else -5.0  # the face channel
            logits[:-1] = -5.0 if key.startswith('conv7_2') else 5.0
            state[key] = logits
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, directory / face._file_name(sfd_url))  # half precision: half the disk
    fan = {k: v.half() if v.is_floating_point() else v for k, v in FAN(4).state_dict().items()}
    torch.save(fan, directory / face._file_name(fan_url))


@pytest.fixture(scope='module')
def random_fa_weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp('fa_weights')
    _write_random_fa_weights(directory)
    return directory


@needs_fa
def test_face_alignment_loads_from_torch_home_without_network(random_fa_weights, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    for path in random_fa_weights.iterdir():
        (checkpoints / path.name).symlink_to(path)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(face.FA_WEIGHTS_ENV, raising=False)
    detector = face.make_detector('face_alignment', device='cpu', allow_download=False)
    boxes = detector(np.full((128, 128, 3), 120, np.uint8))
    assert boxes.shape == (1, 4)


@needs_fa
def test_face_alignment_landmarks_with_random_weights(random_fa_weights, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setenv(face.FA_WEIGHTS_ENV, str(random_fa_weights))  # a folder of our choosing
    landmarker = face.FaceLandmarker(device='cpu', flip_input=False, allow_download=False)
    frame = (np.random.default_rng(0).random((128, 128, 3))).astype(np.float32)
    [points] = face.landmarks_for_frames([frame], landmarker=landmarker, progress=False)
    assert points.shape == (68, 2) and np.all(np.isfinite(points))
