"""The one inference engine: a source image animated by a stream of driving frames.

Used by `demo.py`, `reconstruction.py`, `animate.py` and as a Python API:

    engine = AnimationEngine.from_checkpoint('config/vox-256.yaml', 'vox-cpk.pth.tar')
    engine.set_source(photo)                       # (H, W, 3) uint8 or float in [0, 1]
    for frame in engine.animate(driving_frames):   # any iterable of frames, streamed
        writer.write(frame)                        # (H, W, 3) uint8

Unlike the original per-frame loop, the source's keypoints and encoder features are computed once
(`generator.encode`), the initial driving frame's keypoints once, and the driving frames go
through keypoint detection, `normalize_kp`, the dense motion network and the decoder in batches.
Nothing is accumulated: frames come out as they are made, so memory is flat in video length.
"""
import copy
from typing import Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animate import normalize_kp
from runtime import autocast, resolve_device, resolve_precision

Frame = Union[np.ndarray, torch.Tensor]
KP = Dict[str, torch.Tensor]
OUTPUTS = ('uint8', 'float', 'batch')
FITS = ('resize', 'crop', 'none')


# ----------------------------------------------------------------------------------- images
def to_float_image(image: Frame, name: str = 'image') -> np.ndarray:
    """Any decoded image -> float32 (H, W, 3) in [0, 1]: gray -> RGB, alpha dropped, uint8/uint16
    scaled. A torch tensor is taken as (C, H, W)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
        image = np.transpose(image, (1, 2, 0)) if image.ndim == 3 else image
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError('%s: expected an (H, W, C) image with 1-4 channels, got shape %s' % (name, a.shape))
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535)
    elif a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
    else:
        raise ValueError('%s: unsupported pixel type %s' % (name, a.dtype))
    if a.shape[2] in (1, 2):  # gray (+ alpha)
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif a.shape[2] == 4:  # as the original: the alpha channel is dropped
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def fit_image(image: np.ndarray, size: Sequence[int], fit: str = 'resize') -> np.ndarray:
    """(H, W, 3) image of any size -> (h, w, 3) of `size`, keeping its dtype.

    'resize' stretches to the size (the original demo's behaviour), 'crop' cuts the largest
    centred region with the target's aspect ratio first (no distortion), 'none' checks the size."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if fit not in FITS:
        raise ValueError('--fit: %r is not one of %s' % (fit, ', '.join(FITS)))
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    if fit == 'none':
        raise ValueError('image is %dx%d, the model expects %dx%d (use --fit resize or crop)' % (iw, ih, w, h))
    if fit == 'crop':
        scale = min(ih / h, iw / w)
        ch, cw = int(round(h * scale)), int(round(w * scale))
        top, left = (ih - ch) // 2, (iw - cw) // 2
        image = image[top:top + ch, left:left + cw]
        ih, iw = image.shape[:2]
    # area averaging when shrinking (anti-aliased), bilinear when enlarging
    interp = cv2.INTER_AREA if (h <= ih and w <= iw) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=interp)
    return out.reshape(h, w, -1) if image.ndim == 3 else out


def _stack_frames(frames: Sequence[Frame], device: torch.device) -> torch.Tensor:
    """A list of frames -> float32 (B, 3, H, W) in [0, 1] on `device`.

    uint8 frames travel as uint8 and are scaled on the device (4x less to copy to a GPU)."""
    if all(isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames):
        batch = torch.from_numpy(np.stack(frames)).to(device, non_blocking=True)  # (B, H, W, 3)
        return batch.permute(0, 3, 1, 2).float().div_(255)
    if all(isinstance(f, torch.Tensor) and f.dim() == 3 and f.shape[0] == 3 and f.is_floating_point()
           for f in frames):
        return torch.stack([f.to(device, torch.float32) for f in frames])
    arrays = [to_float_image(f, 'driving frame') for f in frames]
    return torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).contiguous()


def _take(kp: KP, index: slice) -> KP:
    return {k: v[index] for k, v in kp.items()}


