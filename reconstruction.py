"""`run.py --mode reconstruction`: every test video re-generated from its own first frame.

As in the original, the source is frame 0 and each frame is generated from the source with the
keypoints of frame 0 (kp_source) and those of the frame itself (kp_driving), absolute: no
normalisation. Videos stream through the inference engine (memory flat in video length) and are
written to `<log_dir>/reconstruction/<name><format>`; `metrics.json` / `metrics.csv` beside them
hold L1, PSNR, SSIM per video and their means, and the paper's AKD and AED (and MKR) when the
evaluation extra is installed (`pip install -r requirements-eval.txt`: dlib's 68 landmarks and face
embeddings; see analysis/face_measures.py), else AKD alone when face-alignment and its weights
are; metrics.json names the networks under 'measures'.
A video that cannot be read (corrupt, truncated, fewer frames than its container says) is
skipped with a warning and listed under 'skipped' in metrics.json, never in the mean.
Under torchrun the videos are split over the processes and rank 0 writes the merged report.
"""
import itertools
import math
import os
import sys
from typing import Iterable, Optional

import numpy as np
from tqdm import tqdm

from analysis import metrics as metrics_lib
from analysis.face_measures import face_measurer_or_none
from analysis.measures import INSTALL_EVAL, VideoMeasures
from core.runtime import merge_shares, share_work
from engine.torch_engine import AnimationEngine
from frames_dataset import DatasetError
from media.images import MediaError, one_line
from media.outputs import check_output
from media.video_io import VideoWriter, media_stem, output_suffix


