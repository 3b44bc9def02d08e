"""`run.py --mode animate`: the source of each test pair animated by its driving video.

Motion is relative or absolute per `animate_params.normalization_params`; videos go to
`<log_dir>/animation/<driving>-<source><format>`, or with `visualize` a side-by-side view
(source, driving, deformed, occlusion, prediction with keypoints; logger.Visualizer). A pair whose
video cannot be read is skipped with a warning; only when none can be animated is it an error.
Under torchrun the pairs are split over the processes.

With the evaluation extra installed (`pip install -r requirements-eval.txt`), each cross-identity
pair (source and driving videos of different ids: the part of the name before '#', else the whole
name) is also measured, and `<log_dir>/animation/metrics.json` / `metrics.csv` hold per pair:
  aed_source   identity preservation: face-embedding distance between the source image and each
               animated frame (dlib, 0.6 = its same-person threshold);
  akd_motion   motion following: landmark distance between each driving frame and its animated
               frame, after one scale + shift per pair fitted at the first frame where both have a
               face (scale: sqrt of the ratio of their landmarks' hull areas; shift: centroids),
               in pixels of the measured driving frame (see analysis/measures.py).

`normalize_kp` lives in modules/keypoints.py; it is importable from here, as in the original.
"""
import math
import os
import sys
from collections import Counter
from typing import Optional

from tqdm import tqdm

from analysis import metrics as metrics_lib
from analysis.face_measures import face_measurer_or_none
from analysis.measures import AnimationMeasures
from core.config import keywords
from core.runtime import merge_shares, share_work
from engine.torch_engine import AnimationEngine, to_uint8_frames
from frames_dataset import DatasetError, video_id
from logger import Visualizer
from media.images import MediaError, one_line
from media.outputs import check_output
from media.video_io import VideoWriter, media_stem, output_suffix
from modules.keypoints import normalize_kp  # noqa: F401  (the original's name: animate.normalize_kp)


def _write_pair(engine, writer, frames, norm, visualizer: Optional[Visualizer],
                measures: Optional[AnimationMeasures] = None) -> None:
    for result in engine.stream(frames, relative=norm.use_relative_movement, adapt_scale=norm.adapt_movement_scale,
                                relative_jacobian=norm.use_relative_jacobian, extras=visualizer is not None):
        predictions = to_uint8_frames(result['prediction']) if visualizer is None or measures is not None else None
        if measures is not None:
            measures.add_batch(list(result['frames']), list(predictions))
        if visualizer is None:
            writer.write(predictions)
            continue
        for i in range(len(result['frames'])):  # one picture per frame
            item = {k: ({kk: vv[i:i + 1] for kk, vv in v.items()} if isinstance(v, dict) else v[i:i + 1])
                    for k, v in result.items() if k != 'frames'}
            writer.write(visualizer.visualize(item['driving'], engine.source, item))


