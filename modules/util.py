"""Building blocks shared by the keypoint detector, dense motion network, generator and losses.

Coordinates follow the paper's convention: a frame is the square [-1, 1] x [-1, 1], stored as
(x, y) in the last dimension, which is also what `F.grid_sample` expects.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.keypoints import inverse_2x2, matmul_2x2  # noqa: F401  (the names the original's modules use)
from sync_batchnorm import SynchronizedBatchNorm2d as BatchNorm2d


def make_coordinate_grid(spatial_size: Sequence[int], type=None) -> torch.Tensor:
    """A (H, W, 2) grid of (x, y) coordinates spanning [-1, 1] along each axis.

    `type` may be a dtype, a tensor type string (as the original passed `x.type()`) or None.
    """
    h, w = int(spatial_size[0]), int(spatial_size[1])
    # computed in float32 (float64 if asked) and cast last, so bf16 never holds the integer ramp
    base = torch.float64 if type in (torch.float64, 'torch.DoubleTensor') else torch.float32
    x = torch.arange(w, dtype=base)
    y = torch.arange(h, dtype=base)
    x = 2 * (x / (w - 1)) - 1
    y = 2 * (y / (h - 1)) - 1
    if isinstance(type, str):
        x, y = x.type(type), y.type(type)
    elif isinstance(type, torch.dtype):
        x, y = x.to(type), y.to(type)
    xx = x.view(1, w).expand(h, w)
    yy = y.view(h, 1).expand(h, w)
    return torch.stack([xx, yy], dim=2)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (torch >= 2.4 API, older per-device fallback)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == 'cpu' else torch.is_autocast_enabled()


def grid_sample_fp32(inp: torch.Tensor, grid: torch.Tensor, padding_mode: str = 'zeros') -> torch.Tensor:
    """Bilinear `F.grid_sample` (align_corners=False, as the original) with the input and the
    sampling grid in float32 whenever either is in a 16-bit type or autocast is on.

    Sampling coordinates want float32: bf16 keeps 8 bits of mantissa, so a grid coordinate near 1
    is off by up to 2^-8, a pixel at 256x256. CUDA autocast runs grid_sample in its inputs' widest
    type (bf16 when both are), CPU autocast in float32; this makes both devices sample in float32.
    Under autocast the result stays float32 (the next convolution casts it); outside autocast it
    goes back to the input's type. Float32 (or float64) inputs without autocast are passed
    straight through: the same numbers and the same exported graph."""
    low = (torch.float16, torch.bfloat16)
    autocast_on = autocast_enabled(inp.device.type)
    if not autocast_on and inp.dtype not in low and grid.dtype not in low:
        return F.grid_sample(inp, grid.to(inp.dtype), padding_mode=padding_mode, align_corners=False)
    wide = torch.float64 if inp.dtype == torch.float64 else torch.float32
    if autocast_on:
        with torch.autocast(inp.device.type, enabled=False):
            return F.grid_sample(inp.to(wide), grid.to(wide), padding_mode=padding_mode, align_corners=False)
    return F.grid_sample(inp.to(wide), grid.to(wide), padding_mode=padding_mode, align_corners=False).to(inp.dtype)


_GRIDS: Dict[tuple, torch.Tensor] = {}


def coordinate_grid(spatial_size: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`make_coordinate_grid` in `dtype` on `device`, made once per (size, dtype, device) and kept
    (callers never write to it): a grid made afresh on a GPU was a copy from the host, which waits
    for all queued GPU work, several times per training step."""
    key = (int(spatial_size[0]), int(spatial_size[1]), dtype, torch.device(device))
    grid = _GRIDS.get(key)
    if grid is None:
        with torch.inference_mode(False):  # a plain tensor: autograd may save it, in or out of inference mode
            grid = make_coordinate_grid(spatial_size, dtype).to(device)
        _GRIDS[key] = grid
    return grid


def coordinate_grid_like(x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """`make_coordinate_grid` on the device and in the dtype of `x` (cached, see coordinate_grid)."""
    return coordinate_grid(spatial_size, x.dtype, x.device)


def kp2gaussian(kp: Dict[str, torch.Tensor], spatial_size: Sequence[int], kp_variance: float) -> torch.Tensor:
    """Render keypoints as unnormalised Gaussians: (..., K, 2) -> (..., K, H, W)."""
    mean = kp['value']
    grid = coordinate_grid_like(mean, spatial_size)  # (H, W, 2)
    lead = mean.dim() - 1
    grid = grid.view((1,) * lead + grid.shape)
    mean = mean.view(mean.shape[:lead] + (1, 1, 2))
    return torch.exp(-0.5 * ((grid - mean) ** 2).sum(-1) / kp_variance)


class ResBlock2d(nn.Module):
    """Pre-activation residual block that keeps the resolution."""

    def __init__(self, in_features, kernel_size, padding):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = BatchNorm2d(in_features, affine=True)
        self.norm2 = BatchNorm2d(in_features, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest 2x upsampling, then conv-BN-ReLU."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        out = F.interpolate(x, scale_factor=2, mode='nearest')
        return F.relu(self.norm(self.conv(out)))


class DownBlock2d(nn.Module):
    """conv-BN-ReLU, then 2x average pooling."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """conv-BN-ReLU at the same resolution."""

    def __init__(self, in_features, out_features, groups=1, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


def layer_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channels at depth `level` of every encoder/decoder here: doubling per level, capped."""
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    """Hourglass encoder; returns the input and every block's output (the skip connections)."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else layer_width(block_expansion, max_features, i)
            blocks.append(DownBlock2d(cin, layer_width(block_expansion, max_features, i + 1),
                                      kernel_size=3, padding=1))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x) -> List[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: upsample and concatenate the matching skip at every level."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2  # every level but the deepest also gets a skip
            cin = mult * layer_width(block_expansion, max_features, i + 1)
            blocks.append(UpBlock2d(cin, layer_width(block_expansion, max_features, i), kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        skips = list(x)  # never pop from the caller's list
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net-like hourglass; output has `out_filters = block_expansion + in_features` channels."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur before nearest downsampling by `scale`, to avoid aliasing."""

    def __init__(self, channels, scale):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.ka = kernel_size // 2
        self.kb = self.ka - 1 if kernel_size % 2 == 0 else self.ka

        # computed on the CPU even while networks are built on the meta device (inference loads
        # weights into such a skeleton): these ops on meta tensors first import torch's Python
        # decompositions, over a second of start-up; the buffer then goes where the others are
        coords = torch.arange(kernel_size, dtype=torch.float32, device='cpu')
        mean = (kernel_size - 1) / 2
        g = torch.exp(-(coords - mean) ** 2 / (2 * sigma ** 2)) if sigma > 0 else torch.ones(kernel_size, device='cpu')
        kernel = g.view(-1, 1) * g.view(1, -1)
        kernel = kernel / kernel.sum()
        kernel = kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1)
        self.register_buffer('weight', kernel.to(torch.empty(0).device))  # the default (or context) device
        self.groups = channels
        self.scale = scale

    def forward(self, x):
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        out = F.conv2d(out, weight=self.weight.to(out.dtype), groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale), mode='nearest')


def detach_kp(kp: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in kp.items()}