def _expand(kp: KP, batch: int) -> KP:
    """(1, ...) keypoints viewed as (B, ...), no copy."""
    return {k: v.expand(batch, *v.shape[1:]) for k, v in kp.items()}


# ------------------------------------------------------------------------- fast blocks
# Engine-side fast paths: the same functions as the modules' blocks in eval mode, rewritten with
# fewer operations. BatchNorm with running statistics is an affine map, so when it follows a
# convolution it folds into the weights; nearest 2x upsampling followed by a 3x3 convolution is
# four 2x2 convolutions of the low-resolution input, one per output pixel phase (2.25x fewer
# multiply-adds). In fp32 the results differ from the modules' only by rounding (~1e-6).

def _folded(conv: nn.Conv2d, norm: nn.Module) -> tuple:
    """(weight, bias) of conv followed by eval-mode BatchNorm."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (Co,)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    return weight.detach().clone(), ((bias - norm.running_mean) * scale + norm.bias).detach().clone()


class FusedConvBlock(nn.Module):
    """SameBlock2d / DownBlock2d / UpBlock2d in eval mode: (nearest 2x upsampling), conv with
    BatchNorm folded in, ReLU, (avg pool)."""

    def __init__(self, block: nn.Module, pool: bool, upsample: bool = False):
        super().__init__()
        conv = block.conv
        weight, bias = _folded(conv, block.norm)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True, device=weight.device, dtype=weight.dtype)
        self.conv.weight.data.copy_(weight)
        self.conv.bias.data.copy_(bias)
        self.pool = block.pool if pool else None
        self.upsample = upsample

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        out = F.relu(self.conv(x))
        return self.pool(out) if self.pool is not None else out


class FusedUpBlock(nn.Module):
    """UpBlock2d in eval mode (nearest 2x, 3x3 conv, BatchNorm, ReLU) as sub-pixel 2x2 convs.

    Output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0) or {i, i+1} (a=1), and likewise
    for columns, with the 3x3 taps that land on the same input pixel summed: one 2x2 convolution
    with 4*Co outputs over the zero-padded input gives all four phases."""

    def __init__(self, block: nn.Module):
        super().__init__()
        weight, bias = _folded(block.conv, block.norm)  # (Co, Ci, 3, 3), (Co,)
        # taps[a] maps the 3 kernel rows onto the 2 input rows seen by output phase a
        taps = weight.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # (2 phases, 2, 3)
        phases = torch.einsum('aur,bvs,oirs->aboiuv', taps, taps, weight)  # (2, 2, Co, Ci, 2, 2)
        self.out_channels = weight.shape[0]
        self.weight = nn.Parameter(phases.reshape(4 * self.out_channels, weight.shape[1], 2, 2).contiguous(),
                                   requires_grad=False)
        self.bias = nn.Parameter(bias.repeat(4), requires_grad=False)

    def forward(self, x):
        b, _, h, w = x.shape
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)  # (B, 4*Co, h+1, w+1)
        y = y.view(b, 2, 2, self.out_channels, h + 1, w + 1)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        out = torch.empty(b, self.out_channels, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=layout)
        for a in (0, 1):  # phase (a, c) is the window of y starting at (a, c)
            for c in (0, 1):
                out[:, :, a::2, c::2] = y[:, a, c, :, a:a + h, c:c + w]
        return F.relu_(out)


class FusedResBlock(nn.Module):
    """ResBlock2d in eval mode: the BatchNorm after conv1 folded into it."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm1 = block.norm1
        conv1 = block.conv1
        weight, bias = _folded(conv1, block.norm2)
        self.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, conv1.kernel_size, padding=conv1.padding,
                               device=weight.device, dtype=weight.dtype)
        self.conv1.weight.data.copy_(weight)
        self.conv1.bias.data.copy_(bias)
        self.conv2 = block.conv2

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(F.relu(self.norm1(x)))))
        return out + x


