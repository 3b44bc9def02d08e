"""The one inference driver: what every engine does, written once over a small backend protocol.

    engine.set_source(photo)                       # (H, W, 3) uint8 or float in [0, 1]
    for frame in engine.animate(driving_frames):   # any iterable of frames, streamed in batches
        writer.write(frame)                        # (H, W, 3) uint8
    engine.set_reference(frame)                    # live use: the frame relative motion starts from
    out = engine.animate_frame(frame)              # one frame in, one uint8 frame out (batch 1)

The driver holds the source (its keypoints and the backend's cached encoding), batches the driving
frames, takes the initial frame's keypoints once, transfers motion with `normalize_kp` (relative
motion, relative Jacobians, adapt scale), optionally steadies the driving keypoints
(`engine.smoothing`), refuses non-finite output, and turns predictions into the output kinds of
`animate`. A backend only runs the networks on its runtime (`Backend` below): torch
(`engine.torch_engine.TorchBackend`) and onnxruntime (`engine.onnx_engine.OnnxBackend`). This file
imports numpy and the torch-free keypoint maths only, so the onnxruntime engine stays torch-free.

Adding a backend (OpenVINO, TensorRT, ...): implement the protocol's methods over its runtime and
subclass `Driver` (or pass the backend to it); docs/architecture.md lists the steps.
"""
import contextlib
from typing import Any, ContextManager, Dict, Iterable, Iterator, List, Optional, Protocol

import numpy as np

from engine.smoothing import KeypointSmoother
from modules.keypoints import array_namespace, normalize_kp

KP = Dict[str, Any]  # {'value': (B, K, 2)[, 'jacobian': (B, K, 2, 2)]}: numpy arrays or torch tensors
OUTPUTS = ('uint8', 'float', 'batch')


