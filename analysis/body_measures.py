"""Body measures (AKD, MKR, AED) from pose and re-id networks the user names, as ONNX files.

No package on the registries ships the weights of a body pose estimator or of a person re-id
network (mediapipe ships no models; the pose packages download theirs at run time), so the body
path loads models the user exports or downloads once. onnxruntime runs them
(`pip install -r requirements-onnx.txt`); everything else here is numpy.

Pose model contract (`--pose_model FILE.onnx`), e.g. a COCO-17 top-down model exported from
mmpose / an HRNet or SimpleBaseline, or a keypoint-head model:
  input   one tensor (N, 3, H, W) float32: RGB, scaled to [0, 1], then normalised with the
          ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (the same as
          mean 123.675/116.28/103.53, std 58.395/57.12/57.375 on 0-255 pixels). H and W are read
          from the graph; a dynamic size falls back to 256 x 192 (COCO top-down). The whole frame
          is resized (stretched) to H x W: the test videos are person-centred crops, as the
          paper's (TaiChi-HD, Fashion) were. A graph with a fixed batch of 1 gets one frame a call.
  output  the first output, either
            heatmaps  (N, K, h, w): keypoint k at the arg-max of its map, score = the map's maximum;
            keypoints (N, K, 3): x, y in input pixels (H x W) and a score.
          K is taken from the model; the order is the model's own (COCO-17: nose, eyes, ears,
          shoulders, elbows, wrists, hips, knees, ankles). A keypoint is found when its score is
          at least `threshold` (default 0.3): MKR counts the real frame's found keypoints that the
          generated frame lacks; a frame with no keypoint found has no body.
Re-id model contract (`--reid_model FILE.onnx`, optional; AED is null without it):
  input   (N, 3, H, W) float32 normalised as above, the whole frame resized to H x W (from the
          graph; dynamic: 256 x 128, the common re-id size);
  output  the first output, (N, D): an embedding, L2-normalised here, so AED is the Euclidean
          distance of unit vectors (0 to 2). Computed for frames with a body only.
Keypoint coordinates are mapped back to the measured frame (measures.measured_shape) with pixel
centres aligned: x_frame = (x_input + 0.5) * W_frame / W_input - 0.5.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from analysis.measures import MEASURE_MIN_SIDE, NOTHING, MeasuresUnavailable, Observation, prepare_frame
from media.images import resize

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
POSE_DEFAULT_HW = (256, 192)
REID_DEFAULT_HW = (256, 128)
INSTALL_ONNX = 'pip install -r requirements-onnx.txt'


def _session(path: str, flag: str):
    """An onnxruntime session on the CPU for a user's model file; errors name the flag and file."""
    if not path or not os.path.isfile(path):
        raise MeasuresUnavailable('%s: model file not found: %s' % (flag, path))
    try:
        import onnxruntime as ort
    except ImportError:
        raise MeasuresUnavailable('%s: the body measures run ONNX models with onnxruntime, which is not installed: '
                                  'run `%s`' % (flag, INSTALL_ONNX)) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own classes for a corrupt or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MeasuresUnavailable('%s: %s is not an ONNX model onnxruntime can run (%s)' % (flag, path, first)) from None


