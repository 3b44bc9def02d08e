"""Animation: keypoint normalisation (relative motion) and `run.py --mode animate`.

`normalize_kp` transfers motion, not shape (Sec. 3.5 of the paper): the driving keypoints'
displacement from the initial driving frame is added to the source keypoints, and the Jacobians
are composed relatively, J = J_D J_D1^-1 J_S, so a source whose object is shaped or placed
differently from the driving one keeps its own geometry.
"""
from typing import Dict

import numpy as np
import torch

from modules.util import inverse_2x2, matmul_2x2


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def movement_scale(kp_source: Dict[str, torch.Tensor], kp_driving_initial: Dict[str, torch.Tensor]) -> float:
    """sqrt(area(source hull) / area(initial driving hull)), from the first item of the batch
    as the original (in inference the batch holds a single source)."""
    source_area = convex_hull_area(kp_source['value'][0].detach().float().cpu().numpy())
    driving_area = convex_hull_area(kp_driving_initial['value'][0].detach().float().cpu().numpy())
    if driving_area <= 0:
        return 1.0
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def normalize_kp(kp_source, kp_driving, kp_driving_initial, adapt_movement_scale=False,
                 use_relative_movement=False, use_relative_jacobian=False):
    """Driving keypoints expressed relative to the source; dicts of (B, K, 2) / (B, K, 2, 2)."""
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0

    kp_new = dict(kp_driving)
    if use_relative_movement:
        kp_value_diff = (kp_driving['value'] - kp_driving_initial['value']) * scale
        kp_new['value'] = kp_value_diff + kp_source['value']
        if use_relative_jacobian and 'jacobian' in kp_driving:
            jacobian_diff = matmul_2x2(kp_driving['jacobian'], inverse_2x2(kp_driving_initial['jacobian']))
            kp_new['jacobian'] = matmul_2x2(jacobian_diff, kp_source['jacobian'])
    return kp_new