def fuse_for_inference(module: nn.Module, subpixel: bool = True) -> nn.Module:
    """A copy of `module` for eval-mode inference with every block of modules.util replaced by its
    fused form (`subpixel`: upsampling blocks as sub-pixel convolutions, else upsampling and a
    folded convolution). The copy shares all other parameters and buffers with `module` (no weight
    copy); `module` itself is left untouched. Blocks of other shapes stay as they are."""
    from modules.util import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d

    if isinstance(module, UpBlock2d):
        conv = module.conv
        if subpixel and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.groups == 1 \
                and conv.stride == (1, 1) and conv.dilation == (1, 1):
            return FusedUpBlock(module)
        return FusedConvBlock(module, pool=False, upsample=True)
    if isinstance(module, DownBlock2d):
        return FusedConvBlock(module, pool=True)
    if isinstance(module, SameBlock2d):
        return FusedConvBlock(module, pool=False)
    if isinstance(module, ResBlock2d):
        return FusedResBlock(module)
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: (fuse_for_inference(child, subpixel) if child is not None else None)
                      for name, child in module._modules.items()}
    return clone


# ----------------------------------------------------------------------------------- engine
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
        fuse: run the per-frame networks as `fuse_for_inference` copies (BatchNorm folded into
            the convolutions, upsampling convolutions split by output phase); same weights, and in
            fp32 the same results up to rounding (~1e-7).
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
        self.generator = generator.to(self.device).eval()
        self.kp_detector = kp_detector.to(self.device).eval()
        if self.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.kp_detector.to(memory_format=torch.channels_last)
        # the networks that run per driving frame: fused copies (shared weights) or the modules
        fast_generator = fuse_for_inference(self.generator) if fuse else self.generator
        fast_kp_detector = fuse_for_inference(self.kp_detector) if fuse else self.kp_detector
        if self.channels_last:
            fast_generator.to(memory_format=torch.channels_last)
            fast_kp_detector.to(memory_format=torch.channels_last)
        self._kp_single = fast_kp_detector  # source and initial frame: one image, never compiled
        self._kp_fn = fast_kp_detector
        self._dense_motion_fn = fast_generator.dense_motion_network
        self._decode_fn = fast_generator.decode
        self.compiled = bool(compile)
        if compile:
            # freezing lets inductor treat the weights as constants (prepacked for oneDNN on CPU);
            # it is a process-wide inductor setting
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            self._kp_fn = torch.compile(fast_kp_detector, dynamic=False)
            if self._dense_motion_fn is not None:
                self._dense_motion_fn = torch.compile(self._dense_motion_fn, dynamic=False)
            self._decode_fn = torch.compile(fast_generator.decode, dynamic=False)
        self.source: Optional[torch.Tensor] = None  # (1, 3, H, W)
        self.kp_source: Optional[KP] = None  # (1, K, 2), (1, K, 2, 2)
        self.encoded: Optional[torch.Tensor] = None  # (1, C', H/2^d, W/2^d)
        self.config = None

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, config_path: str, checkpoint_path: str, device=None, precision: str = 'auto',
                        batch_size: int = 4, **kwargs) -> 'AnimationEngine':
        """Networks built from a YAML config, weights from a checkpoint (weights_only=True)."""
        generator, kp_detector, config = load_networks(config_path, checkpoint_path)
        engine = cls(generator, kp_detector, device=device, precision=precision, batch_size=batch_size, **kwargs)
        engine.config = config
        return engine

    @property
    def frame_shape(self) -> Optional[tuple]:
        """(H, W) of the config's frames, when built from a config."""
        return tuple(self.config.dataset_params.frame_shape[:2]) if self.config is not None else None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ----------------------------------------------------------------------------- source
    def to_tensor(self, image: Frame) -> torch.Tensor:
        """One image -> float32 (1, 3, H, W) on the device."""
        return _stack_frames([image], self.device)

    @torch.inference_mode()
    def set_source(self, image: Frame) -> None:
        """Compute the source's keypoints and encoder features once.

        image: (H, W, C) numpy (uint8, uint16 or float in [0, 1]; gray and RGBA accepted) or a
        (3, H, W) float tensor. The output frames have the source's size."""
        source = self._layout(self.to_tensor(image))
        with autocast(self.device, self.precision):
            self.kp_source = self._kp_single(source)
            self.encoded = self.generator.encode(source)
        self.source = source

    @torch.inference_mode()
    def keypoints(self, image: Frame) -> KP:
        """Keypoints of one image: {'value': (1, K, 2), 'jacobian': (1, K, 2, 2)}."""
        with autocast(self.device, self.precision):
            return self._kp_single(self._layout(self.to_tensor(image)))

    # ---------------------------------------------------------------------------- driving
    def _batches(self, frames: Iterable[Frame]) -> Iterator[tuple]:
        """(frames (B, 3, H, W) on the device, number of real frames). Compiled networks get a
        last batch padded to full size (repeating its last frame): one shape, no recompilation."""
        chunk = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == self.batch_size:
                yield _stack_frames(chunk, self.device), len(chunk)
                chunk = []
        if chunk:
            count = len(chunk)
            if self.compiled:
                chunk += chunk[-1:] * (self.batch_size - count)
            yield _stack_frames(chunk, self.device), count

    def _generate(self, kp_driving: KP, batch: int, extras: bool) -> Dict[str, torch.Tensor]:
        """Dense motion + warp of the cached encoding + decoder, for `batch` driving poses."""
        source = self.source.expand(batch, -1, -1, -1)  # (B, 3, H, W), no copy
        kp_source = _expand(self.kp_source, batch)
        out = self.encoded.expand(batch, -1, -1, -1)  # (B, C', h, w), no copy
        result = {}
        if self._dense_motion_fn is not None:
            motion = self._dense_motion_fn(source_image=source, kp_driving=kp_driving, kp_source=kp_source)
            deformation = motion['deformation']  # (B, h', w', 2)
            out = self.generator.deform_input(out, deformation)
            occlusion = motion.get('occlusion_map')  # (B, 1, h', w')
            if occlusion is not None:
                if out.shape[2:] != occlusion.shape[2:]:
                    occlusion = F.interpolate(occlusion, size=out.shape[2:], mode='bilinear', align_corners=False)
                out = out * occlusion.to(out.dtype)  # Eq. (8)
            if extras:
                result['deformed'] = self.generator.deform_input(source, deformation)
                result['mask'] = motion['mask']
                if 'occlusion_map' in motion:
                    result['occlusion_map'] = motion['occlusion_map']
        result['prediction'] = self._decode_fn(self._layout(out))  # (B, 3, H, W)
        return result

    @torch.inference_mode()
    def stream(self, driving_frames: Iterable[Frame], relative: bool = True, adapt_scale: bool = False,
               relative_jacobian: bool = True, initial_frame: Optional[Frame] = None,
               extras: bool = False) -> Iterator[Dict[str, object]]:
        """Per batch of driving frames: {'prediction': float32 (B, 3, H, W) on the device,
        'kp_driving', 'kp_norm', 'driving': (B, 3, H', W')} (+ 'deformed', 'mask', 'occlusion_map'
        with `extras`).

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
        for driving, count in self._batches(driving_frames):
            batch = driving.shape[0]
            driving = self._layout(driving)
            with autocast(self.device, self.precision):
                kp_driving = self._kp_fn(driving)
                if kp_initial is None:
                    kp_initial = _take(kp_driving, slice(0, 1))  # computed once, with the first batch
                kp_norm = normalize_kp(kp_source=self.kp_source, kp_driving=kp_driving,
                                       kp_driving_initial=kp_initial, adapt_movement_scale=adapt_scale,
                                       use_relative_movement=relative,
                                       use_relative_jacobian=relative and relative_jacobian)
                kp_norm = {k: v.expand(batch, *v.shape[1:]) for k, v in kp_norm.items()}
                result = self._generate(kp_norm, batch, extras)
            result['prediction'] = result['prediction'].float()
            result.update(kp_driving=kp_driving, kp_norm=kp_norm, driving=driving)
            if count < batch:  # drop the padding
                result = {k: ({kk: vv[:count] for kk, vv in v.items()} if isinstance(v, dict) else v[:count])
                          for k, v in result.items()}
            yield result

    def animate(self, driving_frames: Iterable[Frame], relative: bool = True, adapt_scale: bool = False,
                relative_jacobian: bool = True, initial_frame: Optional[Frame] = None,
                output: str = 'uint8') -> Iterator:
        """Animate the source by `driving_frames` (an iterable, consumed lazily).

        output: 'uint8' -> (H, W, 3) uint8 frames; 'float' -> (H, W, 3) float32 frames in [0, 1];
        'batch' -> float32 (B, 3, H, W) tensors on the device, one per batch."""
        if output not in OUTPUTS:
            raise ValueError('output: %r is not one of %s' % (output, ', '.join(OUTPUTS)))
        for result in self.stream(driving_frames, relative=relative, adapt_scale=adapt_scale,
                                  relative_jacobian=relative_jacobian, initial_frame=initial_frame):
            prediction = result['prediction']
            if output == 'batch':
                yield prediction
            elif output == 'uint8':
                yield from to_uint8_frames(prediction)
            else:
                yield from prediction.permute(0, 2, 3, 1).cpu().numpy()


def to_uint8_frames(batch: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded on the device."""
    return batch.detach().float().clamp(0, 1).mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_networks(config_path: str, checkpoint_path: Optional[str]):
    """(generator, kp_detector, config) from a YAML config and a checkpoint (eval mode, CPU).

    Errors: config.ConfigError (names the file/key), checkpoint.CheckpointError (names the file
    and the first tensor that does not fit)."""
    from config import load_config
    from logger import Logger
    from modules.model import build_networks

    config = load_config(config_path)
    generator, kp_detector, _ = build_networks(config.to_dict()['model_params'])
    if checkpoint_path is not None:
        Logger.load_cpk(checkpoint_path, generator=generator, kp_detector=kp_detector)
    return generator.eval(), kp_detector.eval(), config


