"""Face tools: detectors, square crops and paste-back, landmarks, best frame, AKD.

Everything that works on pixels or boxes is plain numpy (no model code) so the demo, the metrics
and `crop_video.py` share one definition of a face crop. The two detector backends are
  * ``haar``: OpenCV's Haar cascade, shipped inside the opencv wheel (needs OpenCV 4.x: OpenCV 5
    dropped ``cv2.CascadeClassifier``); no download, CPU only;
  * ``face_alignment``: the S3FD detector of the optional `face-alignment` package
    (``requirements-face.txt``), whose weights download on first use.
Landmarks (68 points, 2D) always come from face-alignment's FAN.

Conventions: images are (H, W, 3) RGB, uint8 or float in [0, 1]; a box is
``(x0, y0, x1, y1)`` in pixels with x1/y1 exclusive; a detector is a callable
``frame -> (N, 4) float array`` of boxes, largest first.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union
from urllib.parse import urlparse

import numpy as np

from media.images import resize, to_float, to_uint8
from modules.keypoints import convex_hull_area

Landmarks = np.ndarray  # (68, 2) float, x/y in pixels
LandmarkFn = Callable[[np.ndarray], Optional[Landmarks]]
Detector = Callable[[np.ndarray], np.ndarray]

FA_WEIGHTS_ENV = 'FOMM_FA_WEIGHTS_DIR'
HAAR_CASCADE = 'haarcascade_frontalface_default.xml'
DETECTORS = ('face_alignment', 'haar')


class FaceToolsError(RuntimeError):
    """A user-facing problem (missing weights, no face, missing package), one line long."""


# --------------------------------------------------------------------------- images and boxes

def _check_image(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, 'shape', type(image).__name__)
        raise ValueError('%s must be an (H, W, 3) RGB array, got %s' % (what, shape))
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError('%s must be uint8 or float in [0, 1], got %s' % (what, image.dtype))


def box_area(box: Sequence[float]) -> float:
    """Area of an (x0, y0, x1, y1) box (0 for an empty box)."""
    return max(0.0, float(box[2]) - float(box[0])) * max(0.0, float(box[3]) - float(box[1]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class CropGeometry:
    """Where a square crop sits in its image: ``image[top:top+size, left:left+size]``.

    The square always lies fully inside the image (it is shifted, and shrunk only when the image
    is smaller than the square), so a crop is never padded or stretched.
    """
    left: int
    top: int
    size: int
    image_height: int
    image_width: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.size, self.top + self.size)


def square_box(box: Sequence[float], image_hw: tuple[int, int],
               increase: float = 0.1) -> CropGeometry:
    """The square around ``box``: each side grown by ``increase`` of the longer side, kept inside.

    As in the original crop-video script the side is ``(1 + 2 * increase) * max(w, h)``
    around the box centre; unlike it, the square is shifted (not clipped) at the image border,
    so the crop stays square and the face is never stretched.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError('box %s is empty: expected x0 < x1 and y0 < y1' % (tuple(box),))
    if increase < 0:
        raise ValueError('increase must be >= 0, got %s' % (increase,))
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * increase)))
    side = max(1, min(side, height, width))
    left = int(round((x0 + x1) / 2 - side / 2))
    top = int(round((y0 + y1) / 2 - side / 2))
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return CropGeometry(left, top, side, height, width)


def crop_face(image: np.ndarray, box: Sequence[float], out_size: Union[int, tuple[int, int]] = 256,
              increase: float = 0.1) -> tuple[np.ndarray, CropGeometry]:
    """Square crop of ``image`` around a face ``box``, resized to the model's input.

    Args:
        image: (H, W, 3) RGB photo of any size, uint8 or float in [0, 1].
        box: the face, (x0, y0, x1, y1) in pixels of ``image`` (e.g. ``find_face(...)``).
        out_size: side (or (height, width)) of the returned crop, e.g. 256.
        increase: margin added on each side, as a fraction of the longer box side.
    Returns:
        ``(crop, geometry)``: the crop (out_size, same dtype as ``image``) and the
        ``CropGeometry`` that ``paste_back`` needs to put a generated frame back.
    """
    _check_image(image, 'image')
    geometry = square_box(box, image.shape[:2], increase)
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    x0, y0, x1, y1 = geometry.box
    return resize(image[y0:y1, x0:x1], *size), geometry