def _input_hw(session, default: Tuple[int, int], flag: str, path: str) -> Tuple[Tuple[int, int], bool]:
    """(H, W) of the model's one image input, and whether it takes a batch of any size."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise MeasuresUnavailable('%s: %s must take one (N, 3, H, W) input, it takes %s'
                                  % (flag, path, ', '.join('%s %s' % (i.name, i.shape) for i in inputs)))
    n, c, h, w = inputs[0].shape
    if isinstance(c, int) and c != 3:
        raise MeasuresUnavailable('%s: %s takes %d channels, expected 3 (RGB)' % (flag, path, c))
    hw = (h, w) if isinstance(h, int) and isinstance(w, int) else default
    return hw, not (isinstance(n, int) and n == 1)


def _normalised(frames: Sequence[np.ndarray], hw: Tuple[int, int]) -> np.ndarray:
    """uint8 frames -> (N, 3, H, W) float32 as the contract says."""
    batch = np.stack([resize(f, hw[0], hw[1]) for f in frames]).astype(np.float32) / 255.0
    return np.ascontiguousarray(((batch - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def _run(session, batch: np.ndarray, batched: bool) -> np.ndarray:
    name = session.get_inputs()[0].name
    if batched:
        return np.asarray(session.run(None, {name: batch})[0])
    return np.concatenate([np.asarray(session.run(None, {name: batch[i:i + 1]})[0]) for i in range(len(batch))])


class OnnxPoseModel:
    """A pose model under the contract above: frames -> (N, K, 3) x, y (frame pixels), score."""

    def __init__(self, path: str, flag: str = '--pose_model'):
        self.path, self.flag = path, flag
        self.session = _session(path, flag)
        self.input_hw, self.batched = _input_hw(self.session, POSE_DEFAULT_HW, flag, path)
        rank = len(self.session.get_outputs()[0].shape)
        if rank not in (3, 4):
            raise MeasuresUnavailable('%s: %s must output heatmaps (N, K, h, w) or keypoints (N, K, 3), its first '
                                      'output is %s' % (flag, path, self.session.get_outputs()[0].shape))
        self.output = 'heatmaps' if rank == 4 else 'keypoints'

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        fh, fw = frames[0].shape[:2]
        h, w = self.input_hw
        out = _run(self.session, _normalised(frames, self.input_hw), self.batched).astype(np.float64)
        if self.output == 'heatmaps':
            n, k, hh, hw = out.shape
            flat = out.reshape(n, k, hh * hw)
            best = flat.argmax(axis=2)
            score = flat.max(axis=2)
            # cell centres -> frame pixels, pixel centres aligned
            x = (best % hw + 0.5) * fw / hw - 0.5
            y = (best // hw + 0.5) * fh / hh - 0.5
            return np.stack([x, y, score], axis=2)
        if out.ndim != 3 or out.shape[2] < 3:
            raise MeasuresUnavailable('%s: %s gave keypoints of shape %s, expected (N, K, 3)'
                                      % (self.flag, self.path, out.shape))
        x = (out[:, :, 0] + 0.5) * fw / w - 0.5
        y = (out[:, :, 1] + 0.5) * fh / h - 0.5
        return np.stack([x, y, out[:, :, 2]], axis=2)


class OnnxReidModel:
    """A re-id model under the contract above: frames -> (N, D) unit embeddings."""

    def __init__(self, path: str, flag: str = '--reid_model'):
        self.path, self.flag = path, flag
        self.session = _session(path, flag)
        self.input_hw, self.batched = _input_hw(self.session, REID_DEFAULT_HW, flag, path)

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        out = _run(self.session, _normalised(frames, self.input_hw), self.batched).astype(np.float64)
        out = out.reshape(len(frames), -1)
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)


class BodyMeasurer:
    """Frames -> Observations: pose keypoints (found where score >= threshold) and, with a re-id
    model, an identity embedding of frames with a body. See the module doc for the contracts."""

    kind = 'bodies'

    def __init__(self, pose_model: str, reid_model: Optional[str] = None, threshold: float = 0.3,
                 batch_size: int = 16, min_side: int = MEASURE_MIN_SIDE):
        self.pose = OnnxPoseModel(pose_model)
        self.reid = OnnxReidModel(reid_model) if reid_model else None
        self.threshold, self.batch_size, self.min_side = float(threshold), max(1, int(batch_size)), int(min_side)

    def observe(self, frames: Sequence[np.ndarray]) -> List[Observation]:
        out: List[Observation] = []
        for start in range(0, len(frames), self.batch_size):
            images = [prepare_frame(f, self.min_side) for f in frames[start:start + self.batch_size]]
            out.extend(self._observe_batch(images))
        return out

    def _observe_batch(self, images: List[np.ndarray]) -> List[Observation]:
        if len({im.shape for im in images}) > 1:  # one size per model call
            return [o for im in images for o in self._observe_batch([im])]
        poses = self.pose(images)  # (N, K, 3)
        visible = poses[:, :, 2] >= self.threshold
        found = [i for i in range(len(images)) if visible[i].any()]
        embeddings = {}
        if self.reid is not None and found:
            embeddings = dict(zip(found, self.reid([images[i] for i in found])))
        return [Observation(poses[i, :, :2], visible[i], embeddings.get(i)) if i in found else NOTHING
                for i in range(len(images))]

    def describe(self) -> Dict[str, object]:
        return {'kind': self.kind,
                'akd': 'pose model %s (%s output, %d x %d input); keypoints with score >= %g'
                       % (self.pose.path, self.pose.output, self.pose.input_hw[0], self.pose.input_hw[1], self.threshold),
                'aed': ('re-id model %s (%d x %d input): Euclidean distance of L2-normalised embeddings'
                        % (self.reid.path, self.reid.input_hw[0], self.reid.input_hw[1])) if self.reid else None,
                'mkr': 'keypoints found in the real frame and not in the generated one, over those found in real frames',
                'measured_at': 'frames upscaled to a shorter side of %d px when smaller; AKD in those pixels'
                               % self.min_side}
