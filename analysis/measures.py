"""The paper's keypoint and identity measures of generated video, whatever network finds them.

    AKD  average keypoint distance: mean Euclidean distance (pixels) between the keypoints found in
         a real frame and in the generated frame, over the keypoints found in both, averaged over
         the frames where both have some;
    MKR  missing keypoint rate: keypoints found in the real frame but not in the generated one,
         over all keypoints found in real frames;
    AED  average euclidean distance between the identity embeddings of real and generated frames,
         over the frames where both have one.

A measurer turns frames into `Observation`s: `analysis/face_measures.py` (dlib: 68 landmarks and
a 128-d face embedding) and `analysis/body_measures.py` (an ONNX pose model and an optional ONNX
re-id model). `VideoMeasures` compares real and generated frames with one; `AnimationMeasures`
judges an animation of another identity (identity kept from the source, motion followed from the
driving video).

Frames are measured at a size a detector can work with: a frame whose shorter side is under
MEASURE_MIN_SIDE (256, the paper's frame size) is upscaled to it first (a 64x64 frame by 4), and
keypoints, hence AKD, are in pixels of the frame as measured. `measured_shape` says which.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from media.images import resize, to_uint8
from modules.keypoints import convex_hull_area

MEASURE_MIN_SIDE = 256
EVAL_EXTRA = 'requirements-eval.txt'
INSTALL_EVAL = 'pip install -r requirements-eval.txt'
FIELDS = ('akd', 'aed', 'mkr', 'no_detection_real', 'no_detection_generated')


class MeasuresUnavailable(RuntimeError):
    """A measure's package or model file is missing; the message (one line) says what to install or pass."""


@dataclass(frozen=True)
class Observation:
    """What a measurer found in one frame.

    keypoints: (K, 2) x, y in pixels of the measured frame, or None (nothing found);
    visible: (K,) bool, the keypoints found (a face gives all 68 or none; a body some of 17);
    embedding: (D,) identity embedding, or None (no face/body, or no identity network)."""
    keypoints: Optional[np.ndarray] = None
    visible: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None

    @property
    def found(self) -> bool:
        return self.keypoints is not None and self.visible is not None and bool(self.visible.any())


NOTHING = Observation()


def measured_shape(height: int, width: int, min_side: int = MEASURE_MIN_SIDE) -> Tuple[int, int]:
    """(H, W) at which a frame of (height, width) is measured: upscaled, aspect kept, so that its
    shorter side is at least `min_side`; never downscaled."""
    short = min(height, width)
    if short >= min_side:
        return int(height), int(width)
    scale = min_side / short
    return int(round(height * scale)), int(round(width * scale))


def prepare_frame(frame: np.ndarray, min_side: int = MEASURE_MIN_SIDE) -> np.ndarray:
    """A frame (uint8 or float in [0, 1]) as the detectors see it: uint8, C-contiguous, at
    measured_shape."""
    frame = np.ascontiguousarray(to_uint8(frame, 'frame'))
    h, w = measured_shape(frame.shape[0], frame.shape[1], min_side)
    return np.ascontiguousarray(resize(frame, h, w))


def embedding_distance(a: Observation, b: Observation) -> float:
    """Euclidean distance between two observations' embeddings; nan when either has none."""
    if a.embedding is None or b.embedding is None:
        return math.nan
    return float(np.linalg.norm(np.asarray(a.embedding, np.float64) - np.asarray(b.embedding, np.float64)))


def _visible(o: Observation, k: int) -> np.ndarray:
    return o.visible.astype(bool) if o.found else np.zeros(k, bool)


def _mean(values: List[float]) -> float:
    return float(np.mean(values)) if values else math.nan


