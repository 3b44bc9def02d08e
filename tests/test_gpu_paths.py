"""The paths users take on CUDA, shown on the CPU (or with torch.cuda mocked where only a GPU has
them): resumed optimizer states in the parameters' layout, ranks that stop together, precision
by compute capability, device indices, grid_sample in float32 under autocast, the fp16
GradScaler in checkpoints, the scheduler called after its optimizer, worker counts per process,
the process-group timeout of evaluation, the fp16 export checked on the CUDA provider."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import ROOT
from core import runtime
from core.checkpoint import read_checkpoint
from core.config import load_config
from media.synthetic import write_dataset
from modules.model import GeneratorFullModel, build_networks
from train import make_optimizers, place_networks, prepare_step, resume, step_options, to_device, train_step

CPU = torch.device('cpu')
TINY = ROOT / 'tests' / 'tiny.yaml'


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    write_dataset(str(root), size=64, num_train=4, num_test=2, frames=8, seed=0, progress=False)
    return root


def tiny_yaml(tmp_path, root, **train_overrides) -> str:
    cfg = yaml.safe_load(TINY.read_text())
    cfg['dataset_params']['root_dir'] = str(root)
    for key, value in train_overrides.items():
        if key == 'generator_gan':
            cfg['train_params']['loss_weights'][key] = value
        else:
            cfg['train_params'][key] = value
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def tiny_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {'source': torch.rand(2, 3, 64, 64, generator=g), 'driving': torch.rand(2, 3, 64, 64, generator=g)}


# ---------------------------------------------------------------------- 4. grid_sample in float32
def test_grid_sample_runs_in_float32_under_autocast(monkeypatch, seeded_torch_home, one_thread):
    """Sampling coordinates want float32: the warps (dense motion, the generator's warp, the
    equivariance transform) call grid_sample with a float32 input and grid under bf16 autocast.
    (CUDA autocast runs grid_sample in the inputs' dtype; CPU autocast in float32. Either way
    the call must see float32, which this checks on the CPU.)"""
    seen = []
    original = F.grid_sample

    def spy(inp, grid, *args, **kwargs):
        seen.append((inp.dtype, grid.dtype, torch.is_autocast_enabled('cpu')))
        return original(inp, grid, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'grid_sample', spy)
    config = load_config(str(TINY), mode='train')
    torch.manual_seed(0)
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    full = GeneratorFullModel(kp_detector, generator, discriminator, config.to_dict()['train_params'])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses, generated = full(tiny_batch())
    assert len(seen) >= 4  # dense motion, generator warp, transformed frame, ...
    assert all(inp == torch.float32 and grid == torch.float32 for inp, grid, _ in seen), seen
    assert all(torch.isfinite(v).all() for v in losses.values())
    # outside autocast, in float32, the call is F.grid_sample itself (the equivalence test holds)
    seen.clear()
    with torch.no_grad():
        full(tiny_batch())
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen)
