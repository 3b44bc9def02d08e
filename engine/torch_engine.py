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
`TorchBackend` holds only what runs on torch: the (fused, cast, compiled) networks, the frames'
conversion and layout, autocast; the driver holds the rest.
"""
import contextlib
from typing import Dict, Optional, Union

import numpy as np
import torch

from core.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_checkpoint
from core.config import Config, config_from_dict, load_config
from core.runtime import autocast, autocast_dtype, resolve_device, resolve_precision
from engine.driver import Driver
from media.images import to_float
from modules.fused import cast_conv_weights, fuse_for_inference, shallow_clone

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
    from modules.networks import build_networks

    state = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    config = resolve_config(config, state, checkpoint_path or '')
    if state is None:
        generator, kp_detector, _ = build_networks(config.model_params, discriminator=False)
    else:
        with torch.device('meta'):
            generator, kp_detector, _ = build_networks(config.model_params, discriminator=False)
        load_checkpoint(checkpoint_path, generator=generator, kp_detector=kp_detector, assign=True, state=state)
    return generator.eval(), kp_detector.eval(), config


# -------------------------------------------------------------------------------- backend
class TorchBackend:
    """The engine's primitives on torch (engine.driver.Backend): a generator and a keypoint
    detector in eval mode on one device, at one precision.

    Args:
        generator, kp_detector: the networks (moved to `device` and put in eval mode).
        device: 'cpu', 'cuda', 'cuda:N', a torch.device, or None (cuda when available).
        precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (core.runtime.resolve_precision).
        channels_last: NHWC memory layout for the convolutions; None: on for CPU, and on CUDA
            for bf16/fp16 (measured on CPU in bench/bench_animate.py).
        fuse: run the per-frame networks as `modules.fused.fuse_for_inference` copies (BatchNorm
            folded into the convolutions, upsampling convolutions split by output phase); same
            weights, and in fp32 the same results up to rounding (~1e-7).
        compile: torch.compile the keypoint detector, dense motion network and decoder (driving
            batches are then padded to one size: `fixed_batch`).

    The fused copies are made from the weights at construction: load a checkpoint first.
    """
    frame_shape = None  # any size the networks take

    def __init__(self, generator: torch.nn.Module, kp_detector: torch.nn.Module,
                 device: Union[str, torch.device, None] = None, precision: str = 'auto',
                 channels_last: Optional[bool] = None, fuse: bool = True, compile: bool = False):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if channels_last is None:  # NHWC: faster with oneDNN on CPU (all precisions, measured in
            # bench/bench_animate.py) and for bf16/fp16 tensor cores on CUDA
            channels_last = self.device.type == 'cpu' or self.precision != 'fp32'
        self.channels_last = bool(channels_last)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator = generator.to(self.device).eval()
        self.kp_detector = kp_detector.to(self.device).eval()
        # the networks that run: fused copies (shared weights) or the modules; only they get the
        # layout (a fused copy's shared weights too, not the ones its folded blocks replaced)
        self.running_generator = fuse_for_inference(self.generator, memory_format=layout) if fuse else self.generator
        self.kp_single = fuse_for_inference(self.kp_detector, memory_format=layout) if fuse else self.kp_detector
        self.running_generator.to(memory_format=layout)
        self.kp_single.to(memory_format=layout)
        if fuse and self.precision != 'fp32':  # the copies' own convolutions: cast once, not at every call
            for net in (self.running_generator, self.kp_single):
                cast_conv_weights(net, autocast_dtype(self.precision))
        self.kp_batch = self.kp_single  # never compiled: kp_single (batch 1: source, reference)
        self.fixed_batch = bool(compile)
        if compile:
            # freezing lets inductor treat the weights as constants (prepacked for oneDNN on CPU);
            # it is a process-wide inductor setting. The generator copy is a shallow clone, so
            # compiled children replace only its own entries.
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            self.kp_batch = torch.compile(self.kp_single, dynamic=False)
            if self.running_generator is self.generator:
                self.running_generator = shallow_clone(self.generator)
            if self.running_generator.dense_motion_network is not None:
                self.running_generator.dense_motion_network = torch.compile(
                    self.running_generator.dense_motion_network, dynamic=False)
            self.decode = torch.compile(self.running_generator.decode, dynamic=False)
        else:
            self.decode = self.running_generator.decode

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def context(self):
        stack = contextlib.ExitStack()
        if self.device.type == 'cuda':  # the current device is per thread: a web server's worker
            stack.enter_context(torch.cuda.device(self.device))  # threads would otherwise use GPU 0
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.precision))
        return stack

    def to_batch(self, frames, what: str) -> torch.Tensor:
        return self.layout(stack_frames(frames, self.device))

    def detect(self, batch: torch.Tensor) -> KP:
        return (self.kp_batch if batch.shape[0] > 1 else self.kp_single)(batch)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        return self.running_generator.encode(source)

    def generate(self, source, encoded, kp_source: KP, kp_driving: KP, extras: bool) -> Dict[str, torch.Tensor]:
        """The generator's own warp (Eq. 8) and decoder on the cached source encoding."""
        batch = kp_driving['value'].shape[0]
        features, result = self.running_generator.warp(source.expand(batch, -1, -1, -1),
                                                       encoded.expand(batch, -1, -1, -1),  # no copies
                                                       kp_driving=kp_driving, kp_source=kp_source, extras=extras)
        result['prediction'] = self.decode(self.layout(features)).float()  # (B, 3, H, W)
        return result

    def all_finite(self, prediction: torch.Tensor) -> bool:
        return bool(torch.isfinite(prediction).all())

    @staticmethod
    def to_uint8(prediction: torch.Tensor) -> np.ndarray:
        return to_uint8_frames(prediction)

    @staticmethod
    def to_float(prediction: torch.Tensor) -> np.ndarray:
        return prediction.permute(0, 2, 3, 1).cpu().numpy()


