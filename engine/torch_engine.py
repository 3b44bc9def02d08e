"""The inference engine (torch): a source image animated by a stream of driving frames.

Every entry point animates through this engine (or its torch-free twin, onnx_engine.py, which
has the same API):

    engine = AnimationEngine.from_checkpoint('config/vox-256.yaml', 'vox-cpk.pth.tar')
    engine.set_source(photo)                       # (H, W, 3) uint8 or float in [0, 1]
    for frame in engine.animate(driving_frames):   # any iterable of frames, streamed
        writer.write(frame)                        # (H, W, 3) uint8

    engine.set_reference(frame)                    # live use: the frame relative motion starts from
    out = engine.animate_frame(frame)              # one frame in, one uint8 frame out (batch 1)

Unlike the original per-frame loop, the source's keypoints and encoder features are computed once
(`generator.encode`), the initial driving frame's keypoints once, and the driving frames go
through keypoint detection, `normalize_kp`, the dense motion network and the decoder in batches.
Nothing is accumulated: frames come out as they are made, so memory is flat in video length.
"""
from typing import Dict, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from core.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_checkpoint
from core.config import Config, config_from_dict, load_config
from engine.api import animate_outputs
from media.images import to_float
from modules.fused import cast_conv_weights, fuse_for_inference, shallow_clone
from modules.keypoints import normalize_kp
from core.runtime import autocast, autocast_dtype, resolve_device, resolve_precision

Frame = Union[np.ndarray, torch.Tensor]
KP = Dict[str, torch.Tensor]


def stack_frames(frames, device: torch.device) -> torch.Tensor:
    """A list of frames -> float32 (B, 3, H, W) in [0, 1] on `device`.

    uint8 RGB frames travel as uint8 and are scaled on the device (4x less to copy to a GPU);
    (3, H, W) float tensors are stacked as they are; anything else goes through images.to_float."""
    if all(isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames):
        batch = torch.from_numpy(np.stack(frames)).to(device, non_blocking=True)  # (B, H, W, 3)
        return batch.permute(0, 3, 1, 2).float().div_(255)
    if all(isinstance(f, torch.Tensor) and f.dim() == 3 and f.shape[0] == 3 and f.is_floating_point()
           for f in frames):
        return torch.stack([f.to(device, torch.float32) for f in frames])
    arrays = [to_float(f, 'driving frame') for f in frames]
    return torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).contiguous()


