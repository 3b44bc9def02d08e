"""`run.py --mode reconstruction`: every test video re-generated from its own first frame.

As in the original, the source is frame 0 and each frame is generated from the source with the
keypoints of frame 0 (kp_source) and those of the frame itself (kp_driving), absolute: no
normalisation. Videos stream through the inference engine (memory flat in video length) and are
written to `<log_dir>/reconstruction/<name><format>`; `metrics.json` / `metrics.csv` beside them
hold L1, PSNR, SSIM (and AKD when face-alignment is available) per video and their means.
"""
import collections
import os
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
from tqdm import tqdm

import metrics as metrics_lib
from inference import AnimationEngine

VIDEO_SUFFIXES = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v', '.gif', '.png', '.jpg', '.jpeg')


def output_stem(name: str) -> str:
    """A dataset item's name without a media extension: 'id#clip.mp4' -> 'id#clip'."""
    stem, ext = os.path.splitext(os.path.basename(str(name)))
    return stem if ext.lower() in VIDEO_SUFFIXES else os.path.basename(str(name))


def _as_config(config):
    if isinstance(config, dict):
        from config import config_from_dict
        return config_from_dict(config)
    return config


def _fit(frame: np.ndarray, frame_shape) -> np.ndarray:
    from video_io import resize_frame
    h, w = int(frame_shape[0]), int(frame_shape[1])
    return frame if frame.shape[:2] == (h, w) else resize_frame(frame, h, w)


def dataset_videos(dataset, indices) -> Iterator[Tuple[str, float, Callable[[], Iterator[np.ndarray]]]]:
    """(name, fps, open_frames) per video index; open_frames() streams uint8 (H, W, 3) frames.

    A FramesDataset exposes its videos (`sources`), so frames are decoded one at a time and never
    held together; any other dataset falls back to its items' 'video' arrays (3, T, H, W)."""
    sources = getattr(dataset, 'sources', None)
    names = getattr(dataset, 'videos', None)
    frame_shape = getattr(dataset, 'frame_shape', None)
    for i in indices:
        if sources is not None and names is not None and getattr(dataset, '_by_id', None) is None:
            name = names[i]
            source = sources[name]
            fps = float(getattr(source.info, 'fps', 25.0) or 25.0)

            def open_frames(source=source):
                for frame in source:
                    yield _fit(frame, frame_shape) if frame_shape is not None else frame
            yield name, fps, open_frames
        else:
            item = dataset[i]
            video = np.asarray(item['video'])  # (3, T, H, W) float in [0, 1]

            def open_frames(video=video):
                for t in range(video.shape[1]):
                    yield np.ascontiguousarray(np.transpose(video[:, t], (1, 2, 0)))
            yield str(item['name']), 25.0, open_frames


def reconstruct_video(engine: AnimationEngine, frames: Iterator[np.ndarray], writer=None,
                      video_metrics: Optional[metrics_lib.VideoMetrics] = None,
                      akd: Optional[metrics_lib.AKDMetric] = None) -> int:
    """Stream one video through the engine from its first frame (absolute keypoints); write each
    prediction and score it against the real frame. Returns the number of frames."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return 0
    engine.set_source(first)
    pending = collections.deque()  # real frames waiting for their prediction (at most a batch)

    def feed():
        pending.append(first)
        yield first
        for frame in frames:
            pending.append(frame)
            yield frame

    count = 0
    for result in engine.stream(feed(), relative=False):
        predictions = result['prediction'].permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) float32
        if writer is not None:
            writer.write(predictions)
        for prediction in predictions:
            real = pending.popleft()
            if video_metrics is not None:
                video_metrics.add(prediction, real)
            if akd is not None:
                akd.add(real, prediction)
            count += 1
    return count


def reconstruction(config, generator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset,
                   device=None, precision: str = 'auto', batch_size: int = 4, with_akd='auto',
                   progress: bool = True) -> dict:
    """Reconstruct the test videos of `dataset` (a FramesDataset with is_train=False).

    config: the Config (or its dict); checkpoint: weights to load into the networks (None: use
    them as they are); with_akd: 'auto' (when face-alignment and its weights are present), True
    or False. Returns the metrics report {'videos': [...], 'mean': {...}}."""
    from logger import Logger
    from video_io import VideoWriter

    config = _as_config(config)
    if checkpoint is not None:
        Logger.load_cpk(checkpoint, generator=generator, kp_detector=kp_detector)
    params = config.reconstruction_params
    fmt = params.format if params.format.startswith('.') else '.' + params.format
    out_dir = os.path.join(log_dir, 'reconstruction')
    os.makedirs(out_dir, exist_ok=True)
    engine = AnimationEngine(generator, kp_detector, device=device, precision=precision, batch_size=batch_size)
    akd = None
    if with_akd:
        akd = metrics_lib.akd_metric(str(engine.device))
        if akd is None and with_akd is True:
            raise RuntimeError('AKD asked for, but face-alignment or its weights are not available (see face.py)')

    count = len(dataset) if params.num_videos is None else min(len(dataset), int(params.num_videos))
    per_video = []
    bar = tqdm(dataset_videos(dataset, range(count)), total=count, desc='reconstruction', unit='video',
               disable=not progress)
    for name, fps, open_frames in bar:
        scores = metrics_lib.VideoMetrics(name)
        if akd is not None:
            akd.reset()
        with VideoWriter(os.path.join(out_dir, output_stem(name) + fmt), fps=fps) as writer:
            reconstruct_video(engine, open_frames(), writer, scores, akd)
        row = scores.result()
        if akd is not None:
            row.update(akd.result())
        per_video.append(row)
        bar.set_postfix(l1='%.4f' % row['l1'])
    paths = metrics_lib.write_report(out_dir, per_video, extra={'precision': engine.precision})
    mean = metrics_lib.summarize(per_video)
    print('Reconstruction: %d videos, L1 %.5f, PSNR %.2f dB, SSIM %.4f%s -> %s'
          % (mean['videos'], mean.get('l1', float('nan')), mean.get('psnr', float('nan')),
             mean.get('ssim', float('nan')),
             ', AKD %.3f' % mean['akd'] if 'akd' in mean else '', paths['json']))
    return {'videos': per_video, 'mean': mean, 'paths': paths}