class VideoMeasures:
    """AKD, AED, MKR and the share of frames where nothing is found (per side) of one video pair,
    frame by frame; only sums are kept. `measurer` has `observe(frames) -> [Observation]`."""

    def __init__(self, measurer):
        self.measurer = measurer
        self.reset()

    def reset(self) -> None:
        self.distances: List[float] = []
        self.embedding_distances: List[float] = []
        self.frames = self.no_real = self.no_generated = 0
        self.real_keypoints = self.missing_keypoints = 0

    def add_batch(self, real: Sequence[np.ndarray], generated: Sequence[np.ndarray]) -> None:
        """Frames of the real and generated videos, pairwise."""
        if len(real) != len(generated):
            raise ValueError('%d real frames against %d generated ones' % (len(real), len(generated)))
        if not len(real):
            return
        self.add_observations(self.measurer.observe(real), self.measurer.observe(generated))

    def add_observations(self, real: Sequence[Observation], generated: Sequence[Observation]) -> None:
        for r, g in zip(real, generated):
            self.frames += 1
            self.no_real += not r.found
            self.no_generated += not g.found
            if r.found:
                seen = r.visible.astype(bool)
                kept = _visible(g, len(seen))
                self.real_keypoints += int(seen.sum())
                self.missing_keypoints += int((seen & ~kept).sum())
                both = seen & kept
                if both.any():
                    d = np.linalg.norm(np.asarray(r.keypoints, np.float64)[both]
                                       - np.asarray(g.keypoints, np.float64)[both], axis=1)
                    self.distances.append(float(d.mean()))
            distance = embedding_distance(r, g)
            if not math.isnan(distance):
                self.embedding_distances.append(distance)

    def result(self) -> Dict[str, float]:
        """{'akd', 'aed', 'mkr', 'no_detection_real', 'no_detection_generated'}: nan where it does not
        apply (no frame with keypoints on both sides, no embeddings, no keypoint in any real frame)."""
        return {'akd': _mean(self.distances), 'aed': _mean(self.embedding_distances),
                'mkr': self.missing_keypoints / self.real_keypoints if self.real_keypoints else math.nan,
                'no_detection_real': self.no_real / self.frames if self.frames else math.nan,
                'no_detection_generated': self.no_generated / self.frames if self.frames else math.nan}


class AnimationMeasures:
    """How an animation of another identity does, frame by frame:

    identity preservation  `aed_source`: embedding distance between the source image and each
                           animated frame (the animation should keep looking like the source);
    motion following       `akd_motion`: keypoint distance between each driving frame and its
                           animated frame, in driving-frame pixels, after aligning the animated
                           keypoints once per video by a scale and a shift: at the first frame
                           where both are found, the scale is sqrt(hull area of the driving
                           keypoints / hull area of the animated ones) (the same ratio as the
                           original's adapt_movement_scale) and the shift matches their centroids.
                           The alignment stays fixed afterwards, so later motion is measured,
                           while the two faces' different size and placement are not.
    """

    def __init__(self, measurer, source: np.ndarray):
        self.measurer = measurer
        self.source = measurer.observe([source])[0]
        self.distances: List[float] = []
        self.embedding_distances: List[float] = []
        self.frames = self.no_driving = self.no_animated = 0
        self.scale: Optional[float] = None
        self.shift: Optional[np.ndarray] = None

    def add_batch(self, driving: Sequence[np.ndarray], animated: Sequence[np.ndarray]) -> None:
        for d, a in zip(self.measurer.observe(driving), self.measurer.observe(animated)):
            self.frames += 1
            self.no_driving += not d.found
            self.no_animated += not a.found
            distance = embedding_distance(self.source, a)
            if not math.isnan(distance):
                self.embedding_distances.append(distance)
            if not (d.found and a.found):
                continue
            both = d.visible.astype(bool) & a.visible.astype(bool)
            if both.sum() < 3:  # no hull, hence no scale, from fewer than 3 points
                continue
            kd, ka = np.asarray(d.keypoints, np.float64)[both], np.asarray(a.keypoints, np.float64)[both]
            if self.scale is None:
                area_d, area_a = convex_hull_area(kd), convex_hull_area(ka)
                if area_d <= 0 or area_a <= 0:
                    continue
                self.scale = math.sqrt(area_d / area_a)
                self.shift = kd.mean(axis=0) - self.scale * ka.mean(axis=0)
            aligned = self.scale * ka + self.shift
            self.distances.append(float(np.linalg.norm(kd - aligned, axis=1).mean()))

    def result(self) -> Dict[str, float]:
        return {'aed_source': _mean(self.embedding_distances), 'akd_motion': _mean(self.distances),
                'alignment_scale': self.scale if self.scale is not None else math.nan,
                'no_detection_source': float(not self.source.found),
                'no_detection_driving': self.no_driving / self.frames if self.frames else math.nan,
                'no_detection_animated': self.no_animated / self.frames if self.frames else math.nan}