@torch.inference_mode()
def per_frame_animation(source_image: np.ndarray, driving_video: Sequence[np.ndarray], generator: torch.nn.Module,
                        kp_detector: torch.nn.Module, relative: bool = True, adapt_movement_scale: bool = False,
                        device: Union[str, torch.device] = 'cpu') -> list:
    """The original's per-frame loop, kept as the reference that tests and benchmarks compare the
    engine against: every frame re-detects the source keypoints and re-encodes the source (as
    the original animate.py/reconstruction.py did), runs the full generator, and keeps every frame
    in a list as float64 (as the original demo's make_animation + skimage did). fp32 only.

    source_image (H, W, 3) and driving_video frames (H, W, 3) float in [0, 1] -> list of float64
    (H, W, 3) frames."""
    device = torch.device(device)

    def tensor(image):  # (H, W, 3) -> (1, 3, H, W)
        return torch.tensor(np.asarray(image, dtype=np.float32)[np.newaxis]).permute(0, 3, 1, 2).to(device)

    source = tensor(source_image)
    kp_driving_initial = kp_detector(tensor(driving_video[0]))
    predictions = []
    for frame in driving_video:
        kp_source = kp_detector(source)
        kp_driving = kp_detector(tensor(frame))
        kp_norm = normalize_kp(kp_source=kp_source, kp_driving=kp_driving, kp_driving_initial=kp_driving_initial,
                               use_relative_movement=relative, use_relative_jacobian=relative,
                               adapt_movement_scale=adapt_movement_scale)
        out = generator(source, kp_source=kp_source, kp_driving=kp_norm)
        predictions.append(np.transpose(out['prediction'].cpu().numpy(), [0, 2, 3, 1])[0].astype(np.float64))
    return predictions