def feather_mask(size: int, feather: float) -> np.ndarray:
    """(size, size) blend weights: 1 inside, a smoothstep ramp to exactly 0 on the border.

    ``feather`` is the ramp width as a fraction of ``size`` (0 = hard edge, at most 0.5).
    """
    if not 0.0 <= feather <= 0.5:
        raise ValueError('feather must be in [0, 0.5], got %s' % (feather,))
    if feather == 0.0:
        return np.ones((size, size))
    ramp_px = feather * size
    edge_distance = np.minimum(np.arange(size), np.arange(size)[::-1])  # 0 on the border pixels
    t = np.clip(edge_distance / ramp_px, 0.0, 1.0)
    ramp = t * t * (3.0 - 2.0 * t)
    return np.outer(ramp, ramp)


def paste_back(full_image: np.ndarray, generated_crop: np.ndarray, geometry: CropGeometry,
               feather: float = 0.1) -> np.ndarray:
    """Blend a generated crop back into the full-resolution photo it was cut from.

    Args:
        full_image: the (H, W, 3) photo given to ``crop_face`` (uint8 or float in [0, 1]).
        generated_crop: a generated frame (h, w, 3), uint8 or float in [0, 1], any size: it is
            resized to the crop square.
        geometry: the ``CropGeometry`` returned by ``crop_face`` for this photo.
        feather: width of the smooth edge, fraction of the square's side (see ``feather_mask``).
    Returns:
        A new (H, W, 3) array with the dtype of ``full_image``. Pixels outside the square, and
        those on its border where the mask is 0, are exactly those of ``full_image``.
    """
    _check_image(full_image, 'full_image')
    _check_image(generated_crop, 'generated_crop')
    if full_image.shape[:2] != (geometry.image_height, geometry.image_width):
        raise ValueError('full_image is %sx%s but the crop geometry is for a %sx%s image'
                         % (full_image.shape[1], full_image.shape[0], geometry.image_width, geometry.image_height))
    x0, y0, x1, y1 = geometry.box
    region = full_image[y0:y1, x0:x1]
    generated = to_float(resize(generated_crop, geometry.size, geometry.size)).astype(np.float64)
    if full_image.dtype == np.uint8:
        generated = generated * 255.0
    mask = feather_mask(geometry.size, feather)[..., None]
    blended = region.astype(np.float64) * (1.0 - mask) + generated * mask
    if full_image.dtype == np.uint8:
        blended = np.clip(np.rint(blended), 0, 255)
    out = full_image.copy()
    out[y0:y1, x0:x1] = np.where(mask > 0, blended, region).astype(full_image.dtype)
    return out


# --------------------------------------------------------------------------- detectors

def _largest_first(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.argsort(-areas, kind='stable')]


def _import_cv2_haar():
    try:
        import cv2
    except ImportError as err:
        raise FaceToolsError('the haar detector needs OpenCV: pip install '
                             "'opencv-python-headless>=4.8,<5'") from err
    if not hasattr(cv2, 'CascadeClassifier') or not hasattr(cv2, 'data'):
        raise FaceToolsError('the haar detector needs OpenCV 4.x (installed: %s, '
                             'which has no cv2.CascadeClassifier): pip install '
                             "'opencv-python-headless>=4.8,<5'" % (cv2.__version__,))
    return cv2


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade: no download, fast, misses profiles and small faces.

    Frames larger than ``detect_size`` (longer side) are shrunk before detection; boxes are
    returned in the pixels of the given frame, largest first.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5,
                 detect_size: int = 640, min_face: float = 0.04) -> None:
        cv2 = _import_cv2_haar()
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        self._classifier = cv2.CascadeClassifier(str(path))
        if self._classifier.empty():
            raise FaceToolsError('cannot load the Haar cascade %s: reinstall opencv-python-headless' % (path,))
        self._cv2 = cv2
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.detect_size, self.min_face = detect_size, min_face

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        _check_image(frame, 'frame')
        cv2 = self._cv2
        gray = cv2.cvtColor(to_uint8(frame), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.detect_size / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)),
                                     max(1, round(gray.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(16, int(self.min_face * min(gray.shape)))
        found = self._classifier.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                                  minNeighbors=self.min_neighbors,
                                                  minSize=(min_side, min_side))
        if len(found) == 0:
            return np.zeros((0, 4))
        xywh = np.asarray(found, dtype=np.float64) / scale
        return _largest_first(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))