def to_uint8_frames(batch: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded on the device (ties to even,
    as images.float_to_uint8)."""
    return batch.detach().float().clamp(0, 1).mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _take(kp: KP, index: slice) -> KP:
    return {k: v[index] for k, v in kp.items()}


def _expand(kp: KP, batch: int) -> KP:
    """(1, ...) keypoints viewed as (B, ...), no copy."""
    return {k: v.expand(batch, *v.shape[1:]) for k, v in kp.items()}


# ------------------------------------------------------------------------------ networks
def resolve_config(config=None, state: Optional[dict] = None, checkpoint_path: str = '') -> Config:
    """A Config from a YAML path, a Config, a dict, or (None) the config a checkpoint carries."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if config is not None:
        return load_config(str(config))
    stored = checkpoint_config(state or {})
    if stored is None:
        raise CheckpointError('%s: holds no config (published checkpoints do not): give --config' % checkpoint_path)
    return config_from_dict(stored, '%s (its stored config)' % checkpoint_path)


def load_networks(config=None, checkpoint_path: Optional[str] = None):
    """(generator, kp_detector, config) in eval mode on the CPU.

    config: a YAML path, a Config, a dict, or None to use the config stored in the checkpoint.
    With a checkpoint the networks are built on the meta device and adopt the file's tensors
    (no random initialisation that the weights would overwrite); without one they are random.
    Errors: config.ConfigError (names the file/key), checkpoint.CheckpointError (names the file
    and the first tensor that does not fit)."""
    from modules.model import build_networks

    state = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    config = resolve_config(config, state, checkpoint_path or '')
    model_params = config.to_dict()['model_params']
    if state is None:
        generator, kp_detector, _ = build_networks(model_params, discriminator=False)
    else:
        with torch.device('meta'):
            generator, kp_detector, _ = build_networks(model_params, discriminator=False)
        load_checkpoint(checkpoint_path, generator=generator, kp_detector=kp_detector, assign=True, state=state)
    return generator.eval(), kp_detector.eval(), config


# --------------------------------------------------------------------------------- engine
class AnimationEngine:
    """Owns a generator and a keypoint detector in eval mode on one device, at one precision.

    Args:
        generator, kp_detector: the networks (moved to `device` and put in eval mode).
        device: 'cpu', 'cuda', 'cuda:N', a torch.device, or None (cuda when available).
        precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (runtime.resolve_precision: auto is bf16
            on CUDA and on CPUs with native bf16, else fp32).
        batch_size: driving frames per forward pass.
        channels_last: NHWC memory layout for the convolutions; None: on for CPU, and on CUDA
            for bf16/fp16 (measured on CPU in bench/bench_animate.py).
        fuse: run the per-frame networks as `modules.fused.fuse_for_inference` copies (BatchNorm
            folded into the convolutions, upsampling convolutions split by output phase); same
            weights, and in fp32 the same results up to rounding (~1e-7).
        compile: torch.compile the keypoint detector, dense motion network and decoder.

    The fused copies are made from the weights at construction: load a checkpoint first, then
    build the engine (from_checkpoint does).
    """

    def __init__(self, generator: torch.nn.Module, kp_detector: torch.nn.Module,
                 device: Union[str, torch.device, None] = None, precision: str = 'auto', batch_size: int = 4,
                 channels_last: Optional[bool] = None, fuse: bool = True, compile: bool = False):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if int(batch_size) < 1:
            raise ValueError('--batch_size: must be >= 1, got %r' % batch_size)
        self.batch_size = int(batch_size)
        if channels_last is None:  # NHWC: faster with oneDNN on CPU (all precisions, measured in
            # bench/bench_animate.py) and for bf16/fp16 tensor cores on CUDA
            channels_last = self.device.type == 'cpu' or self.precision != 'fp32'
        self.channels_last = bool(channels_last)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator = generator.to(self.device).eval()
        self.kp_detector = kp_detector.to(self.device).eval()
        # the networks that run: fused copies (shared weights) or the modules; only they get the
        # layout (a fused copy's shared weights too, not the ones its folded blocks replaced)
        self._generator = fuse_for_inference(self.generator, memory_format=layout) if fuse else self.generator
        self._kp_single = (fuse_for_inference(self.kp_detector, memory_format=layout) if fuse
                           else self.kp_detector)  # never compiled
        self._generator.to(memory_format=layout)
        self._kp_single.to(memory_format=layout)
        if fuse and self.precision != 'fp32':  # the copies' own convolutions: cast once, not at every call
            for net in (self._generator, self._kp_single):
                cast_conv_weights(net, autocast_dtype(self.precision))
        self._kp_batch = self._kp_single
        self.compiled = bool(compile)
        if compile:
            # freezing lets inductor treat the weights as constants (prepacked for oneDNN on CPU);
            # it is a process-wide inductor setting. The generator copy is a shallow clone, so
            # compiled children replace only its own entries.
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            self._kp_batch = torch.compile(self._kp_single, dynamic=False)
            if self._generator is self.generator:
                self._generator = shallow_clone(self.generator)
            if self._generator.dense_motion_network is not None:
                self._generator.dense_motion_network = torch.compile(self._generator.dense_motion_network,
                                                                     dynamic=False)
            self._decode = torch.compile(self._generator.decode, dynamic=False)
        else:
            self._decode = self._generator.decode
        self.source: Optional[torch.Tensor] = None  # (1, 3, H, W)
        self.kp_source: Optional[KP] = None  # (1, K, 2), (1, K, 2, 2)
        self.encoded: Optional[torch.Tensor] = None  # (1, C', H/2^d, W/2^d)
        self.kp_reference: Optional[KP] = None  # the driving frame relative motion starts from (live use)
        self.config: Optional[Config] = None

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, config, checkpoint_path: str, device=None, precision: str = 'auto',
                        batch_size: int = 4, channels_last: Optional[bool] = None, fuse: bool = True,
                        compile: bool = False) -> 'AnimationEngine':
        """Networks built from a config (YAML path, Config, dict, or None: the one the checkpoint
        carries), weights from a checkpoint (weights_only=True)."""
        generator, kp_detector, config = load_networks(config, checkpoint_path)
        engine = cls(generator, kp_detector, device=device, precision=precision, batch_size=batch_size,
                     channels_last=channels_last, fuse=fuse, compile=compile)
        engine.config = config
        return engine

    @classmethod
    def from_networks(cls, generator: torch.nn.Module, kp_detector: torch.nn.Module, config=None,
                      checkpoint_path: Optional[str] = None, **options) -> 'AnimationEngine':
        """An engine over networks built elsewhere (run.py builds them for every mode): the
        checkpoint's weights are loaded into them first when one is given; config as in
        from_checkpoint (None: the checkpoint's own). `options` are the constructor's."""
        state = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
        config = resolve_config(config, state, checkpoint_path or '')
        if state is not None:
            load_checkpoint(checkpoint_path, generator=generator, kp_detector=kp_detector, state=state)
        engine = cls(generator, kp_detector, **options)
        engine.config = config
        return engine

    def parts(self) -> Dict[str, object]:
        """The per-frame networks as the engine runs them (fused, cast or compiled copies), for
        profiling: 'keypoints' (frames -> kp), 'dense_motion' (source, kp_driving, kp_source ->
        dict), 'decode' (warped features -> frames); call them under autocast(device, precision)."""
        return {'keypoints': self._kp_batch, 'dense_motion': self._generator.dense_motion_network,
                'decode': self._decode}

    @property
    def frame_shape(self) -> Optional[tuple]:
        """(H, W) of the config's frames, when built from a config."""
        return tuple(self.config.dataset_params.frame_shape[:2]) if self.config is not None else None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ----------------------------------------------------------------------------- source
    def to_tensor(self, image: Frame) -> torch.Tensor:
        """One image -> float32 (1, 3, H, W) on the device."""
        return stack_frames([image], self.device)

    @torch.inference_mode()
    def set_source(self, image: Frame) -> None:
        """Compute the source's keypoints and encoder features once.

        image: (H, W, C) numpy (uint8, uint16 or float in [0, 1]; gray and RGBA accepted) or a
        (3, H, W) float tensor. The output frames have the source's size."""
        source = self._layout(self.to_tensor(image))
        with autocast(self.device, self.precision):
            self.kp_source = self._kp_single(source)
            self.encoded = self._generator.encode(source)
        self.source = source

    @torch.inference_mode()
    def keypoints(self, image: Frame) -> KP:
        """Keypoints of one image: {'value': (1, K, 2), 'jacobian': (1, K, 2, 2)}."""
        with autocast(self.device, self.precision):
            return self._kp_single(self._layout(self.to_tensor(image)))

    def set_reference(self, frame: Optional[Frame]) -> None:
        """The driving frame that relative motion is measured from in `animate_frame` (None: the
        next frame given becomes the reference)."""
        self.kp_reference = self.keypoints(frame) if frame is not None else None

    # ---------------------------------------------------------------------------- driving
    def _batches(self, frames: Iterable[Frame]) -> Iterator[tuple]:
        """(original frames, frames (B, 3, H, W) on the device). Compiled networks get a last
        batch padded to full size (repeating its last frame): one shape, no recompilation."""
        chunk = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == self.batch_size:
                yield chunk, stack_frames(chunk, self.device)
                chunk = []
        if chunk:
            padded = chunk + chunk[-1:] * (self.batch_size - len(chunk)) if self.compiled else chunk
            yield chunk, stack_frames(padded, self.device)

    def _generate(self, kp_driving: KP, batch: int, extras: bool) -> Dict[str, torch.Tensor]:
        """The generator's own warp (Eq. 8) and decoder on the cached source encoding."""
        features, result = self._generator.warp(self.source.expand(batch, -1, -1, -1),
                                                self.encoded.expand(batch, -1, -1, -1),  # no copies
                                                kp_driving=kp_driving, kp_source=_expand(self.kp_source, batch),
                                                extras=extras)
        result['prediction'] = self._decode(self._layout(features))  # (B, 3, H, W)
        return result

    @torch.inference_mode()
    def stream(self, driving_frames: Iterable[Frame], relative: bool = True, adapt_scale: bool = False,
               relative_jacobian: bool = True, initial_frame: Optional[Frame] = None,
               extras: bool = False) -> Iterator[Dict[str, object]]:
        """Per batch of driving frames: {'prediction': float32 (B, 3, H, W) on the device,
        'frames': the driving frames as given (a list), 'kp_driving', 'kp_norm', 'kp_source',
        'driving': (B, 3, H', W')} (+ 'deformed', 'mask', 'occlusion_map', ... with `extras`).

        relative: transfer motion relative to the initial driving frame (Sec. 3.5), else use the
            driving keypoints as they are (absolute; reconstruction uses this).
        adapt_scale: scale the motion by the ratio of the source's and the initial driving
            frame's keypoint hull areas. relative_jacobian: compose Jacobians relatively too.
        initial_frame: the driving frame the motion is relative to (default: the first one;
            `--find_best_frame` passes the frame whose pose best matches the source).
        """
        if self.source is None:
            raise RuntimeError('AnimationEngine: call set_source(image) before animating')
        kp_initial = self.keypoints(initial_frame) if initial_frame is not None else None
        for frames, driving in self._batches(driving_frames):
            batch, count = driving.shape[0], len(frames)
            driving = self._layout(driving)
            with autocast(self.device, self.precision):
                kp_driving = self._kp_batch(driving)
                if kp_initial is None:
                    kp_initial = _take(kp_driving, slice(0, 1))  # computed once, with the first batch
                kp_norm = normalize_kp(kp_source=self.kp_source, kp_driving=kp_driving,
                                       kp_driving_initial=kp_initial, adapt_movement_scale=adapt_scale,
                                       use_relative_movement=relative,
                                       use_relative_jacobian=relative and relative_jacobian)
                kp_norm = _expand(kp_norm, batch) if kp_norm['value'].shape[0] != batch else kp_norm
                result = self._generate(kp_norm, batch, extras)
            result['prediction'] = result['prediction'].float()
            result.update(kp_driving=kp_driving, kp_norm=kp_norm, driving=driving,
                          kp_source=_expand(self.kp_source, batch))
            if count < batch:  # drop the padding
                result = {k: ({kk: vv[:count] for kk, vv in v.items()} if isinstance(v, dict) else v[:count])
                          for k, v in result.items()}
            result['frames'] = frames
            yield result

    def animate(self, driving_frames: Iterable[Frame], relative: bool = True, adapt_scale: bool = False,
                relative_jacobian: bool = True, initial_frame: Optional[Frame] = None,
                output: str = 'uint8', with_inputs: bool = False) -> Iterator:
        """Animate the source by `driving_frames` (an iterable, consumed lazily).

        output: 'uint8' -> (H, W, 3) uint8 frames; 'float' -> (H, W, 3) float32 frames in [0, 1];
        'batch' -> float32 (B, 3, H, W) tensors on the device, one per batch. with_inputs: yield
        (driving frame as given, output frame) pairs instead (not with 'batch')."""
        results = self.stream(driving_frames, relative=relative, adapt_scale=adapt_scale,
                              relative_jacobian=relative_jacobian, initial_frame=initial_frame)
        return animate_outputs(results, output, with_inputs, to_uint8_frames,
                               lambda batch: batch.permute(0, 2, 3, 1).cpu().numpy())

    @torch.inference_mode()
    def animate_frame(self, frame: Frame, relative: bool = True, adapt_scale: bool = False,
                      relative_jacobian: bool = True) -> np.ndarray:
        """One driving frame -> one uint8 (H, W, 3) frame, at batch 1, for live use: relative
        motion is measured from the reference frame (`set_reference`; the first frame given when
        none is set), whose keypoints are kept between calls."""
        if self.source is None:
            raise RuntimeError('AnimationEngine: call set_source(image) before animating')
        driving = self._layout(self.to_tensor(frame))
        with autocast(self.device, self.precision):
            kp_driving = self._kp_single(driving)
            if self.kp_reference is None:
                self.kp_reference = kp_driving
            kp_norm = normalize_kp(kp_source=self.kp_source, kp_driving=kp_driving,
                                   kp_driving_initial=self.kp_reference, adapt_movement_scale=adapt_scale,
                                   use_relative_movement=relative,
                                   use_relative_jacobian=relative and relative_jacobian)
            prediction = self._generate(kp_norm, 1, extras=False)['prediction']
        return to_uint8_frames(prediction)[0]
