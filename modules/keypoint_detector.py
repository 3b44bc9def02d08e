"""Keypoint detector (Sec. 3.1 of the paper).

An hourglass predicts one heatmap per keypoint; a spatial softmax turns each into a probability
map whose expected coordinate is the keypoint (soft-argmax). With `estimate_jacobian`, four more
maps per keypoint (or one shared set with `single_jacobian_map`) are averaged under the same
heatmap to give the 2x2 Jacobian of the local affine transform, d T / d z at the keypoint.
"""
import torch
import torch.nn.functional as F
from torch import nn

from modules.util import AntiAliasInterpolation2d, Hourglass, coordinate_grid_like


class KPDetector(nn.Module):
    """frame (B, C, H, W) in [0, 1] -> {'value': (B, K, 2), 'jacobian': (B, K, 2, 2)}."""

    def __init__(self, block_expansion, num_kp, num_channels, max_features, num_blocks, temperature,
                 estimate_jacobian=False, scale_factor=1, single_jacobian_map=False, pad=0):
        super().__init__()
        self.predictor = Hourglass(block_expansion, in_features=num_channels,
                                   max_features=max_features, num_blocks=num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=(7, 7), padding=pad)

        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps,
                                      kernel_size=(7, 7), padding=pad)
            # start from the identity: zero weights, bias (1, 0, 0, 1) per map
            self.jacobian.weight.data.zero_()
            self.jacobian.bias.data.copy_(torch.tensor([1, 0, 0, 1] * self.num_jacobian_maps, dtype=torch.float))
        else:
            self.jacobian = None

        self.num_kp = num_kp
        self.temperature = temperature
        self.scale_factor = scale_factor
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    @staticmethod
    def gaussian2kp(heatmap: torch.Tensor) -> dict:
        """Soft-argmax: expected (x, y) under each normalised heatmap, (B, K, H, W) -> (B, K, 2)."""
        grid = coordinate_grid_like(heatmap, heatmap.shape[2:])  # (H, W, 2)
        value = (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))
        return {'value': value}

    def forward(self, x):
        if self.scale_factor != 1:
            x = self.down(x)
        feature_map = self.predictor(x)  # (B, out_filters, h, w)
        prediction = self.kp(feature_map)  # (B, K, h', w'); h' = h - 6 with the default pad=0
        b, k, h, w = prediction.shape
        # softmax in float32 even under autocast: the keypoints are coordinates
        heatmap = F.softmax(prediction.float().view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        out = self.gaussian2kp(heatmap)

        if self.jacobian is not None:
            jacobian_map = self.jacobian(feature_map).float().reshape(b, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(dim=-1)
            out['jacobian'] = jacobian.view(b, k, 2, 2)
        return out
