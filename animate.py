"""Animation: keypoint normalisation (relative motion) and `run.py --mode animate`.

`normalize_kp` transfers motion, not shape (Sec. 3.5 of the paper): the driving keypoints'
displacement from the initial driving frame is added to the source keypoints, and the Jacobians
are composed relatively, J = J_D J_D1^-1 J_S, so a source whose object is shaped or placed
differently from the driving one keeps its own geometry.
"""
import os
from typing import Dict, Iterator, Optional, Tuple

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


# ----------------------------------------------------------------------- run.py --mode animate
def _pair_videos(dataset, index: int) -> Tuple[str, str, float, np.ndarray, Iterator[np.ndarray]]:
    """(driving name, source name, fps, source frame (H, W, 3), driving frames iterator) of pair
    `index`. With a PairedDataset over a FramesDataset the driving video is streamed frame by
    frame and only the source's first frame is decoded; otherwise the item's arrays are used."""
    base = getattr(dataset, 'initial_dataset', None)
    pairs = getattr(dataset, 'pairs', None)
    if base is not None and pairs is not None and getattr(base, 'sources', None) is not None:
        from reconstruction import _fit
        driving_idx, source_idx = (int(v) for v in pairs[index])
        driving_name, source_name = base.videos[driving_idx], base.videos[source_idx]
        driving, source = base.sources[driving_name], base.sources[source_name]
        shape = base.frame_shape
        source_frame = _fit(source.read([0])[0], shape)
        frames = (_fit(f, shape) for f in driving)
        return driving_name, source_name, float(driving.info.fps or 25.0), source_frame, frames
    item = dataset[index]
    driving_video = np.asarray(item['driving_video'])  # (3, T, H, W)
    source_frame = np.ascontiguousarray(np.transpose(np.asarray(item['source_video'])[:, 0], (1, 2, 0)))
    frames = (np.ascontiguousarray(np.transpose(driving_video[:, t], (1, 2, 0)))
              for t in range(driving_video.shape[1]))
    return str(item['driving_name']), str(item['source_name']), 25.0, source_frame, frames


def visualization_frames(visualizer, result: dict, source: torch.Tensor, kp_source: dict) -> Iterator[np.ndarray]:
    """One uint8 image per frame of an engine batch: source + its keypoints, driving + its
    keypoints, deformed source, occlusion map, prediction + normalised keypoints, prediction."""
    def np_img(t):  # (B, C, H, W) -> (B, H, W, C) float
        return np.transpose(t.detach().float().cpu().numpy(), (0, 2, 3, 1))

    prediction = np_img(result['prediction'])
    driving = np_img(result['driving'])
    size = prediction.shape[1:3]
    deformed = np_img(result['deformed']) if 'deformed' in result else None
    occlusion = None
    if 'occlusion_map' in result:
        occ = torch.nn.functional.interpolate(result['occlusion_map'].float(), size=size)
        occlusion = np_img(occ.repeat(1, 3, 1, 1))
    src = np_img(source)
    kp_src = kp_source['value'].detach().float().cpu().numpy()
    kp_drv = result['kp_driving']['value'].detach().float().cpu().numpy()
    kp_norm = result['kp_norm']['value'].detach().float().cpu().numpy()
    if driving.shape[1:3] != tuple(size):
        driving = np_img(torch.nn.functional.interpolate(result['driving'].float(), size=size, mode='bilinear',
                                                         align_corners=False))
    for i in range(prediction.shape[0]):
        columns = [(src, kp_src), (driving[i:i + 1], kp_drv[i:i + 1])]
        if deformed is not None:
            columns.append(deformed[i:i + 1])
        if occlusion is not None:
            columns.append(occlusion[i:i + 1])
        columns += [(prediction[i:i + 1], kp_norm[i:i + 1]), prediction[i:i + 1]]
        image = visualizer.create_image_grid(*columns)
        yield (255 * np.clip(image, 0, 1)).astype(np.uint8)


def animate(config, generator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset, device=None,
            precision: str = 'auto', batch_size: int = 4, visualize: bool = False, progress: bool = True) -> list:
    """Animate the source of each pair of `dataset` (a PairedDataset) by its driving video.

    Motion is relative or absolute per `animate_params.normalization_params`. Videos are written
    to `<log_dir>/animation/<driving>-<source><format>`: the animation, or with `visualize` a
    side-by-side view (source, driving, deformed, occlusion, prediction with keypoints).
    Returns the written paths."""
    from tqdm import tqdm

    from inference import AnimationEngine
    from logger import Logger, Visualizer
    from reconstruction import _as_config, output_stem
    from video_io import VideoWriter

    config = _as_config(config)
    if checkpoint is not None:
        Logger.load_cpk(checkpoint, generator=generator, kp_detector=kp_detector)
    params = config.animate_params
    norm = params.normalization_params
    fmt = params.format if params.format.startswith('.') else '.' + params.format
    out_dir = os.path.join(log_dir, 'animation')
    os.makedirs(out_dir, exist_ok=True)
    engine = AnimationEngine(generator, kp_detector, device=device, precision=precision, batch_size=batch_size)
    visualizer = Visualizer(**vars(config.visualizer_params)) if visualize else None

    written = []
    for index in tqdm(range(len(dataset)), desc='animation', unit='pair', disable=not progress):
        driving_name, source_name, fps, source_frame, frames = _pair_videos(dataset, index)
        engine.set_source(source_frame)
        path = os.path.join(out_dir, '%s-%s%s' % (output_stem(driving_name), output_stem(source_name), fmt))
        with VideoWriter(path, fps=fps) as writer:
            for result in engine.stream(frames, relative=norm.use_relative_movement,
                                        adapt_scale=norm.adapt_movement_scale,
                                        relative_jacobian=norm.use_relative_jacobian, extras=visualize):
                if visualize:
                    for image in visualization_frames(visualizer, result, engine.source, engine.kp_source):
                        writer.write(image)
                else:
                    writer.write(result['prediction'].permute(0, 2, 3, 1).cpu().numpy())
        written.append(path)
    return written
