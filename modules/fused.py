"""Eval-mode fast forms of the building blocks of modules.util, for the inference engines.

The same functions as the blocks in eval mode, rewritten with fewer operations. BatchNorm with
running statistics is an affine map, so when it follows a convolution it folds into the weights;
nearest 2x upsampling followed by a 3x3 convolution is four 2x2 convolutions of the low-resolution
input, one per output pixel phase (2.25x fewer multiply-adds). In fp32 the results differ from the
modules' only by rounding (~1e-6). `fuse_for_inference(module)` returns a copy of a network with
every such block replaced, sharing all other parameters with the original.
"""
import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from modules.util import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


def _folded(conv: nn.Conv2d, norm: nn.Module, memory_format=torch.contiguous_format) -> tuple:
    """(weight, bias) of conv followed by eval-mode BatchNorm: new tensors without autograd
    history, the weight written straight into `memory_format`."""
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (Co,)
        weight = torch.empty_like(conv.weight, memory_format=memory_format)
        torch.mul(conv.weight, scale.view(-1, 1, 1, 1), out=weight)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        return weight, (bias - norm.running_mean) * scale + norm.bias


def _conv_with(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A Conv2d shaped like `conv` holding the given weight and bias: built on the meta device and
    given the tensors, so no random initialisation is computed only to be overwritten."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, device='meta')
    out.weight = nn.Parameter(weight, requires_grad=False)
    out.bias = nn.Parameter(bias, requires_grad=False)
    return out


class FusedConvBlock(nn.Module):
    """SameBlock2d / DownBlock2d / UpBlock2d in eval mode: (nearest 2x upsampling), conv with
    BatchNorm folded in, ReLU, (avg pool)."""

    def __init__(self, block: nn.Module, pool: bool, upsample: bool = False, memory_format=torch.contiguous_format):
        super().__init__()
        self.conv = _conv_with(block.conv, *_folded(block.conv, block.norm, memory_format))
        self.pool = block.pool if pool else None
        self.upsample = upsample

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        out = F.relu(self.conv(x))
        return self.pool(out) if self.pool is not None else out


# The 3 kernel taps along one axis that land on each of the 2 input positions an output pixel of
# phase 0 (input i-1, i) or phase 1 (input i, i+1) sees after nearest 2x upsampling.
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


class FusedUpBlock(nn.Module):
    """UpBlock2d in eval mode (nearest 2x, 3x3 conv, BatchNorm, ReLU) as sub-pixel 2x2 convs.

    Output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0) or {i, i+1} (a=1), and likewise
    for columns, with the 3x3 taps that land on the same input pixel summed: one 2x2 convolution
    with 4*Co outputs over the zero-padded input gives all four phases."""

    def __init__(self, block: nn.Module):
        super().__init__()
        weight, bias = _folded(block.conv, block.norm, torch.channels_last)  # (Co, Ci, 3, 3), (Co,)
        co, ci = weight.shape[:2]
        with torch.no_grad():
            taps = weight.permute(2, 3, 0, 1)  # (3, 3, Co, Ci), each tap a (Co, Ci) block with unit stride in Ci
            phases = weight.new_empty(2, 2, co, 2, 2, ci)  # (a, b, Co, u, v, Ci): a channels-last (4Co, Ci, 2, 2)
            for (a, rows), (b, cols) in itertools.product(enumerate(_PHASE_TAPS), repeat=2):
                for (u, rs), (v, cs) in itertools.product(enumerate(rows), enumerate(cols)):
                    target = phases[a, b, :, u, v, :]
                    terms = [taps[r, c] for r in rs for c in cs]
                    target.copy_(terms[0])
                    for term in terms[1:]:
                        target.add_(term)
        self.out_channels = co
        self.weight = nn.Parameter(phases.view(4 * co, 2, 2, ci).permute(0, 3, 1, 2), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().repeat(4), requires_grad=False)

    def forward(self, x):
        b, _, h, w = x.shape
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)  # (B, 4*Co, h+1, w+1)
        y = y.view(b, 2, 2, self.out_channels, h + 1, w + 1)
        if torch.jit.is_tracing() or getattr(torch.compiler, 'is_exporting', bool)():  # (torch >= 2.4)
            # ONNX export: the phases interleaved by stack + reshape (Transpose/Reshape in the graph)
            # rather than by the slice writes below, which export as dozens of ScatterND nodes
            phases = torch.stack([torch.stack([y[:, a, c, :, a:a + h, c:c + w] for c in (0, 1)], -1)
                                  for a in (0, 1)], 3)  # (B, Co, h, 2, w, 2)
            return F.relu(phases.reshape(b, self.out_channels, 2 * h, 2 * w))
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        out = torch.empty(b, self.out_channels, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=layout)
        for a in (0, 1):  # phase (a, c) is the window of y starting at (a, c)
            for c in (0, 1):
                out[:, :, a::2, c::2] = y[:, a, c, :, a:a + h, c:c + w]
        return F.relu_(out)


class FusedResBlock(nn.Module):
    """ResBlock2d in eval mode: the BatchNorm after conv1 folded into it."""

    def __init__(self, block: nn.Module, memory_format=torch.contiguous_format):
        super().__init__()
        self.norm1 = shallow_clone(block.norm1)  # clones: the copy may recast its own weights
        self.conv1 = _conv_with(block.conv1, *_folded(block.conv1, block.norm2, memory_format))
        self.conv2 = shallow_clone(block.conv2)

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(F.relu(self.norm1(x)))))
        return out + x


def fuse_for_inference(module: nn.Module, subpixel: bool = True, memory_format=torch.contiguous_format) -> nn.Module:
    """A copy of `module` for eval-mode inference with every block of modules.util replaced by its
    fused form (`subpixel`: upsampling blocks as sub-pixel convolutions, else upsampling and a
    folded convolution), their new weights written in `memory_format` (sub-pixel ones always
    channels-last). The copy shares all other parameters and buffers with `module` (no weight
    copy); `module` itself is left untouched. Blocks of other shapes stay as they are."""
    if isinstance(module, UpBlock2d):
        conv = module.conv
        if subpixel and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.groups == 1 \
                and conv.stride == (1, 1) and conv.dilation == (1, 1):
            return FusedUpBlock(module)
        return FusedConvBlock(module, pool=False, upsample=True, memory_format=memory_format)
    if isinstance(module, DownBlock2d):
        return FusedConvBlock(module, pool=True, memory_format=memory_format)
    if isinstance(module, SameBlock2d):
        return FusedConvBlock(module, pool=False, memory_format=memory_format)
    if isinstance(module, ResBlock2d):
        return FusedResBlock(module, memory_format)
    return shallow_clone(module, lambda child: fuse_for_inference(child, subpixel, memory_format))


def shallow_clone(module: nn.Module, child_fn=None) -> nn.Module:
    """A copy of `module` sharing its parameters and buffers, whose children are `child_fn(child)`
    (default: the same children): replacing a child of the copy leaves `module` untouched."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: (child_fn(child) if child_fn is not None and child is not None else child)
                      for name, child in module._modules.items()}
    return clone


def cast_conv_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold the convolution weights and biases of a network's own copy in `dtype`, in place, for
    frozen weights. Under autocast to that dtype every convolution casts them anyway, at every
    call: cast once, the results are the same. Only for copies (fuse_for_inference's, which give
    every module its own parameter dict, or deep copies): the original keeps its weights."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, FusedUpBlock)):
            for name in ('weight', 'bias'):
                p = getattr(m, name, None)
                if p is not None and p.is_floating_point():
                    setattr(m, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
    return module
