"""Does training learn on real video? Train a small model for a CPU budget, then judge it on test videos.

    python bench/learning_check.py --minutes 25                 # train + evaluate (config/faces-64-cpu.yaml)
    python bench/learning_check.py --checkpoint CKPT            # evaluate an existing checkpoint only

Each test video is reconstructed from its first frame (the source) with the driving frame's
keypoints (absolute, as `run.py --mode reconstruction`). Three mean L1 figures (pixels in [0, 1]):
  driven      the model's reconstruction of each frame
  copy        the source frame copied as the prediction of every frame
  no-motion   the same generator given the source's own keypoints (no motion)
`no-motion / driven` > 1 shows the keypoints carry motion; `driven < copy` is the harder bar on
talking heads, where most pixels do not move.

With the evaluation extra installed (`pip install -r requirements-eval.txt`) the same three
predictions also get the paper's AKD (dlib's 68 landmarks, pixels) and AED (dlib's 128-d face
embedding) against the real frames, and MKR (share of real faces lost). The model's 64x64 frames
are upscaled to 256x256 for these measures (dlib's detector misses smaller faces), so AKD is in
pixels of 256x256 frames, the paper's frame size.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import imageio
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis.face_measures import face_measurer_or_none  # noqa: E402
from analysis.measures import FIELDS, VideoMeasures, measured_shape  # noqa: E402
from core.config import load_config  # noqa: E402
from engine.torch_engine import AnimationEngine, to_uint8_frames  # noqa: E402
from media.images import resize  # noqa: E402
from media.video_io import iter_video_frames  # noqa: E402


def to_tensor(frames):
    """uint8 frames (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


PREDICTIONS = ('driven', 'copy', 'no_motion')


def face_measures(measurer, frames, driven, still) -> dict:
    """{prediction: {'akd', 'aed', 'mkr', ...}} of the three predictions against the real frames;
    the real frames are observed once, the copied source frame and the no-motion frame once each."""
    real = measurer.observe(frames)
    observed = {'driven': measurer.observe(list(to_uint8_frames(driven))),
                'copy': measurer.observe(frames[:1]) * len(frames),
                'no_motion': measurer.observe(list(to_uint8_frames(still))) * len(frames)}
    out = {}
    for key, generated in observed.items():
        acc = VideoMeasures(measurer)
        acc.add_observations(real, generated)
        out[key] = acc.result()
    return out


def nan_mean(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float('nan')


def null_nan(value):
    """JSON has no NaN: measures that do not apply become null."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: null_nan(v) for k, v in value.items()}
    return value


@torch.no_grad()
def evaluate(config_path, checkpoint, test_dir, batch_size=16, max_frames=None, strip=None, columns=6,
             measures='auto'):
    """Per-video and mean L1 of: driven reconstruction, copy-source, no-motion (see module doc).

    strip: also write a PNG there: per test video, `columns` evenly spaced driving frames (the first
    is the source) above the model's reconstructions of them. measures: 'auto' adds
    {'measures': {prediction: {'akd', 'aed', 'mkr', ...}}} per video and in the mean when the
    evaluation extra is installed (see module doc), False never."""
    engine = AnimationEngine.from_checkpoint(config_path, checkpoint, device='cpu', precision='fp32',
                                             batch_size=batch_size)
    h, w = engine.frame_shape
    measurer = face_measurer_or_none(batch_size=batch_size) if measures else None
    per_video, rows = {}, []
    for path in sorted(glob.glob(os.path.join(test_dir, '*.mp4'))):
        frames = [resize(f, h, w) for f in iter_video_frames(path)][:max_frames]
        video = to_tensor(frames)  # (T, 3, H, W)
        source = video[:1]
        engine.set_source(frames[0])
        # absolute keypoints, as run.py --mode reconstruction; the source as its own driving frame = no motion
        driven = torch.cat(list(engine.animate(frames, relative=False, output='batch'))).cpu()
        still = next(engine.animate(frames[:1], relative=False, output='batch')).cpu()
        per_video[os.path.basename(path)] = {
            'driven': (driven - video).abs().mean().item(),
            'copy': (source - video).abs().mean().item(),
            'no_motion': (still - video).abs().mean().item()}
        if measurer is not None:
            per_video[os.path.basename(path)]['measures'] = face_measures(measurer, frames, driven, still)
        if strip is not None:
            picks = np.linspace(0, len(frames) - 1, columns).round().astype(int)
            rows.append(np.concatenate([frames[i] for i in picks], axis=1))
            rows.append(np.concatenate(list(to_uint8_frames(driven[picks])), axis=1))
    if strip is not None and rows:
        imageio.imwrite(strip, np.concatenate(rows, axis=0))
    mean = {k: float(np.mean([v[k] for v in per_video.values()])) for k in PREDICTIONS}
    if measurer is not None:
        mean['measures'] = {p: {f: nan_mean([v['measures'][p][f] for v in per_video.values()]) for f in FIELDS}
                            for p in PREDICTIONS}
        mean['measured_by'] = measurer.describe()
        mean['measured_shape'] = list(measured_shape(h, w, measurer.min_side))
    return per_video, mean


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'config', 'faces-64-cpu.yaml'), help='training config')
    p.add_argument('--minutes', type=float, default=25, help='training budget in minutes (default: 25)')
    p.add_argument('--checkpoint', default=None, help='evaluate this checkpoint instead of training')
    p.add_argument('--log_dir', default=os.path.join(ROOT, 'log', 'learning-check'), help='run folder parent')
    p.add_argument('--test_dir', default=None, help='test videos (default: <root_dir>/test from the config)')
    p.add_argument('--num_workers', type=int, default=1, help='DataLoader workers (default: 1)')
    p.add_argument('--out', default=None, help='write the figures as JSON here')
    p.add_argument('--strip', default=None, help='write a PNG here: sampled test frames above their reconstructions')
    args = p.parse_args()

    cfg = load_config(args.config)
    root = cfg.dataset_params.root_dir
    if not os.path.isabs(root):
        root = os.path.join(ROOT, root)
    test_dir = args.test_dir or os.path.join(root, 'test')
    if not os.path.isdir(test_dir):
        sys.exit('error: test videos not found: %s (--test_dir)' % test_dir)

    checkpoint = args.checkpoint
    trained = {}
    if checkpoint is None:
        start = time.time()
        cmd = [sys.executable, os.path.join(ROOT, 'run.py'), '--config', args.config, '--log_dir', args.log_dir,
               '--max_minutes', str(args.minutes), '--num_workers', str(args.num_workers), '--precision', 'fp32']
        print('training:', ' '.join(cmd), flush=True)
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.exit('error: training failed (exit %d)' % out.returncode)
        run_dir = out.stdout.strip().splitlines()[-1]
        cks = sorted(glob.glob(os.path.join(run_dir, 'checkpoints', '*-checkpoint.pth.tar')))
        checkpoint = cks[-1]
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        steps = max(s['step'] for s in state['optimizer_generator']['state'].values())
        trained = {'minutes': round((time.time() - start) / 60, 1), 'steps': int(steps), 'run_dir': run_dir,
                   'batch_size': cfg.train_params.batch_size}
        print('trained %(steps)d steps (batch %(batch_size)d) in %(minutes).1f min: %(run_dir)s' % trained)

    per_video, mean = evaluate(args.config, checkpoint, test_dir, strip=args.strip)
    for name, v in per_video.items():
        print('%-14s L1 driven %.4f  copy-source %.4f  no-motion %.4f' % (name, v['driven'], v['copy'],
                                                                         v['no_motion']))
    print('mean           L1 driven %.4f  copy-source %.4f  no-motion %.4f' % (mean['driven'], mean['copy'],
                                                                            mean['no_motion']))
    print('motion gain (no-motion / driven): %.3fx; driven vs copy: %.3fx'
          % (mean['no_motion'] / mean['driven'], mean['copy'] / mean['driven']))
    if 'measures' in mean:
        m = mean['measures']
        print('measured at %dx%d (AKD in those pixels)' % tuple(mean['measured_shape'][::-1]))
        for field, label in (('akd', 'AKD (px)'), ('aed', 'AED (dlib)'), ('mkr', 'MKR'),
                             ('no_detection_generated', 'no face (generated)')):
            print('mean %-20s driven %.4f  copy-source %.4f  no-motion %.4f'
                  % (label, m['driven'][field], m['copy'][field], m['no_motion'][field]))
        print('real frames without a face: %.3f' % m['driven']['no_detection_real'])
    else:
        print('AKD/AED: not measured (pip install -r requirements-eval.txt)')
    print('checkpoint: %s; VGG19 weights: %s' % (checkpoint, cfg.train_params.vgg_weights))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(null_nan({'checkpoint': checkpoint, 'train': trained, 'per_video': per_video, 'mean': mean,
                                'vgg_weights': cfg.train_params.vgg_weights}), f, indent=1)


if __name__ == '__main__':
    main()
