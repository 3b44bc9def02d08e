"""Face measures (AKD, MKR, AED) with real pretrained networks that install offline.

The evaluation extra (`pip install -r requirements-eval.txt`: dlib-bin and face-recognition-models)
brings dlib and four model files inside the wheel, nothing downloaded at run time:
  * detector: dlib's HOG frontal face detector (built in), or its CNN (MMOD) detector
    `mmod_human_face_detector.dat` (slower on CPU, more tolerant of blur; frames go in batches);
  * landmarks: `shape_predictor_68_face_landmarks.dat`, the 68 points of iBUG 300-W, the layout of
    face-alignment's 2D landmarks, so AKD in pixels is comparable to the paper's (face-alignment
    itself stays a choice for the landmarks: `landmarks='face_alignment'`, where its weights are);
  * identity: `dlib_face_recognition_resnet_model_v1.dat`, a ResNet giving a 128-d embedding of the
    face chip aligned on the landmarks; dlib's own rule is that two faces closer than 0.6 in
    Euclidean distance are one person. The paper's AED used OpenFace embeddings instead: another
    network and another distance scale (see docs/evaluation.md).

In each frame the largest face counts. dlib's landmarks are whole pixels (rounding adds at most
0.71 px to a point's distance). Frames are measured at measures.measured_shape (upscaled to a
256-px shorter side when smaller: dlib's HOG detector misses faces under about 80 px).
"""
import importlib.util
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from analysis.measures import INSTALL_EVAL, MEASURE_MIN_SIDE, NOTHING, MeasuresUnavailable, Observation, prepare_frame

MODELS_PACKAGE = 'face_recognition_models'
MODEL_FILES = {'landmarks': 'shape_predictor_68_face_landmarks.dat',
               'identity': 'dlib_face_recognition_resnet_model_v1.dat',
               'cnn': 'mmod_human_face_detector.dat'}
DETECTORS = ('hog', 'cnn')
LANDMARKS = ('dlib', 'face_alignment')


def import_dlib():
    """The dlib module, or MeasuresUnavailable saying the one line that installs it."""
    try:
        import dlib
    except ImportError:  # also a module hidden with sys.modules['dlib'] = None
        raise MeasuresUnavailable('the face measures (AKD, AED) need dlib, which is not installed: run '
                                  '`%s`' % INSTALL_EVAL) from None
    return dlib


def model_file(key: str) -> str:
    """Path of one of MODEL_FILES inside the installed face-recognition-models package. Found
    without importing the package: its __init__ needs pkg_resources, which setuptools >= 81 lacks."""
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, 'models', MODEL_FILES[key])
        if os.path.isfile(path):
            return path
    raise MeasuresUnavailable('the face measures need %s from the face-recognition-models package, which is not '
                              'installed: run `%s`' % (MODEL_FILES[key], INSTALL_EVAL))


