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


# --------------------------------------------------------------- 3. precision by compute capability
@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA devices as torch.cuda reports them: cuda:0 an A100 (8.0), cuda:1 a T4 (7.5). Like
    a real T4, is_bf16_supported() says True (bf16 is emulated there)."""
    capability = {0: (8, 0), 1: (7, 5)}
    current = {'index': 0}
    calls = []

    def index_of(device=None):
        if device is None:
            return current['index']
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return current['index'] if device.index is None else device.index

    def set_device(device):
        calls.append(device)
        current['index'] = index_of(device)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: current['index'])
    monkeypatch.setattr(torch.cuda, 'set_device', set_device)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability[index_of(device)])
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    return calls


def test_auto_precision_follows_the_chosen_gpus_capability(fake_gpus):
    """bf16 needs compute capability >= 8.0 (Ampere); below it (T4, V100) auto is fp16, for
    training (with a GradScaler) and inference alike; asked of the chosen device, not the current."""
    assert runtime.resolve_precision('auto', torch.device('cuda', 0)) == 'bf16'
    assert runtime.resolve_precision('auto', torch.device('cuda', 1)) == 'fp16'
    assert runtime.resolve_precision('auto', torch.device('cuda')) == 'bf16'  # the current device: 0
    with pytest.warns(UserWarning, match='--precision: bf16 .*cuda:1.* 7.5'):
        assert runtime.resolve_precision('bf16', torch.device('cuda', 1)) == 'bf16'  # asked for: kept


# ------------------------------------------------------------------------------ 5. device indices
def test_cuda_n_becomes_the_current_device(fake_gpus):
    """--device cuda:N makes N the current CUDA device: kernels, streams, NCCL, cuDNN handles and
    index-less calls (torch.cuda.synchronize(), memory statistics) go to the GPU the user named."""
    device = runtime.resolve_device('cuda:1')
    assert device == torch.device('cuda', 1)
    assert [torch.device('cuda', d) if isinstance(d, int) else torch.device(d) for d in fake_gpus] == [device]
    assert torch.cuda.current_device() == 1
    assert runtime.resolve_precision('auto', torch.device('cuda')) == 'fp16'  # now asks cuda:1
    with pytest.raises(ValueError, match='--device: cuda:2 .* 2 CUDA'):
        runtime.resolve_device('cuda:2')


def test_run_py_resolves_cuda_n_through_the_runtime(fake_gpus):
    """run.py (single process): --device cuda:1 selects GPU 1 (demo.py, live.py and app.py go
    through the same runtime.resolve_device, in their engines)."""
    import run
    args = run.build_parser().parse_args(['--config', str(TINY), '--device', 'cuda:1'])
    assert run.setup_device(args, False, 0) == torch.device('cuda', 1)
    assert torch.cuda.current_device() == 1
