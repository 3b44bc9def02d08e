"""run.py's multi-process and device paths, precision choice, reduced-precision training steps, and
the VGG19 weight files, each checked through the code users run."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, tiny_config_file
from core.checkpoint import read_checkpoint

def torchrun(*args, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(ROOT / 'run.py'), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


def test_torchrun_two_cpu_processes_through_run_py(tmp_path, shapes, seeded_torch_home):
    cfg, log_dir = tiny_config_file(tmp_path, shapes), tmp_path / 'log'
    res = torchrun('--config', cfg, '--log_dir', str(log_dir), '--num_workers', '0', '--max_steps', '2')
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p for p in log_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # one run folder, written by rank 0 only
    assert res.stdout.strip().splitlines()[-1] == str(runs[0])
    # 4 videos over 2 processes at batch 2: one step per epoch per process, so two epochs
    saved = sorted(p.name for p in (runs[0] / 'checkpoints').iterdir())
    assert saved == ['00000000-checkpoint.pth.tar', '00000001-checkpoint.pth.tar'], saved
    state = read_checkpoint(str(runs[0] / 'checkpoints' / saved[-1]))
    # each process stepped twice: Adam's step count is 2, not 4 (gradients are averaged, not summed)
    assert max(s['step'] for s in state['optimizer_generator']['state'].values()) == 2
    assert [l.split(')')[0] for l in (runs[0] / 'log.txt').read_text().splitlines()] == ['00000000', '00000001']


def test_sync_bn_on_cpu_processes_stops_at_start_with_one_line(tmp_path, shapes):
    cfg, log_dir = tiny_config_file(tmp_path, shapes), tmp_path / 'log'
    res = torchrun('--config', cfg, '--log_dir', str(log_dir), '--num_workers', '0', '--sync_bn')
    assert res.returncode != 0
    errors = [l for l in res.stderr.splitlines() if l.startswith('error: ')]
    assert errors and all('--sync_bn' in l and 'CUDA' in l for l in errors), res.stderr[-2000:]
    assert not log_dir.exists()  # stopped before any run folder


def test_device_ids_relaunch_arguments():
    import run
    argv = ['--config', 'c.yaml', '--device_ids', '0,1,3', '--verbose', '--device_ids=2', '--seed', '4']
    command, env = run.torchrun_command('0,1,3', argv)
    assert command[:2] == [sys.executable, '-m'] and command[2] == 'torch.distributed.run'
    assert command[command.index('--nproc_per_node') + 1] == '3' and '--standalone' in command
    script = command.index(str(ROOT / 'run.py'))
    assert command[script + 1:] == ['--config', 'c.yaml', '--verbose', '--seed', '4']  # both --device_ids forms dropped
    assert env['CUDA_VISIBLE_DEVICES'] == '0,1,3'


@pytest.mark.parametrize('capability, cpu_bf16, device, want', [
    ((8, 0), False, 'cuda', 'bf16'), ((7, 5), False, 'cuda', 'fp16'), ((9, 0), True, 'cuda', 'bf16'),
    ((7, 0), False, 'cuda', 'fp16'), ((6, 1), False, 'cuda', 'fp32'),
    ((7, 0), True, 'cpu', 'bf16'), ((8, 0), False, 'cpu', 'fp32'), ((7, 0), False, 'cpu', 'fp32'),
])
def test_resolve_precision_on_each_kind_of_machine(monkeypatch, capability, cpu_bf16, device, want):
    from core import runtime
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: cpu_bf16)
    device = torch.device(device)
    assert runtime.resolve_precision('auto', device) == want
    assert runtime.resolve_precision('fp32', device) == 'fp32'
    if device.type == 'cpu':
        with pytest.raises(ValueError, match='--precision: fp16 is for CUDA'):
            runtime.resolve_precision('fp16', device)
    with pytest.raises(ValueError, match="--precision: 'int8'"):
        runtime.resolve_precision('int8', device)


def test_cpu_bf16_detection_reads_cpuinfo(monkeypatch, tmp_path):
    import builtins

    from core import runtime
    real_open = builtins.open
    for flags, want in (('fpu avx512f avx512_bf16 sse', True), ('fpu amx_bf16 amx_tile', True), ('fpu avx2 sse', False)):
        info = tmp_path / 'cpuinfo'
        info.write_text('processor : 0\nflags : %s\n' % flags)
        monkeypatch.setattr(builtins, 'open', lambda p, *a, **k: real_open(info if p == '/proc/cpuinfo' else p, *a, **k))
        assert runtime.cpu_has_native_bf16() is want


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_training_step_in_reduced_precision(precision, seeded_torch_home, one_thread):
    """train.train_step under autocast (fp16 with a GradScaler): finite losses, the weights move
    (fp16: once the scaler's scale no longer makes the gradients overflow; it skips those steps),
    and (bf16, beside fp32) three more steps on the fixed batch lower the perceptual loss (fp16 on a
    CPU runs at ~9 s a step: its one step shows the scaler's logic, which is what CUDA users meet).

    The first-step losses are not compared with fp32's here: at the config's keypoint temperature
    (0.1) a bf16 rounding of the detector's logits moves keypoints by up to ~0.05 in train mode, and
    every loss follows by an amount that depends on the CPU's bf16 kernels (AMX differs from
    AVX512-BF16). tests/test_model.py bounds the loss arithmetic itself on fixed inputs."""
    from core.config import load_config
    from modules.model import DiscriminatorFullModel, GeneratorFullModel
    from modules.networks import build_networks
    from train import make_optimizers, train_step

    config = load_config(str(TINY))
    tp = config.to_dict()['train_params']
    torch.manual_seed(0)
    nets = build_networks(config.to_dict()['model_params'])
    g = torch.Generator().manual_seed(3)
    x = {'source': torch.rand(2, 3, 64, 64, generator=g), 'driving': torch.rand(2, 3, 64, 64, generator=g)}
    for p in (('fp32', 'bf16') if precision == 'bf16' else ('fp16',)):
        gen, kp, disc = (m for m in build_networks(config.to_dict()['model_params']))
        for mine, ref in zip((gen, kp, disc), nets):
            mine.load_state_dict(ref.state_dict())
        optimizers, _ = make_optimizers(gen, disc, kp, config.train_params)
        before = [t.detach().clone() for t in gen.parameters()]
        # the scaler of train.py, started lower than its 2^16 default so that the few overflowing
        # first steps it skips (each halves the scale) cost less test time; the logic is the same
        scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10, enabled=p == 'fp16')
        full = GeneratorFullModel(kp, gen, disc, tp), DiscriminatorFullModel(kp, gen, disc, tp)
        perceptual, moved_at = [], None
        for step in range(40):
            torch.manual_seed(7)  # the same random equivariance transform
            losses, _ = train_step(x, *full, optimizers, scaler, torch.device('cpu'), p, gan=True)
            assert all(torch.isfinite(v) for v in losses.values()), (p, losses)
            perceptual.append(losses['perceptual'].item())
            if moved_at is None and any(not torch.equal(a, b) for a, b in zip(gen.parameters(), before)):
                moved_at = step
            if moved_at is not None and step >= moved_at + (0 if p == 'fp16' else 3):
                break
        assert moved_at is not None, '%s: the weights never moved' % p
        if p != 'fp16':  # measured here: -3% in both (fp32 79.98 -> 77.49, bf16 79.88 -> 76.69)
            assert perceptual[-1] < perceptual[moved_at], (p, perceptual)
        if p == 'fp16':
            assert scaler.get_scale() <= 2.0 ** 10  # it stepped (and backed off if it overflowed)


def test_vgg_weights_from_torch_home_and_from_a_path(tmp_path, monkeypatch):
    """The documented default reads $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth (no download when
    it is there); train_params.vgg_weights: PATH reads that file; both give exactly its weights."""
    from modules.model import VGG19_FILE, Vgg19, seeded_vgg19_state

    def no_download(*args, **kwargs):
        raise AssertionError('tried to download %s' % (args,))
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_download)
    home = tmp_path / 'home'
    (home / 'hub' / 'checkpoints').mkdir(parents=True)
    weights = seeded_vgg19_state(11)
    torch.save(weights, home / 'hub' / 'checkpoints' / VGG19_FILE)
    monkeypatch.setenv('TORCH_HOME', str(home))
    vgg = Vgg19(weights='imagenet')
    assert torch.equal(vgg.features[0].weight, weights['features.0.weight'])
    assert torch.equal(vgg.features[28].bias, weights['features.28.bias'])  # relu5_1's conv
    other = seeded_vgg19_state(12)
    # a file holding torchvision's whole vgg19 (classifier too) loads its features.* entries
    other['classifier.0.weight'] = torch.zeros(2, 2)
    path = tmp_path / 'my-vgg.pth'
    torch.save(other, path)
    vgg = Vgg19(weights=str(path))
    assert torch.equal(vgg.features[2].weight, other['features.2.weight'])
    assert not torch.equal(vgg.features[2].weight, weights['features.2.weight'])
