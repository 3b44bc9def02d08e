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

from core.config import load_config  # noqa: E402
from engine.torch_engine import AnimationEngine, to_uint8_frames  # noqa: E402
from media.images import resize  # noqa: E402
from media.video_io import iter_video_frames  # noqa: E402


def to_tensor(frames):
    """uint8 frames (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def evaluate(config_path, checkpoint, test_dir, batch_size=16, max_frames=None, strip=None, columns=6):
    """Per-video and mean L1 of: driven reconstruction, copy-source, no-motion (see module doc).

    strip: also write a PNG there: per test video, `columns` evenly spaced driving frames (the first
    is the source) above the model's reconstructions of them."""
    engine = AnimationEngine.from_checkpoint(config_path, checkpoint, device='cpu', precision='fp32',
                                             batch_size=batch_size)
    h, w = engine.frame_shape
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
        if strip is not None:
            picks = np.linspace(0, len(frames) - 1, columns).round().astype(int)
            rows.append(np.concatenate([frames[i] for i in picks], axis=1))
            rows.append(np.concatenate(list(to_uint8_frames(driven[picks])), axis=1))
    if strip is not None and rows:
        imageio.imwrite(strip, np.concatenate(rows, axis=0))
    mean = {k: float(np.mean([v[k] for v in per_video.values()])) for k in ('driven', 'copy', 'no_motion')}
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
    print('checkpoint: %s; VGG19 weights: %s' % (checkpoint, cfg.train_params.vgg_weights))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'checkpoint': checkpoint, 'train': trained, 'per_video': per_video, 'mean': mean,
                       'vgg_weights': cfg.train_params.vgg_weights}, f, indent=1)


if __name__ == '__main__':
    main()
