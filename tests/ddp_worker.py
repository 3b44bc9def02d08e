"""Run by tests/test_train.py under torchrun: train a few steps, then each rank saves its weights."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import load_config  # noqa: E402
from frames_dataset import FramesDataset  # noqa: E402
from modules.networks import build_networks  # noqa: E402
from train import train  # noqa: E402


def main(config_path, out_dir):
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    cfg = load_config(config_path)
    generator, kp_detector, discriminator = build_networks(cfg.to_dict()['model_params'])
    dataset = FramesDataset(is_train=True, random_seed=0, **cfg.to_dict()["dataset_params"])
    train(cfg, generator, discriminator, kp_detector, None, os.path.join(out_dir, 'run'), dataset,
          torch.device('cpu'), num_workers=0, max_steps=2)
    state = {'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(),
             'discriminator': discriminator.state_dict()}
    torch.save(state, os.path.join(out_dir, 'rank%d.pt' % rank))
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