def _default_device() -> str:
    from core.runtime import resolve_device  # torch only where a network runs
    return str(resolve_device(None))


def _import_face_alignment(landmarks: bool = False):
    """The face_alignment package; ``landmarks``: wanted for 68 landmarks, which the Haar detector
    cannot give, so the error suggests --best_frame rather than --detector haar."""
    try:
        import face_alignment
        import face_alignment.api  # noqa: F401  (the module whose loader we point at local files)
    except ImportError as err:
        hint = ('landmarks (--find_best_frame, AKD) need it; or pick the frame with --best_frame N'
                if landmarks else 'or use --detector haar')
        raise FaceToolsError('face-alignment is not installed (%s): see requirements-face.txt; ' % (err,)
                             + hint) from err
    return face_alignment


def fa_weight_urls(landmarks: bool = True) -> list[str]:
    """URLs of the files the installed face-alignment loads: S3FD, and 2D FAN-4 if ``landmarks``.

    Read from the package itself, so the file names match the installed version.
    """
    fa = _import_face_alignment()
    from face_alignment.detection.sfd import sfd_detector

    urls = [sfd_detector.models_urls['s3fd']]
    if landmarks:
        table = fa.api.models_urls
        if '2DFAN-4' not in table:  # face-alignment <= 1.4: URLs keyed by torch version
            table = getattr(fa.api, 'default_model_urls', {})
        if '2DFAN-4' not in table:
            raise FaceToolsError('unsupported face-alignment %s: no 2DFAN-4 URL found; '
                                 'install the version in requirements-face.txt' % (fa.__version__,))
        urls.append(table['2DFAN-4'])
    return urls


def _file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def fa_weights_dir(weights_dir: Optional[Union[str, Path]] = None) -> Path:
    """``weights_dir``, else ``$FOMM_FA_WEIGHTS_DIR``, else ``$TORCH_HOME/hub/checkpoints``."""
    if weights_dir:
        return Path(weights_dir).expanduser()
    if os.environ.get(FA_WEIGHTS_ENV):
        return Path(os.environ[FA_WEIGHTS_ENV]).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / 'checkpoints'


def _download(urls: Iterable[str], directory: Path, timeout: float) -> Optional[str]:
    """Fetch ``urls`` into ``directory``; returns the first failure's one-line reason, if any."""
    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch's downloader has no timeout of its own
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for url in urls:
            try:
                torch.hub.download_url_to_file(url, str(directory / _file_name(url)), progress=True)
            except (OSError, ValueError, RuntimeError) as err:  # URLError/timeouts are OSErrors
                return ' '.join(str(err).split()) or type(err).__name__
    finally:
        socket.setdefaulttimeout(previous)
    return None


def resolve_fa_weights(weights_dir: Optional[Union[str, Path]] = None, landmarks: bool = True,
                       allow_download: bool = True, timeout: float = 20.0) -> dict[str, Path]:
    """Local paths of face-alignment's weight files, by file name; raises FaceToolsError if absent.

    Missing files are downloaded first when ``allow_download`` (with a socket timeout, so an
    offline machine fails in seconds, not minutes).
    """
    directory = fa_weights_dir(weights_dir)
    urls = fa_weight_urls(landmarks)
    missing = [u for u in urls if not (directory / _file_name(u)).is_file()]
    failure = None
    if missing and allow_download:
        failure = _download(missing, directory, timeout)
        missing = [u for u in urls if not (directory / _file_name(u)).is_file()]
    if missing:
        names = ', '.join(_file_name(u) for u in missing)
        if weights_dir or os.environ.get(FA_WEIGHTS_ENV):
            where = '%s (from --fa_weights_dir / $%s)' % (directory, FA_WEIGHTS_ENV)
        else:
            where = ('%s ($TORCH_HOME/hub/checkpoints), or point --fa_weights_dir or '
                     '$%s at a folder holding them' % (directory, FA_WEIGHTS_ENV))
        reason = 'download failed (%s); ' % (failure,) if failure else ''
        raise FaceToolsError('face-alignment weights not found: %sput %s in %s '
                             '(get them from %s)' % (reason, names, where, ' '.join(missing)))
    return {_file_name(u): directory / _file_name(u) for u in urls}


