"""The original's per-frame animation loop: the baseline benchmarks and tests compare against.

Every frame re-detects the source keypoints and re-encodes the source (as the original
animate.py / reconstruction.py did), runs the full generator, and keeps every frame in a list as
float64 (as the original demo's make_animation + skimage did). fp32 only. It uses the project's
modules and `normalize_kp`, so it checks the engine's batching and caching, not the keypoint
maths: tests/test_keypoints.py checks those against values worked out by hand.
"""
import os
import sys
from typing import Sequence, Union

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules.keypoints import normalize_kp  # noqa: E402


@torch.inference_mode()
def per_frame_animation(source_image: np.ndarray, driving_video: Sequence[np.ndarray], generator: torch.nn.Module,
                        kp_detector: torch.nn.Module, relative: bool = True, adapt_movement_scale: bool = False,
                        device: Union[str, torch.device] = 'cpu') -> list:
    """source_image (H, W, 3) and driving_video frames (H, W, 3) float in [0, 1] -> list of float64
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