class Backend(Protocol):
    """The primitives an engine's runtime provides. Batches are (B, 3, H, W) float32 in [0, 1] in
    the runtime's own array type; keypoint dicts as KP."""

    device: Any  # where it runs (a torch.device, or 'cpu' / 'cuda' for onnxruntime)
    precision: str  # 'fp32', 'bf16', 'fp16'
    frame_shape: Optional[tuple]  # (H, W) the networks require, or None where any size goes
    fixed_batch: bool  # whether every driving batch must hold exactly batch_size frames (compiled graphs)

    def to_batch(self, frames: List[Any], what: str) -> Any:
        """Frames as given (numpy (H, W, C) of any dtype, or the runtime's (3, H, W) arrays) -> a batch;
        ValueError names `what` when a frame cannot be used (e.g. the wrong size)."""

    def detect(self, batch: Any) -> KP:
        """Keypoints of each frame of a batch."""

    def encode(self, source: Any) -> Any:
        """The generator's encoding of a (1, 3, H, W) source, kept by the driver."""

    def generate(self, source: Any, encoded: Any, kp_source: KP, kp_driving: KP, extras: bool) -> Dict[str, Any]:
        """Frames for B driving keypoint sets from the one source: {'prediction': (B, 3, H, W)
        float32, ...} (+ the generator's other outputs with `extras`)."""

    def context(self) -> ContextManager:
        """Entered around each piece of network work (no gradients, autocast, ...)."""

    def to_uint8(self, prediction: Any) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3) numpy, rounded half to even."""

    def to_float(self, prediction: Any) -> np.ndarray:
        """(B, 3, H, W) -> float32 (B, H, W, 3) numpy."""

    def all_finite(self, prediction: Any) -> bool:
        """Whether every value is finite."""


def take(kp: KP, index: slice) -> KP:
    return {k: v[index] for k, v in kp.items()}


def broadcast(kp: KP, batch: int) -> KP:
    """(1, ...) keypoints seen as (batch, ...), without a copy (numpy or torch)."""
    return {k: (v.expand(batch, *v.shape[1:]) if hasattr(v, 'expand') else np.broadcast_to(v, (batch,) + v.shape[1:]))
            for k, v in kp.items()}


def pad(kp: KP, batch: int) -> KP:
    """Keypoints of B frames followed by copies of the last one, up to `batch`."""
    count = next(iter(kp.values())).shape[0]
    if count == batch:
        return kp
    return {k: array_namespace(v).concatenate([v] + [v[-1:]] * (batch - count)) for k, v in kp.items()}


class NonFiniteOutput(ValueError):
    """The networks produced NaN or infinity (a broken checkpoint or config): never written as frames."""


class Driver:
    """An engine: the driving logic over one backend. `config` (a core.config.Config) is kept for
    callers that want the model's settings; `batch_size` driving frames go through per pass."""

    def __init__(self, backend: Backend, batch_size: int = 4, config=None):
        if int(batch_size) < 1:
            raise ValueError('--batch_size: must be >= 1, got %r' % batch_size)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.config = config
        self.source = None  # (1, 3, H, W) in the backend's array type
        self.kp_source: Optional[KP] = None  # (1, K, 2), (1, K, 2, 2)
        self.encoded = None  # the backend's encoding of the source
        self.kp_reference: Optional[KP] = None  # the driving frame relative motion starts from (live use)
        self.smoother: Optional[KeypointSmoother] = None  # animate_frame's keypoint filter (live use)

    @property
    def device(self):
        return self.backend.device

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def frame_shape(self) -> Optional[tuple]:
        """(H, W) the model takes: the backend's fixed size, else the config's frames (None if neither)."""
        if self.backend.frame_shape is not None:
            return tuple(self.backend.frame_shape)
        return tuple(self.config.dataset_params.frame_shape[:2]) if self.config is not None else None

    # ----------------------------------------------------------------------------- source
    def set_source(self, image) -> None:
        """Compute the source's keypoints and encoding once. image: (H, W, C) numpy (uint8, uint16
        or float in [0, 1]; gray and RGBA accepted) or a (3, H, W) float tensor of the backend's
        runtime. The output frames have the source's size."""
        with self.backend.context():
            source = self.backend.to_batch([image], 'source image')
            self.kp_source = self.backend.detect(source)
            self.encoded = self.backend.encode(source)
        self.source = source

    def keypoints(self, image) -> KP:
        """Keypoints of one image: {'value': (1, K, 2), 'jacobian': (1, K, 2, 2)}."""
        with self.backend.context():
            return self.backend.detect(self.backend.to_batch([image], 'driving frame'))

    def set_reference(self, frame) -> None:
        """The driving frame that relative motion is measured from in `animate_frame` (None: the
        next frame given becomes the reference). The keypoint filter starts afresh."""
        self.kp_reference = self.keypoints(frame) if frame is not None else None
        if self.smoother is not None:
            self.smoother.reset()

    def set_smoothing(self, smoother: Optional[KeypointSmoother]) -> None:
        """Steady the driving keypoints of `animate_frame` with this filter (None: off)."""
        self.smoother = smoother

    # ---------------------------------------------------------------------------- driving
    def _check_source(self) -> None:
        if self.source is None:
            raise RuntimeError('%s: call set_source(image) before animating' % type(self).__name__)

    def _chunks(self, frames: Iterable) -> Iterator[list]:
        chunk = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _transfer(self, kp_driving: KP, kp_initial: KP, relative: bool, adapt_scale: bool,
                  relative_jacobian: bool) -> KP:
        """Driving keypoints -> the keypoints the source is drawn at (Sec. 3.5)."""
        kp_norm = normalize_kp(kp_source=self.kp_source, kp_driving=kp_driving, kp_driving_initial=kp_initial,
                               adapt_movement_scale=adapt_scale, use_relative_movement=relative,
                               use_relative_jacobian=relative and relative_jacobian)
        batch = next(iter(kp_driving.values())).shape[0]
        return broadcast(kp_norm, batch) if kp_norm['value'].shape[0] != batch else kp_norm

    def _generate(self, kp_norm: KP, extras: bool) -> Dict[str, Any]:
        batch = kp_norm['value'].shape[0]
        result = self.backend.generate(self.source, self.encoded, broadcast(self.kp_source, batch), kp_norm, extras)
        if not self.backend.all_finite(result['prediction']):
            raise NonFiniteOutput('the model produced non-finite values (NaN or infinity): its checkpoint or config '
                                  'is broken (e.g. a keypoint temperature of 0, or weights of a diverged training); '
                                  'nothing was written for these frames')
        return result

    def stream(self, driving_frames: Iterable, relative: bool = True, adapt_scale: bool = False,
               relative_jacobian: bool = True, initial_frame=None, extras: bool = False,
               smooth: Optional[KeypointSmoother] = None) -> Iterator[Dict[str, object]]:
        """Per batch of driving frames: {'prediction': float32 (B, 3, H, W) in the backend's array
        type, 'frames': the driving frames as given (a list), 'kp_driving' (as detected), 'kp_norm',
        'kp_source', 'driving': (B, 3, H, W)} (+ the generator's other outputs with `extras`).

        relative: transfer motion relative to the initial driving frame (Sec. 3.5), else use the
            driving keypoints as they are (absolute; reconstruction uses this).
        adapt_scale: scale the motion by the ratio of the source's and the initial driving
            frame's keypoint hull areas. relative_jacobian: compose Jacobians relatively too.
        initial_frame: the driving frame the motion is relative to (default: the first one;
            `--find_best_frame` passes the frame whose pose best matches the source).
        smooth: a KeypointSmoother steadying the driving keypoints frame after frame (None: off).
        """
        self._check_source()
        kp_initial = self.keypoints(initial_frame) if initial_frame is not None else None
        for frames in self._chunks(driving_frames):
            count = len(frames)
            padded = frames + frames[-1:] * (self.batch_size - count) if self.backend.fixed_batch else frames
            with self.backend.context():
                driving = self.backend.to_batch(padded, 'driving frame')
                kp_driving = self.backend.detect(driving)
                if kp_initial is None:
                    kp_initial = take(kp_driving, slice(0, 1))  # computed once, with the first batch
                kp_used = pad(smooth(take(kp_driving, slice(0, count))), len(padded)) if smooth else kp_driving
                kp_norm = self._transfer(kp_used, kp_initial, relative, adapt_scale, relative_jacobian)
                result = self._generate(kp_norm, extras)
            result.update(kp_driving=kp_driving, kp_norm=kp_norm, driving=driving,
                          kp_source=broadcast(self.kp_source, len(padded)))
            if count < len(padded):  # drop the padding
                result = {k: (take(v, slice(0, count)) if isinstance(v, dict) else v[:count]) for k, v in result.items()}
            result['frames'] = frames
            yield result

    def animate(self, driving_frames: Iterable, relative: bool = True, adapt_scale: bool = False,
                relative_jacobian: bool = True, initial_frame=None, output: str = 'uint8',
                with_inputs: bool = False, smooth: Optional[KeypointSmoother] = None) -> Iterator:
        """Animate the source by `driving_frames` (an iterable, consumed lazily).

        output: 'uint8' -> (H, W, 3) uint8 frames; 'float' -> (H, W, 3) float32 frames in [0, 1];
        'batch' -> float32 (B, 3, H, W) batches in the backend's array type. with_inputs: yield
        (driving frame as given, output frame) pairs instead (not with 'batch'). The other
        arguments as in `stream`."""
        if output not in OUTPUTS or (with_inputs and output == 'batch'):
            raise ValueError('output: %r is not one of %s%s' % (output, ', '.join(OUTPUTS),
                                                                 ' (with_inputs: not batch)' if with_inputs else ''))
        results = self.stream(driving_frames, relative=relative, adapt_scale=adapt_scale,
                              relative_jacobian=relative_jacobian, initial_frame=initial_frame, smooth=smooth)
        for result in results:
            prediction = result['prediction']
            if output == 'batch':
                yield prediction
                continue
            frames = self.backend.to_uint8(prediction) if output == 'uint8' else self.backend.to_float(prediction)
            yield from (zip(result['frames'], frames) if with_inputs else frames)

    def animate_frame(self, frame, relative: bool = True, adapt_scale: bool = False,
                      relative_jacobian: bool = True, dt: Optional[float] = None) -> np.ndarray:
        """One driving frame -> one uint8 (H, W, 3) frame, at batch 1, for live use: relative
        motion is measured from the reference frame (`set_reference`; the first frame given when
        none is set), whose keypoints are kept between calls. With a filter set (`set_smoothing`),
        the keypoints are steadied; dt: seconds since the previous frame (default: 1 / its fps)."""
        self._check_source()
        with self.backend.context():
            kp_driving = self.backend.detect(self.backend.to_batch([frame], 'driving frame'))
            if self.kp_reference is None:
                self.kp_reference = kp_driving
            if self.smoother is not None:
                kp_driving = self.smoother(kp_driving, dt)
            kp_norm = self._transfer(kp_driving, self.kp_reference, relative, adapt_scale, relative_jacobian)
            prediction = self._generate(kp_norm, extras=False)['prediction']
        return self.backend.to_uint8(prediction)[0]


def no_context() -> ContextManager:
    """A backend's context where nothing needs entering (onnxruntime)."""
    return contextlib.nullcontext()