def reconstruct_video(engine, frames: Iterable[np.ndarray], writer=None,
                      video_metrics: Optional[metrics_lib.VideoMetrics] = None,
                      akd=None) -> int:
    """Stream one video through the engine from its first frame (absolute keypoints); write each
    prediction and score it against the real frame; `akd`: a measures.VideoMeasures or a
    metrics.AKDMetric (add_batch(real frames, predictions)). Returns the number of frames."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return 0
    engine.set_source(first)
    count = 0
    for result in engine.stream(itertools.chain([first], frames), relative=False):
        predictions = result['prediction'].permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) float32
        if writer is not None:
            writer.write(predictions)
        for real, prediction in zip(result['frames'], predictions):
            if video_metrics is not None:
                video_metrics.add(prediction, real)
            count += 1
        if akd is not None:
            akd.add_batch(list(result['frames']), list(predictions))
    return count


def reconstruction(config, generator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset,
                   device=None, precision: str = 'auto', batch_size: int = 4, with_akd='auto',
                   progress: bool = True, indices: Optional[Iterable[int]] = None, distributed: bool = False,
                   out_dir: Optional[str] = None) -> dict:
    """Reconstruct the test videos of `dataset` (a FramesDataset with is_train=False).

    config: a Config, its dict or a YAML path; checkpoint: weights to load into the networks
    (None: use them as they are); with_akd: 'auto' (AKD, AED, MKR with dlib when the evaluation
    extra is installed, else AKD with face-alignment when it and its weights are present), True
    (one of them or an error) or False; indices: the videos to do (default: all, up to
    reconstruction_params.num_videos). Returns {'videos': [...], 'mean': {...}, 'skipped': [...],
    'paths': {...}}; raises DatasetError when no video could be evaluated.

    distributed: under torchrun (process group initialised), rank r of W does videos r, r+W, ...
    and writes them; rank 0 gathers every rank's figures and writes the one report, the same as a
    single process would (rows in video order); the other ranks return their own rows only, with
    'mean' and 'paths' None. out_dir: where the videos and the report go (default
    `<log_dir>/reconstruction`)."""
    engine = AnimationEngine.from_networks(generator, kp_detector, config, checkpoint, device=device,
                                           precision=precision, batch_size=batch_size)
    params = engine.config.reconstruction_params
    out_dir = out_dir or os.path.join(log_dir, 'reconstruction')
    count = len(dataset) if params.num_videos is None else min(len(dataset), int(params.num_videos))
    indices = list(range(count) if indices is None else indices)
    targets = {i: os.path.join(out_dir, media_stem(dataset.videos[i]) + output_suffix(params.format)) for i in indices}
    # every rank checks every output before any rank starts: they all stop alike, or none does
    for i, path in targets.items():  # never replace what this tool did not write
        check_output('reconstruction output', path, {'test video': os.path.join(dataset.root_dir, dataset.videos[i])})
    for name in ('metrics.json', 'metrics.csv'):
        check_output('reconstruction report', os.path.join(out_dir, name))
    akd, measures = None, None
    if with_akd:
        measurer = face_measurer_or_none(batch_size=batch_size)
        if measurer is not None:
            akd, measures = VideoMeasures(measurer), measurer.describe()
        else:
            akd = metrics_lib.akd_metric(str(engine.device))
            measures = {'akd': 'face-alignment 2D FAN (68 points)', 'aed': None} if akd is not None else None
        if akd is None and with_akd is True:
            raise RuntimeError('AKD asked for, but neither dlib (`%s`) nor face-alignment with its weights '
                               '(analysis/face.py) is available' % INSTALL_EVAL)
    mine, rank, world = share_work(indices, distributed)
    done = reconstruct_videos(engine, dataset, {i: targets[i] for i in mine}, akd, progress and rank == 0,
                              '' if world == 1 else ' (rank %d of %d)' % (rank, world))
    merged = merge_shares(done, distributed, everywhere=False)  # None on ranks other than 0
    per_video = [row for row, _ in merged or done if row]
    skipped = [why for _, why in merged or done if why]
    if merged is None:  # its own rows; rank 0 writes the report
        return {'videos': per_video, 'mean': None, 'paths': None, 'skipped': skipped}
    return write_reconstruction_report(out_dir, per_video, skipped, engine.precision, processes=world,
                                       measures=measures)


def reconstruct_videos(engine, dataset, targets: dict, akd, progress: bool, rank_note: str = '') -> list:
    """Reconstruct the videos {index: output path} in that order; returns one (metrics row or None,
    skipped entry or None) per video: an unreadable video is skipped with a warning."""
    done = []
    bar = tqdm(list(targets), desc='reconstruction' + rank_note, unit='video', disable=not progress)
    for i in bar:
        name, fps, frames = dataset.stream(i)
        scores = metrics_lib.VideoMetrics(name)
        if akd is not None:
            akd.reset()
        try:
            with VideoWriter(targets[i], fps=fps) as writer:
                reconstruct_video(engine, frames, writer, scores, akd)
        except (MediaError, DatasetError, ValueError) as e:
            done.append((None, {'name': name, 'reason': one_line(e)}))
            tqdm.write('reconstruction: skipped %s: %s' % (name, one_line(e)), file=sys.stderr)
            continue
        row = scores.result()
        if akd is not None:
            row.update(akd.result())
        done.append((row, None))
        bar.set_postfix(l1='%.4f' % row['l1'])
    return done


def write_reconstruction_report(out_dir: str, per_video: list, skipped: list, precision: str,
                                processes: int = 1, measures: Optional[dict] = None) -> dict:
    """metrics.json / metrics.csv for the evaluated videos (skipped ones listed, never averaged);
    `processes`: how many shared the work; `measures`: the networks behind AKD/AED (None: none ran);
    both recorded in metrics.json."""
    if not per_video:
        raise DatasetError('reconstruction: no test video could be evaluated (%d skipped; first: %s: %s)'
                           % (len(skipped), skipped[0]['name'], skipped[0]['reason']) if skipped
                           else 'reconstruction: no test videos')
    extra = {'precision': precision, 'skipped': skipped, 'processes': processes, 'measures': measures}
    paths = metrics_lib.write_report(out_dir, per_video, extra=extra)
    mean = metrics_lib.summarize(per_video)
    print('Reconstruction: %d videos%s, L1 %.5f, PSNR %.2f dB, SSIM %.4f%s -> %s'
          % (mean['videos'], ' (%d skipped)' % len(skipped) if skipped else '', mean.get('l1', float('nan')),
             mean.get('psnr', float('nan')), mean.get('ssim', float('nan')),
             ''.join(', %s %.3f' % (k.upper(), mean[k]) for k in ('akd', 'aed') if k in mean and not math.isnan(mean[k])),
             paths['json']))
    return {'videos': per_video, 'mean': mean, 'skipped': skipped, 'paths': paths}