class SfdFaceDetector:
    """face-alignment's S3FD face detector (only the detector's weights are needed)."""

    def __init__(self, device: Optional[str] = None, weights_dir: Optional[Union[str, Path]] = None,
                 allow_download: bool = True, detect_size: int = 640) -> None:
        paths = resolve_fa_weights(weights_dir, landmarks=False, allow_download=allow_download)
        from face_alignment.detection.sfd.sfd_detector import SFDDetector

        self.device = device or _default_device()
        self._detector = SFDDetector(device=self.device, path_to_detector=str(next(iter(paths.values()))))
        self.detect_size = detect_size

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        _check_image(frame, 'frame')
        frame = to_uint8(frame)
        # As the original crop-video: detect on a frame whose longer side is at most 640 px.
        scale = min(1.0, self.detect_size / max(frame.shape[:2]))
        if scale < 1.0:
            frame = resize(frame, round(frame.shape[0] * scale), round(frame.shape[1] * scale))
        found = self._detector.detect_from_image(frame.copy())
        if len(found) == 0:
            return np.zeros((0, 4))
        return _largest_first(np.asarray(found, dtype=np.float64)[:, :4] / scale)


def make_detector(name: str, device: Optional[str] = None,
                  weights_dir: Optional[Union[str, Path]] = None,
                  allow_download: bool = True) -> Detector:
    """A detector by backend name: 'face_alignment' (S3FD) or 'haar' (OpenCV)."""
    if name == 'haar':
        return HaarFaceDetector()
    if name == 'face_alignment':
        return SfdFaceDetector(device=device, weights_dir=weights_dir, allow_download=allow_download)
    raise ValueError('unknown detector %r: expected one of %s' % (name, ', '.join(DETECTORS)))


def find_face(image: np.ndarray, detector: Detector, what: str = 'image') -> np.ndarray:
    """The largest face box in ``image``; FaceToolsError naming ``what`` when there is none."""
    boxes = detector(image)
    if len(boxes) == 0:
        raise FaceToolsError('no face found in %s' % (what,))
    return boxes[0]


# --------------------------------------------------------------------------- landmarks

class FaceLandmarker:
    """68 2D landmarks of the largest face in a frame, with face-alignment (S3FD + FAN-4).

    Weight files are looked up (and, if allowed, downloaded) by ``resolve_fa_weights``; the
    package is then pointed at those local files, so it never reaches the network itself.
    """

    def __init__(self, device: Optional[str] = None, weights_dir: Optional[Union[str, Path]] = None,
                 flip_input: bool = True, allow_download: bool = True) -> None:
        import inspect
        from unittest import mock

        fa = _import_face_alignment(landmarks=True)
        paths = resolve_fa_weights(weights_dir, landmarks=True, allow_download=allow_download)
        sfd_name = _file_name(fa_weight_urls(landmarks=False)[0])

        def local_file(url: str, *args, **kwargs) -> str:
            name = _file_name(url)
            if name not in paths:
                raise FaceToolsError('face-alignment asked for %s, which this tool does not '
                                     'provide: install the version in requirements-face.txt' % (name,))
            return str(paths[name])

        self.device = device or _default_device()
        landmarks_type = getattr(fa.LandmarksType, 'TWO_D', None) or getattr(fa.LandmarksType, '_2D')
        kwargs = dict(device=self.device, flip_input=flip_input, face_detector='sfd',
                      face_detector_kwargs={'path_to_detector': str(paths[sfd_name])})
        if 'compile' in inspect.signature(fa.FaceAlignment).parameters:
            kwargs['compile'] = False  # torch.compile costs minutes on CPU for a few frames
        with mock.patch.object(fa.api, 'load_file_from_url', local_file):
            self._fa = fa.FaceAlignment(landmarks_type, **kwargs)

    def __call__(self, frame: np.ndarray) -> Optional[Landmarks]:
        _check_image(frame, 'frame')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "No faces were detected." on every empty frame
            points, _, boxes = self._fa.get_landmarks_from_image(to_uint8(frame), return_bboxes=True)
        if not points:
            return None
        areas = [box_area(b[:4]) for b in boxes]
        return np.asarray(points[int(np.argmax(areas))], dtype=np.float64)[:, :2]


