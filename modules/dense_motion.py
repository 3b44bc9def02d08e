"""Dense motion network (Sec. 3.2 of the paper).

From K keypoints with local affine transforms it builds K+1 candidate backward flows (Eq. 4: the
first-order Taylor expansion of the source<-driving mapping around each keypoint, plus the
identity for the background), warps the source by each, and lets an hourglass choose per pixel
with a softmax mask (Eq. 6). It also predicts the occlusion map (Eq. 7).
"""
import torch
import torch.nn.functional as F
from torch import nn

from modules.util import (AntiAliasInterpolation2d, Hourglass, coordinate_grid_like, grid_sample_fp32, inverse_2x2,
                          kp2gaussian, matmul_2x2)


class DenseMotionNetwork(nn.Module):
    """(source (B, C, H, W), kp_driving, kp_source) -> deformation (B, h, w, 2), mask, occlusion."""

    def __init__(self, block_expansion, num_blocks, max_features, num_kp, num_channels,
                 estimate_occlusion_map=False, scale_factor=1, kp_variance=0.01):
        super().__init__()
        self.hourglass = Hourglass(block_expansion=block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3))
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3))
        else:
            self.occlusion = None

        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def create_heatmap_representations(self, source_image, kp_driving, kp_source):
        """Difference of keypoint Gaussians (driving - source), a zero map first: (B, K+1, 1, H, W)."""
        spatial_size = source_image.shape[2:]
        heatmap = (kp2gaussian(kp_driving, spatial_size, self.kp_variance)
                   - kp2gaussian(kp_source, spatial_size, self.kp_variance))
        zeros = heatmap.new_zeros(heatmap.shape[0], 1, *spatial_size)
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def create_sparse_motions(self, source_image, kp_driving, kp_source):
        """Eq. (4): T_{S<-D}(z) ~ p_k^S + J_k (z - p_k^D), J_k = J_k^S (J_k^D)^-1; (B, K+1, H, W, 2)."""
        bs, _, h, w = source_image.shape
        kp_d, kp_s = kp_driving['value'].float(), kp_source['value'].float()
        identity_grid = coordinate_grid_like(kp_d, (h, w)).view(1, 1, h, w, 2)
        coordinate_grid = identity_grid - kp_d.view(bs, self.num_kp, 1, 1, 2)  # z - p_k^D
        if 'jacobian' in kp_driving:
            jacobian = matmul_2x2(kp_source['jacobian'].float(), inverse_2x2(kp_driving['jacobian'].float()))
            # (B, K, 2, 2) applied to every pixel without materialising (B, K, H, W, 2, 2)
            jacobian = jacobian.view(bs, self.num_kp, 1, 1, 2, 2)
            coordinate_grid = (jacobian * coordinate_grid.unsqueeze(-2)).sum(dim=-1)
        driving_to_source = coordinate_grid + kp_s.view(bs, self.num_kp, 1, 1, 2)
        identity_grid = identity_grid.expand(bs, 1, h, w, 2)
        return torch.cat([identity_grid, driving_to_source], dim=1)

    def create_deformed_source_image(self, source_image, sparse_motions):
        """Warp the source by each of the K+1 flows: (B, K+1, C, H, W)."""
        bs, _, h, w = source_image.shape
        k1 = self.num_kp + 1
        source_repeat = source_image.unsqueeze(1).expand(bs, k1, -1, h, w).reshape(bs * k1, -1, h, w)
        grid = sparse_motions.reshape(bs * k1, h, w, 2)  # float32: coordinates keep their precision
        deformed = grid_sample_fp32(source_repeat, grid)
        return deformed.view(bs, k1, -1, h, w)

    def forward(self, source_image, kp_driving, kp_source):
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        bs, _, h, w = source_image.shape

        out_dict = {}
        heatmap_representation = self.create_heatmap_representations(source_image, kp_driving, kp_source)
        sparse_motion = self.create_sparse_motions(source_image, kp_driving, kp_source)
        deformed_source = self.create_deformed_source_image(source_image, sparse_motion)
        out_dict['sparse_deformed'] = deformed_source

        inp = torch.cat([heatmap_representation.to(deformed_source.dtype), deformed_source], dim=2)
        prediction = self.hourglass(inp.view(bs, -1, h, w))

        mask = F.softmax(self.mask(prediction).float(), dim=1)  # (B, K+1, h, w), Eq. (6)
        out_dict['mask'] = mask
        # sum_k M_k * T_k over the K+1 candidate flows, kept in float32
        deformation = (mask.unsqueeze(-1) * sparse_motion).sum(dim=1)  # (B, h, w, 2)
        out_dict['deformation'] = deformation

        if self.occlusion is not None:
            out_dict['occlusion_map'] = torch.sigmoid(self.occlusion(prediction).float())  # (B, 1, h, w)
        return out_dict
