"""Occlusion-aware generator (Sec. 3.3 of the paper).

The source is encoded, its feature map is warped by the dense backward flow of the dense motion
network and multiplied by the occlusion map (Eq. 8), then decoded into the driving pose.
"""
import torch
import torch.nn.functional as F
from torch import nn

from modules.dense_motion import DenseMotionNetwork
from modules.util import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, grid_sample_fp32, layer_width


def deform_input(inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Backward-warp `inp` (B, C, H, W) by a flow (B, h, w, 2), resized to (H, W) when needed."""
    _, h_old, w_old, _ = deformation.shape
    _, _, h, w = inp.shape
    if (h_old, w_old) != (h, w):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode='bilinear',
                                    align_corners=False).permute(0, 2, 3, 1)
    return grid_sample_fp32(inp, deformation)


class OcclusionAwareGenerator(nn.Module):
    """source (B, C, H, W), kp_source, kp_driving -> {'prediction': (B, C, H, W), ...}."""

    def __init__(self, num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                 num_bottleneck_blocks, estimate_occlusion_map=False, dense_motion_params=None,
                 estimate_jacobian=False):
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                           estimate_occlusion_map=estimate_occlusion_map,
                                                           **dense_motion_params)
        else:
            self.dense_motion_network = None

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))
        self.down_blocks = nn.ModuleList([
            DownBlock2d(layer_width(block_expansion, max_features, i), layer_width(block_expansion, max_features, i + 1),
                        kernel_size=(3, 3), padding=(1, 1))
            for i in range(num_down_blocks)])
        self.up_blocks = nn.ModuleList([
            UpBlock2d(layer_width(block_expansion, max_features, num_down_blocks - i),
                      layer_width(block_expansion, max_features, num_down_blocks - i - 1),
                      kernel_size=(3, 3), padding=(1, 1))
            for i in range(num_down_blocks)])

        self.bottleneck = nn.Sequential()
        in_features = layer_width(block_expansion, max_features, num_down_blocks)
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module('r' + str(i), ResBlock2d(in_features, kernel_size=(3, 3), padding=(1, 1)))

        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels

    # kept as a method for code that calls generator.deform_input
    deform_input = staticmethod(deform_input)

    def encode(self, source_image):
        """Source features before warping, (B, C', H/2^d, W/2^d); cacheable across driving frames."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    def decode(self, out):
        """Warped features -> image in [0, 1]."""
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def warp(self, source_image, encoded, kp_driving, kp_source, extras: bool = True):
        """Eq. (8): the encoded source features warped by the dense motion and masked by the
        occlusion map; returns (features, output dict). The inference engines call this too, with
        the source encoded once; `extras=False` skips the outputs only losses and pictures use
        (deformed source image, sparse motions, deformation)."""
        output_dict = {}
        out = encoded
        if self.dense_motion_network is not None:
            dense_motion = self.dense_motion_network(source_image=source_image, kp_driving=kp_driving,
                                                     kp_source=kp_source)
            deformation = dense_motion['deformation']  # (B, h, w, 2)
            out = deform_input(out, deformation)
            occlusion_map = dense_motion.get('occlusion_map')  # (B, 1, h, w)
            if occlusion_map is not None:
                if out.shape[2:] != occlusion_map.shape[2:]:
                    occlusion_map = F.interpolate(occlusion_map, size=out.shape[2:], mode='bilinear',
                                                  align_corners=False)
                out = out * occlusion_map.to(out.dtype)
            if extras:
                output_dict['mask'] = dense_motion['mask']
                output_dict['sparse_deformed'] = dense_motion['sparse_deformed']
                output_dict['deformation'] = deformation
                if 'occlusion_map' in dense_motion:
                    output_dict['occlusion_map'] = dense_motion['occlusion_map']
                output_dict['deformed'] = deform_input(source_image, deformation)
        return out, output_dict

    def forward(self, source_image, kp_driving, kp_source):
        out, output_dict = self.warp(source_image, self.encode(source_image), kp_driving, kp_source)
        output_dict['prediction'] = self.decode(out)
        return output_dict