def landmarks_for_frames(frames: Iterable[np.ndarray], device: Optional[str] = None,
                         landmarker: Optional[LandmarkFn] = None,
                         weights_dir: Optional[Union[str, Path]] = None,
                         progress: bool = True) -> list[Optional[Landmarks]]:
    """(68, 2) landmarks per frame (None where no face is found), largest face of each frame."""
    from tqdm import tqdm

    landmarker = landmarker or FaceLandmarker(device=device, weights_dir=weights_dir)
    return [landmarker(frame) for frame in tqdm(frames, desc='landmarks', disable=not progress)]


def normalize_landmarks(landmarks: Landmarks) -> np.ndarray:
    """Landmarks centred on their mean and divided by sqrt(convex hull area), as the original demo."""
    kp = np.array(landmarks, dtype=np.float64)
    kp = kp - kp.mean(axis=0, keepdims=True)
    area = convex_hull_area(kp[:, :2])
    if area <= 0:
        raise ValueError('landmarks are degenerate (zero convex hull area)')
    kp[:, :2] = kp[:, :2] / np.sqrt(area)
    return kp


def find_best_frame(source_landmarks: Optional[Landmarks],
                    driving_landmarks_list: Sequence[Optional[Landmarks]]) -> int:
    """Index of the driving frame whose normalised landmarks are closest to the source's.

    Distance: sum of squared differences of ``normalize_landmarks`` (scale- and translation-free,
    as the original ``--find_best_frame``). Frames without a face (None) are skipped.
    """
    if source_landmarks is None:
        raise FaceToolsError('no face found in the source image, cannot find the best frame')
    source = normalize_landmarks(source_landmarks)
    best, best_distance = -1, np.inf
    for index, landmarks in enumerate(driving_landmarks_list):
        if landmarks is None:
            continue
        distance = float(((source - normalize_landmarks(landmarks)) ** 2).sum())
        if distance < best_distance:
            best, best_distance = index, distance
    if best < 0:
        raise FaceToolsError('no face found in any driving frame, cannot find the best frame')
    return best


# --------------------------------------------------------------------------- AKD

@dataclass(frozen=True)
class AKDResult:
    """Average keypoint distance between driving (real) and generated frames.

    akd: mean Euclidean landmark distance in pixels over frames where both have a face
        (nan when there is no such frame).
    missing_ratio: fraction of the frames with a face in the real frame that have none in the
        generated one.
    frames / pairs / real_missing: frames seen, frames used for ``akd``, real frames without face.
    """
    akd: float
    missing_ratio: float
    frames: int
    pairs: int
    real_missing: int


def akd(real_frames: Iterable[np.ndarray], generated_frames: Iterable[np.ndarray],
        landmark_fn: LandmarkFn) -> AKDResult:
    """AKD and missing-face ratio of two equally long frame sequences (streamed, pairwise).

    ``landmark_fn(frame) -> (68, 2) or None`` is typically a ``FaceLandmarker``.
    """
    distances: list[float] = []
    frames = real_missing = generated_missing = 0
    real_iter, generated_iter = iter(real_frames), iter(generated_frames)
    sentinel = object()
    while True:
        real, generated = next(real_iter, sentinel), next(generated_iter, sentinel)
        if real is sentinel and generated is sentinel:
            break
        if real is sentinel or generated is sentinel:
            raise ValueError('real and generated videos differ in length (one ended after %s frames)' % (frames,))
        if real.shape != generated.shape:
            raise ValueError('frame %s: real %s and generated %s differ in shape; landmarks in pixels would not be '
                             'comparable' % (frames, real.shape, generated.shape))
        frames += 1
        kp_real = landmark_fn(real)
        if kp_real is None:
            real_missing += 1
            continue
        kp_generated = landmark_fn(generated)
        if kp_generated is None:
            generated_missing += 1
            continue
        distances.append(float(np.linalg.norm(kp_real[:, :2] - kp_generated[:, :2], axis=1).mean()))
    with_face = frames - real_missing
    return AKDResult(akd=float(np.mean(distances)) if distances else float('nan'),
                     missing_ratio=generated_missing / with_face if with_face else float('nan'),
                     frames=frames, pairs=len(distances), real_missing=real_missing)