# --------------------------------------------------------------------------------- engine
class AnimationEngine(Driver):
    """The driver over a TorchBackend: one device, one precision (the arguments of TorchBackend,
    plus batch_size: driving frames per forward pass). `stream` yields tensors on the device."""

    def __init__(self, generator: torch.nn.Module, kp_detector: torch.nn.Module,
                 device: Union[str, torch.device, None] = None, precision: str = 'auto', batch_size: int = 4,
                 channels_last: Optional[bool] = None, fuse: bool = True, compile: bool = False, config=None):
        if int(batch_size) < 1:
            raise ValueError('--batch_size: must be >= 1, got %r' % batch_size)
        backend = TorchBackend(generator, kp_detector, device=device, precision=precision,
                               channels_last=channels_last, fuse=fuse, compile=compile)
        super().__init__(backend, batch_size=batch_size, config=config)

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, config, checkpoint_path: str, device=None, precision: str = 'auto',
                        batch_size: int = 4, channels_last: Optional[bool] = None, fuse: bool = True,
                        compile: bool = False) -> 'AnimationEngine':
        """Networks built from a config (YAML path, Config, dict, or None: the one the checkpoint
        carries), weights from a checkpoint (weights_only=True)."""
        generator, kp_detector, config = load_networks(config, checkpoint_path)
        return cls(generator, kp_detector, device=device, precision=precision, batch_size=batch_size,
                   channels_last=channels_last, fuse=fuse, compile=compile, config=config)

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
        return cls(generator, kp_detector, config=config, **options)

    # --------------------------------------------------------------------- torch specifics
    @property
    def generator(self) -> torch.nn.Module:
        return self.backend.generator

    @property
    def kp_detector(self) -> torch.nn.Module:
        return self.backend.kp_detector

    @property
    def channels_last(self) -> bool:
        return self.backend.channels_last

    def parts(self) -> Dict[str, object]:
        """The per-frame networks as the engine runs them (fused, cast or compiled copies), for
        profiling: 'keypoints' (frames -> kp), 'dense_motion' (source, kp_driving, kp_source ->
        dict), 'decode' (warped features -> frames); call them under autocast(device, precision)."""
        return {'keypoints': self.backend.kp_batch, 'dense_motion': self.backend.running_generator.dense_motion_network,
                'decode': self.backend.decode}

    def to_tensor(self, image: Frame) -> torch.Tensor:
        """One image -> float32 (1, 3, H, W) on the device."""
        return stack_frames([image], self.device)