def animate(config, generator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset, device=None,
            precision: str = 'auto', batch_size: int = 4, visualize: bool = False, progress: bool = True,
            distributed: bool = False, with_measures='auto', out_dir: Optional[str] = None) -> list:
    """Animate the source of each pair of `dataset` (a PairedDataset over a test FramesDataset) by
    its driving video; config: a Config, its dict or a YAML path; checkpoint: weights to load
    (None: the networks as they are); with_measures: 'auto' (identity and motion measures of
    cross-identity pairs when the evaluation extra is installed, see the module doc) or False.
    Returns the written paths.

    distributed: under torchrun (process group initialised), rank r of W animates pairs r, r+W, ...
    after every rank has checked every output; each returns all written paths (in pair order).
    out_dir: where the videos go (default `<log_dir>/animation`)."""
    engine = AnimationEngine.from_networks(generator, kp_detector, config, checkpoint, device=device,
                                           precision=precision, batch_size=batch_size)
    params = engine.config.animate_params
    videos = dataset.initial_dataset
    out_dir = out_dir or os.path.join(log_dir, 'animation')
    jobs = []
    for driving_idx, source_idx in dataset.pairs:
        driving, source = videos.videos[int(driving_idx)], videos.videos[int(source_idx)]
        path = os.path.join(out_dir, '%s-%s%s' % (media_stem(driving), media_stem(source), output_suffix(params.format)))
        check_output('animation output', path, {'driving video': os.path.join(videos.root_dir, driving),
                                                'source video': os.path.join(videos.root_dir, source)})
        jobs.append((int(driving_idx), int(source_idx), path))
    visualizer = Visualizer(**keywords(engine.config.visualizer_params)) if visualize else None
    measurer = face_measurer_or_none(batch_size=batch_size) if with_measures else None
    cross = [j for j in jobs if video_id(videos.videos[j[0]]) != video_id(videos.videos[j[1]])]
    if measurer is not None and cross:
        for name in ('metrics.json', 'metrics.csv'):
            check_output('animation report', os.path.join(out_dir, name))
    else:
        measurer = None

    mine, rank, world = share_work(jobs, distributed)
    done = _animate_pairs(engine, videos, mine, params, visualizer, progress and rank == 0, rank, measurer)
    # every rank learns the whole outcome, so that all of them stop alike or none does
    done = merge_shares(done, distributed)
    written = [path for path, ok, _, _ in done if ok]
    if world > 1 and rank == 0 and progress:
        by_rank = Counter(r for _, _, r, _ in done)
        tqdm.write('animation: %d pairs by %d processes (%s)'
                   % (len(jobs), world, ' + '.join(str(by_rank[r]) for r in range(world))), file=sys.stderr)
    if not written and jobs:
        raise DatasetError('animation: no pair could be animated (%d skipped)' % len(done))
    rows = [row for _, ok, _, row in done if ok and row]
    # a report only where a face was seen: on other data (bodies, shapes) every measure is null
    if rank == 0 and rows and any(not math.isnan(r['aed_source']) or not math.isnan(r['akd_motion']) for r in rows):
        write_animation_report(out_dir, rows, measurer.describe())
    elif rank == 0 and rows and progress:
        tqdm.write('animation: no face found in the cross-identity pairs: no identity/motion measures', file=sys.stderr)
    return written


def write_animation_report(out_dir: str, rows: list, measures: dict) -> dict:
    """metrics.json / metrics.csv of the measured cross-identity pairs; prints the means."""
    notes = ('aed_source: face-embedding distance, source image to each animated frame (identity preservation); '
             'akd_motion: landmark distance, driving frame to animated frame after one scale + shift per pair '
             'fitted at the first frame where both have a face (motion following), pixels of the measured frames; '
             'null: not available')
    paths = metrics_lib.write_report(out_dir, rows, extra={'measures': measures, 'notes': notes})
    mean = metrics_lib.summarize(rows)
    print('Animation: %d cross-identity pairs, identity AED to the source %.3f, motion AKD %.2f px -> %s'
          % (mean['videos'], mean['aed_source'], mean['akd_motion'], paths['json']))
    return paths


def _animate_pairs(engine, videos, jobs: list, params, visualizer, progress: bool, rank: int,
                   measurer=None) -> list:
    """One (output path, written: bool, rank, measures row or None) per pair of `jobs` [(driving
    index, source index, path)]; a pair whose video cannot be read is skipped with a warning.
    measurer: measure the cross-identity pairs with it (see the module doc)."""
    done = []
    for driving_idx, source_idx, path in tqdm(jobs, desc='animation', unit='pair', disable=not progress):
        measures = None
        try:
            source_name, _, source_frames = videos.stream(source_idx)
            source = next(source_frames)
            engine.set_source(source)
            source_frames.close()
            driving_name, fps, frames = videos.stream(driving_idx)
            if measurer is not None and video_id(driving_name) != video_id(source_name):
                measures = AnimationMeasures(measurer, source)
            with VideoWriter(path, fps=fps) as writer:
                _write_pair(engine, writer, frames, params.normalization_params, visualizer, measures)
        except (MediaError, DatasetError, ValueError) as e:
            done.append((path, False, rank, None))
            tqdm.write('animation: skipped %s: %s' % (os.path.basename(path), one_line(e)), file=sys.stderr)
            continue
        row = None
        if measures is not None:
            row = dict({'name': os.path.basename(path), 'frames': measures.frames}, **measures.result())
        done.append((path, True, rank, row))
    return done
