"""Run by tests/test_gpu_paths.py under torchrun (2 processes, gloo): rank 1 alone is told to stop,
and both ranks must stop at the same step. Writes rank<r>.json: {'steps', 'stopped_early', 'error'}.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_stop_worker.py CONFIG OUT CASE
CASE: deadline (rank 1 gets a --max_minutes deadline that passes after its first step), signal
(rank 1 receives SIGINT during its second step), nan (rank 1's loss is NaN at its second step,
the last of a log interval, while rank 0's losses there are finite).
"""
import json
import os
import signal
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import load_config  # noqa: E402
from frames_dataset import FramesDataset  # noqa: E402
from modules import model  # noqa: E402
from modules.networks import build_networks  # noqa: E402
from train import TrainingStopped, train  # noqa: E402


def disturb_rank1(case: str) -> None:
    """Make rank 1 alone want to stop at its second step (signal, nan)."""
    original = model.GeneratorFullModel.forward
    calls = {'n': 0}

    def forward(self, x):
        losses, generated = original(self, x)
        calls['n'] += 1
        if calls['n'] == 2:
            if case == 'signal':
                os.kill(os.getpid(), signal.SIGINT)
            else:
                losses['perceptual'] = losses['perceptual'] * float('nan')
        return losses, generated
    model.GeneratorFullModel.forward = forward


def main(config_path: str, out_dir: str, case: str) -> None:
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(rank)
    cfg = load_config(config_path)
    generator, kp_detector, discriminator = build_networks(cfg.to_dict()['model_params'])
    dataset = FramesDataset(is_train=True, random_seed=0, **cfg.to_dict()['dataset_params'])
    max_minutes = 1e-6 if case == 'deadline' and rank == 1 else None
    if case in ('signal', 'nan') and rank == 1:
        disturb_rank1(case)
    result = {'steps': None, 'stopped_early': None, 'error': None}
    try:
        outcome = train(cfg, generator, discriminator, kp_detector, None, os.path.join(out_dir, 'run'), dataset,
                        torch.device('cpu'), num_workers=0, max_steps=20, max_minutes=max_minutes, log_freq=2)
        result.update(outcome)
    except TrainingStopped as e:
        result['error'] = str(e)
    with open(os.path.join(out_dir, 'rank%d.json' % rank), 'w') as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == '__main__':
    main(*sys.argv[1:4])
