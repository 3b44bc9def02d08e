"""Reconstruction metrics: L1, PSNR, SSIM per frame, per-video and mean aggregation, AKD hook.

Frames are (H, W, 3) arrays, uint8 or float in [0, 1]; every metric works in float64 on the
[0, 1] scale (data_range 1), so a uint8 frame and its float version score the same.

PSNR of two identical frames is infinite. Per frame it is reported as `inf`; in means (per video
and over videos) each frame's PSNR is capped at PSNR_CAP_DB = 100 dB, which keeps the means
finite and ordered (a frame closer than 1e-10 MSE counts as 100 dB). JSON has no infinity: any
non-finite value is written as null.
"""
import csv
import json
import math
import os
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from media.images import to_float
from media.outputs import MARK, temp_path

PSNR_CAP_DB = 100.0
FIELDS = ('l1', 'psnr', 'ssim')


def _as_float64(frame) -> np.ndarray:
    """The [0, 1] scale of images.to_float, in float64 for the sums."""
    return to_float(frame, 'frame').astype(np.float64)


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError('frames differ in shape: %s vs %s' % (a.shape, b.shape))


def l1(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute difference on the [0, 1] scale."""
    a, b = _as_float64(prediction), _as_float64(target)
    _check(a, b)
    return float(np.mean(np.abs(a - b)))


def psnr(prediction: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """10 log10(range^2 / MSE) in dB; `inf` for identical frames."""
    a, b = _as_float64(prediction), _as_float64(target)
    _check(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(prediction: np.ndarray, target: np.ndarray) -> float:
    """Structural similarity (skimage, Gaussian-free 7x7 windows), colour channels averaged."""
    from skimage.metrics import structural_similarity

    a, b = _as_float64(prediction), _as_float64(target)
    _check(a, b)
    if a.ndim == 2:
        return float(structural_similarity(a, b, data_range=1.0))
    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def frame_metrics(prediction: np.ndarray, target: np.ndarray, with_ssim: bool = True) -> Dict[str, float]:
    """{'l1', 'psnr', 'ssim'} of one frame pair."""
    out = {'l1': l1(prediction, target), 'psnr': psnr(prediction, target)}
    if with_ssim:
        out['ssim'] = ssim(prediction, target)
    return out


def capped_psnr(value: float) -> float:
    return min(value, PSNR_CAP_DB)


class VideoMetrics:
    """Running per-frame metrics of one video; nothing but sums is kept (memory flat)."""

    def __init__(self, name: str, with_ssim: bool = True):
        self.name = name
        self.with_ssim = with_ssim
        self.frames = 0
        self.sums = {k: 0.0 for k in FIELDS if with_ssim or k != 'ssim'}
        self.inf_psnr_frames = 0

    def add(self, prediction: np.ndarray, target: np.ndarray) -> Dict[str, float]:
        values = frame_metrics(prediction, target, self.with_ssim)
        if math.isinf(values['psnr']):
            self.inf_psnr_frames += 1
        for k in self.sums:
            self.sums[k] += capped_psnr(values[k]) if k == 'psnr' else values[k]
        self.frames += 1
        return values

    def result(self) -> Dict[str, object]:
        """{'name', 'frames', 'l1', 'psnr', 'ssim', 'psnr_inf_frames'} (means over frames)."""
        out = {'name': self.name, 'frames': self.frames}
        for k, v in self.sums.items():
            out[k] = v / self.frames if self.frames else math.nan
        out['psnr_inf_frames'] = self.inf_psnr_frames
        return out


def video_metrics(predictions: Iterable[np.ndarray], targets: Iterable[np.ndarray], name: str = 'video',
                  with_ssim: bool = True) -> Dict[str, object]:
    """Per-video means of two equally long frame sequences (streamed pairwise)."""
    acc = VideoMetrics(name, with_ssim)
    sentinel = object()
    pit, tit = iter(predictions), iter(targets)
    while True:
        p, t = next(pit, sentinel), next(tit, sentinel)
        if p is sentinel and t is sentinel:
            break
        if p is sentinel or t is sentinel:
            raise ValueError('%s: predicted and real videos differ in length (one ended after %d frames)'
                             % (name, acc.frames))
        acc.add(p, t)
    return acc.result()


def summarize(per_video: List[Dict[str, object]]) -> Dict[str, object]:
    """Means over videos of every numeric metric (each video weighs the same, as the original's
    per-video averaging; NaN entries, e.g. AKD without a face, are left out of their mean)."""
    keys = [k for k in per_video[0] if k not in ('name', 'frames', 'psnr_inf_frames')] if per_video else []
    mean = {}
    for k in keys:
        values = [float(v[k]) for v in per_video if v.get(k) is not None and not math.isnan(float(v[k]))]
        mean[k] = float(np.mean(values)) if values else math.nan
    mean['videos'] = len(per_video)
    mean['frames'] = int(sum(v['frames'] for v in per_video))
    return mean


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_report(folder: str, per_video: List[Dict[str, object]], stem: str = 'metrics',
                 extra: Optional[Dict[str, object]] = None) -> Dict[str, str]:
    """Write `<folder>/<stem>.json` ({'videos': [...], 'mean': {...}, 'psnr_cap_db', ...}) and
    `<folder>/<stem>.csv` (one row per video, then a 'mean' row). Returns the two paths."""
    os.makedirs(folder, exist_ok=True)
    mean = summarize(per_video)
    report = {'written_by': MARK, 'videos': per_video, 'mean': mean, 'psnr_cap_db': PSNR_CAP_DB,
              'notes': 'l1: mean |prediction - real| on [0, 1]; psnr in dB with each frame capped at '
                       'psnr_cap_db (identical frames); ssim: skimage, data_range 1; null: not available'}
    report.update(extra or {})
    json_path = os.path.join(folder, stem + '.json')
    csv_path = os.path.join(folder, stem + '.csv')
    tmp = temp_path(json_path)
    with open(tmp, 'w') as f:
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)
    os.replace(tmp, json_path)
    columns = ['name', 'frames'] + [k for k in (per_video[0] if per_video else {}) if k not in ('name', 'frames')]
    tmp = temp_path(csv_path)
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in per_video + [dict(mean, name='mean')]:
            writer.writerow([_csv_value(row.get(c)) for c in columns])
    os.replace(tmp, csv_path)
    return {'json': json_path, 'csv': csv_path}


def _csv_value(v):
    if isinstance(v, float):
        return '' if math.isnan(v) else ('%.6g' % v)
    return '' if v is None else v


class AKDMetric:
    """Average keypoint distance (face landmarks, pixels) between real and generated frames,
    accumulated frame by frame with face.akd; `missing` is the share of real faces lost."""

    def __init__(self, landmarker: Callable):
        self.landmarker = landmarker
        self.reset()

    def reset(self) -> None:
        self.distances: List[float] = []
        self.with_face = 0
        self.missing = 0

    def add(self, real: np.ndarray, generated: np.ndarray) -> None:
        from analysis import face

        r = face.akd([real], [generated], self.landmarker)
        self.with_face += r.frames - r.real_missing
        self.missing += r.frames - r.real_missing - r.pairs
        if r.pairs:
            self.distances.append(r.akd)

    def add_batch(self, real: Iterable[np.ndarray], generated: Iterable[np.ndarray]) -> None:
        for r, g in zip(real, generated):
            self.add(r, g)

    def result(self) -> Dict[str, float]:
        return {'akd': float(np.mean(self.distances)) if self.distances else math.nan,
                'akd_missing': self.missing / self.with_face if self.with_face else math.nan}


def akd_metric(device: Optional[str] = None) -> Optional[AKDMetric]:
    """An AKDMetric when face-alignment and its weights are available here, else None (AKD is
    then left out of the report; see analysis/face.py for where the weights go)."""
    try:
        from analysis import face
        landmarker = face.FaceLandmarker(device=device, allow_download=False)
    except Exception:  # package or weights missing: AKD is optional
        return None
    return AKDMetric(landmarker)
