"""Multi-scale patch discriminator for the optional GAN loss (LSGAN, with feature matching).

With `use_kp`, the keypoint Gaussians of the driving frame are concatenated to the image.
"""
import torch
import torch.nn.functional as F
from torch import nn

from modules.util import kp2gaussian, layer_width


class DownBlock2d(nn.Module):
    """conv (optionally spectral-normalised) - InstanceNorm - LeakyReLU(0.2) - avg pool."""

    def __init__(self, in_features, out_features, norm=False, kernel_size=4, pool=False, sn=False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x):
        if self.norm is not None:
            # The InstanceNorm after this unpadded convolution removes any per-channel constant,
            # and conv(x - m) differs from conv(x) by exactly such a constant: centring the input
            # gives the same result with far less float32 rounding when x is nearly flat (a
            # blurry generated frame gave a conv output of ~200 with a spatial spread of ~0.25).
            x = x - x.mean(dim=(2, 3), keepdim=True)
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        if self.pool:
            out = F.avg_pool2d(out, (2, 2))
        return out


class Discriminator(nn.Module):
    """image (B, C, H, W) -> (list of feature maps, prediction map (B, 1, h, w))."""

    def __init__(self, num_channels=3, block_expansion=64, num_blocks=4, max_features=512,
                 sn=False, use_kp=False, num_kp=10, kp_variance=0.01, estimate_jacobian=False):
        # estimate_jacobian is accepted (and unused) because configs pass every common_params key
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = num_channels + num_kp * use_kp if i == 0 else layer_width(block_expansion, max_features, i)
            blocks.append(DownBlock2d(cin, layer_width(block_expansion, max_features, i + 1),
                                      norm=(i != 0), kernel_size=4, pool=(i != num_blocks - 1), sn=sn))
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(self.down_blocks[-1].conv.out_channels, out_channels=1, kernel_size=1)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x, kp=None):
        out = x
        if self.use_kp:
            heatmap = kp2gaussian(kp, x.shape[2:], self.kp_variance)
            out = torch.cat([out, heatmap.to(out.dtype)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


def scale_key(scale) -> str:
    """ModuleDict keys cannot hold '.', so 0.5 is stored as '0-5' (the original's names)."""
    return str(scale).replace('.', '-')


class MultiScaleDiscriminator(nn.Module):
    """One discriminator per scale of an image pyramid {'prediction_<s>': image}."""

    def __init__(self, scales=(), num_channels=3, block_expansion=64, num_blocks=4, max_features=512,
                 sn=False, use_kp=False, num_kp=10, kp_variance=0.01, estimate_jacobian=False):
        super().__init__()
        self.scales = scales
        self.discs = nn.ModuleDict({
            scale_key(scale): Discriminator(num_channels=num_channels, block_expansion=block_expansion,
                                            num_blocks=num_blocks, max_features=max_features, sn=sn, use_kp=use_kp,
                                            num_kp=num_kp, kp_variance=kp_variance)
            for scale in scales})

    def forward(self, x, kp=None):
        out_dict = {}
        for key, disc in self.discs.items():
            scale = key.replace('-', '.')
            feature_maps, prediction_map = disc(x['prediction_' + scale], kp)
            out_dict['feature_maps_' + scale] = feature_maps
            out_dict['prediction_map_' + scale] = prediction_map
        return out_dict