class FaceMeasurer:
    """Frames -> Observations: 68 landmarks and a 128-d identity embedding of the largest face.

    detector: 'hog' or 'cnn'; landmarks: 'dlib' or 'face_alignment' (its S3FD + FAN weights must be
    present, see analysis/face.py; dlib still gives the embedding); identity: compute embeddings;
    batch_size: frames per batch for the CNN detector and the embedding network; min_side: see
    measures.measured_shape. Raises MeasuresUnavailable when a package or model file is missing."""

    kind = 'faces'

    def __init__(self, detector: str = 'hog', landmarks: str = 'dlib', identity: bool = True,
                 batch_size: int = 16, min_side: int = MEASURE_MIN_SIDE, upsample: int = 0,
                 device: Optional[str] = None, fa_weights_dir: Optional[str] = None):
        if detector not in DETECTORS:
            raise ValueError('face detector %r is not one of %s' % (detector, ', '.join(DETECTORS)))
        if landmarks not in LANDMARKS:
            raise ValueError('landmarks %r is not one of %s' % (landmarks, ', '.join(LANDMARKS)))
        dlib = import_dlib()
        self._dlib = dlib
        self.detector, self.landmarks, self.identity = detector, landmarks, bool(identity)
        self.batch_size, self.min_side, self.upsample = max(1, int(batch_size)), int(min_side), int(upsample)
        self._hog = dlib.get_frontal_face_detector() if detector == 'hog' else None
        self._cnn = dlib.cnn_face_detection_model_v1(model_file('cnn')) if detector == 'cnn' else None
        self._shape = dlib.shape_predictor(model_file('landmarks'))
        self._recognizer = dlib.face_recognition_model_v1(model_file('identity')) if identity else None
        self._fa = None
        if landmarks == 'face_alignment':
            from analysis.face import FaceLandmarker
            self._fa = FaceLandmarker(device=device, weights_dir=fa_weights_dir)

    # ------------------------------------------------------------------ one batch of frames
    def observe(self, frames: Sequence[np.ndarray]) -> List[Observation]:
        """One Observation per frame (uint8 or float in [0, 1], any size), in order."""
        out: List[Observation] = []
        for start in range(0, len(frames), self.batch_size):
            out.extend(self._observe_batch([prepare_frame(f, self.min_side) for f in frames[start:start + self.batch_size]]))
        return out

    def _observe_batch(self, images: List[np.ndarray]) -> List[Observation]:
        shapes = self._shapes(images)  # dlib full_object_detection (68 parts) or None, per image
        points = [None if s is None else np.array([(p.x, p.y) for p in s.parts()], np.float64) for s in shapes]
        embeddings = [None] * len(images)
        with_face = [i for i, s in enumerate(shapes) if s is not None]
        if self._recognizer is not None and with_face:
            faces = [self._dlib.full_object_detections([shapes[i]]) for i in with_face]
            vectors = self._recognizer.compute_face_descriptor([images[i] for i in with_face], faces)
            for i, v in zip(with_face, vectors):
                embeddings[i] = np.array(v[0], np.float64)
        return [NOTHING if p is None else Observation(p, np.ones(len(p), bool), e) for p, e in zip(points, embeddings)]

    def _shapes(self, images: List[np.ndarray]) -> list:
        dlib = self._dlib
        if self._fa is not None:  # face-alignment's landmarks, as a dlib shape for the face chip
            shapes = []
            for image in images:
                kp = self._fa(image)
                if kp is None:
                    shapes.append(None)
                    continue
                x0, y0 = np.floor(kp.min(axis=0)).astype(int)
                x1, y1 = np.ceil(kp.max(axis=0)).astype(int)
                parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in kp])
                shapes.append(dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), parts))
            return shapes
        if self._cnn is not None:
            found = self._cnn(images, self.upsample, batch_size=len(images))
            boxes = [_largest([d.rect for d in dets]) for dets in found]
        else:
            boxes = [_largest(list(self._hog(image, self.upsample))) for image in images]
        return [None if box is None else self._shape(image, box) for image, box in zip(images, boxes)]

    def describe(self) -> Dict[str, object]:
        """Which networks produce the measures (recorded in metrics.json)."""
        detector = ('dlib HOG frontal face detector' if self.detector == 'hog'
                    else 'dlib CNN face detector (%s)' % MODEL_FILES['cnn'])
        landmarks = ('dlib %s (iBUG 300-W, 68 points)' % MODEL_FILES['landmarks'] if self._fa is None
                     else 'face-alignment 2D FAN (68 points)')
        return {'kind': self.kind, 'detector': detector, 'akd': landmarks + '; largest face per frame',
                'aed': ('dlib %s: Euclidean distance of 128-d embeddings (0.6: dlib\'s same-person threshold)'
                        % MODEL_FILES['identity']) if self._recognizer is not None else None,
                'mkr': 'share of real frames with a face whose generated frame has none (68 points or none)',
                'measured_at': 'frames upscaled to a shorter side of %d px when smaller; AKD in those pixels'
                               % self.min_side,
                'dlib': getattr(self._dlib, '__version__', '?')}


def _largest(rects: list):
    """The largest of dlib rectangles, or None."""
    return max(rects, key=lambda r: r.width() * r.height()) if rects else None


def face_measurer_or_none(**kwargs) -> Optional[FaceMeasurer]:
    """A FaceMeasurer when the evaluation extra is installed, else None (the measures are optional
    in reconstruction, animation and the learning check)."""
    try:
        return FaceMeasurer(**kwargs)
    except MeasuresUnavailable:
        return None
