"""`run.py --mode animate`: the source of each test pair animated by its driving video.

Motion is relative or absolute per `animate_params.normalization_params`; videos go to
`<log_dir>/animation/<driving>-<source><format>`, or with `visualize` a side-by-side view
(source, driving, deformed, occlusion, prediction with keypoints; logger.Visualizer). A pair whose
video cannot be read is skipped with a warning; only when none can be animated is it an error.
Under torchrun the pairs are split over the processes.

`normalize_kp` lives in modules/keypoints.py; it is importable from here, as in the original.
"""
import os
import sys
from collections import Counter
from typing import Optional

from tqdm import tqdm

from core.config import keywords
from frames_dataset import DatasetError
from media.images import MediaError, one_line
from engine.torch_engine import AnimationEngine, to_uint8_frames
from logger import Visualizer
from modules.keypoints import normalize_kp  # noqa: F401  (the original's name: animate.normalize_kp)
from media.outputs import check_output
from core.runtime import merge_shares, share_work
from media.video_io import VideoWriter, media_stem, output_suffix


def _write_pair(engine, writer, frames, norm, visualizer: Optional[Visualizer]) -> None:
    for result in engine.stream(frames, relative=norm.use_relative_movement, adapt_scale=norm.adapt_movement_scale,
                                relative_jacobian=norm.use_relative_jacobian, extras=visualizer is not None):
        if visualizer is None:
            writer.write(to_uint8_frames(result['prediction']))
            continue
        for i in range(len(result['frames'])):  # one picture per frame
            item = {k: ({kk: vv[i:i + 1] for kk, vv in v.items()} if isinstance(v, dict) else v[i:i + 1])
                    for k, v in result.items() if k != 'frames'}
            writer.write(visualizer.visualize(item['driving'], engine.source, item))


def animate(config, generator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset, device=None,
            precision: str = 'auto', batch_size: int = 4, visualize: bool = False, progress: bool = True,
            distributed: bool = False, out_dir: Optional[str] = None) -> list:
    """Animate the source of each pair of `dataset` (a PairedDataset over a test FramesDataset) by
    its driving video; config: a Config, its dict or a YAML path; checkpoint: weights to load
    (None: the networks as they are). Returns the written paths.

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

    mine, rank, world = share_work(jobs, distributed)
    done = _animate_pairs(engine, videos, mine, params, visualizer, progress and rank == 0, rank)
    # every rank learns the whole outcome, so that all of them stop alike or none does
    done = merge_shares(done, distributed)
    written = [path for path, ok, _ in done if ok]
    if world > 1 and rank == 0 and progress:
        by_rank = Counter(r for _, _, r in done)
        tqdm.write('animation: %d pairs by %d processes (%s)'
                   % (len(jobs), world, ' + '.join(str(by_rank[r]) for r in range(world))), file=sys.stderr)
    if not written and jobs:
        raise DatasetError('animation: no pair could be animated (%d skipped)' % len(done))
    return written


def _animate_pairs(engine, videos, jobs: list, params, visualizer, progress: bool, rank: int) -> list:
    """One (output path, written: bool, rank) per pair of `jobs` [(driving index, source index,
    path)]; a pair whose video cannot be read is skipped with a warning."""
    done = []
    for driving_idx, source_idx, path in tqdm(jobs, desc='animation', unit='pair', disable=not progress):
        try:
            source_name, _, source_frames = videos.stream(source_idx)
            engine.set_source(next(source_frames))
            source_frames.close()
            driving_name, fps, frames = videos.stream(driving_idx)
            with VideoWriter(path, fps=fps) as writer:
                _write_pair(engine, writer, frames, params.normalization_params, visualizer)
        except (MediaError, DatasetError, ValueError) as e:
            done.append((path, False, rank))
            tqdm.write('animation: skipped %s: %s' % (os.path.basename(path), one_line(e)), file=sys.stderr)
            continue
        done.append((path, True, rank))
    return done
