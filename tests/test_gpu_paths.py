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

from conftest import ROOT, TINY, tiny_config_file
from core import runtime
from core.checkpoint import read_checkpoint
from core.config import load_config
from modules.model import GeneratorFullModel
from modules.networks import build_networks
from train import make_optimizers, place_networks, prepare_step, resume, step_options, to_device, train_step

CPU = torch.device('cpu')


def tiny_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {'source': torch.rand(2, 3, 64, 64, generator=g), 'driving': torch.rand(2, 3, 64, 64, generator=g)}


# ------------------------------------------------------------- 1. resumed Adam states and layouts
def contiguous_checkpoint(config, path) -> dict:
    """A checkpoint as every published one (and any fp32 run on CUDA): default-layout networks,
    for-loop Adam after one step, so the moments are in the default (contiguous) layout."""
    torch.manual_seed(0)
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    options = step_options(CPU, 'fp32', channels_last=False, fused_adam=False)
    optimizers, _ = make_optimizers(generator, discriminator, kp_detector, config.train_params)
    full, disc_full, scaler = prepare_step(config, generator, discriminator, kp_detector, CPU, options)
    torch.manual_seed(3)
    train_step(to_device(tiny_batch(2), CPU, options), full, disc_full, optimizers, scaler, CPU, 'fp32', True)
    state = {'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(),
             'discriminator': discriminator.state_dict(), 'epoch': 0,
             **{name: opt.state_dict() for name, opt in optimizers.items()}}
    torch.save(state, path)
    return state


def resumed_bf16_step(config, checkpoint, fused: bool):
    """Resume `checkpoint` into a channels-last bf16 run (the CPU default, and bf16/fp16 on CUDA)
    and take one step: (parameters before, after, the optimizers)."""
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    options = step_options(CPU, 'bf16', fused_adam=fused)
    assert options.channels_last
    nets = (generator, discriminator, kp_detector)
    place_networks(nets, CPU, options)
    optimizers, schedulers = make_optimizers(generator, discriminator, kp_detector, config.train_params,
                                             fused=fused)
    resume(checkpoint, generator, discriminator, kp_detector, optimizers, schedulers,
           config.train_params.epoch_milestones, verbose=False)
    full, disc_full, scaler = prepare_step(config, generator, discriminator, kp_detector, CPU, options)
    params = lambda: {'%d.%s' % (i, n): p.detach().clone() for i, net in enumerate(nets)  # noqa: E731
                      for n, p in net.named_parameters()}
    before = params()
    torch.manual_seed(5)
    train_step(to_device(tiny_batch(), CPU, options), full, disc_full, optimizers, scaler, CPU, 'bf16', True)
    return before, params(), optimizers


def test_resume_contiguous_adam_states_into_a_channels_last_bf16_run(tmp_path, seeded_torch_home, one_thread):
    """Published checkpoints hold Adam moments in the default layout; a channels-last run's fused
    Adam reads its tensors as flat memory, so moments of another layout were applied to the wrong
    weights (silently on CPU; on CUDA the fused kernel refuses). Resumed states must take their
    parameter's layout, and the fused step then equals the for-loop Adam's."""
    config = load_config(str(TINY), mode='train')
    checkpoint = str(tmp_path / 'contiguous.pth.tar')
    saved = contiguous_checkpoint(config, checkpoint)
    assert all(s['exp_avg'].is_contiguous() for s in saved['optimizer_generator']['state'].values())
    before, fused, optimizers = resumed_bf16_step(config, checkpoint, fused=True)
    for opt in optimizers.values():
        for group in opt.param_groups:
            for p in group['params']:
                for key in ('exp_avg', 'exp_avg_sq'):
                    assert opt.state[p][key].stride() == p.stride(), key
    _, loop, _ = resumed_bf16_step(config, checkpoint, fused=False)
    # The same gradients go into both (same weights, inputs, layout and random transform); the two
    # Adam implementations then differ by rounding only: the update u = lr * m^ / (sqrt(v^) + eps)
    # takes about ten float32 roundings (moments, bias corrections, sqrt, division, product), each
    # within 2^-24 relative, so |du| <= 10 * 2^-24 |u| < 2^-20 |u|, and writing p - u rounds once
    # more, within 2^-24 |p|. Twice that bound per element:
    worst = 0.0
    for name, p in loop.items():
        update = (p - before[name]).abs()
        bound = 2 * (2 ** -20 * update + 2 ** -24 * torch.maximum(p.abs(), before[name].abs())) + 1e-30
        worst = max(worst, float(((fused[name] - p).abs() / bound).max()))
        assert torch.all((fused[name] - p).abs() <= bound), name
    moved = max(float((loop[n] - before[n]).abs().max()) for n in loop)
    assert moved > 1e-5  # the step did move the weights


# ------------------------------------------------------------------- 2. ranks that agree to stop
@pytest.mark.parametrize('case', ['deadline', 'signal', 'nan'])
def test_ranks_stop_together(tmp_path, shapes, seeded_torch_home, case):
    """Rank 1 alone runs out of time, gets SIGINT, or sees a non-finite loss: both ranks stop after
    the same step, nobody waits in a collective the other left (a hang), and rank 0 saves (the
    time budget: a numbered checkpoint; the signal: the interrupt checkpoint; the NaN: nothing,
    and both report it)."""
    cfg = tiny_config_file(tmp_path, shapes, num_repeats=20)  # 20 steps per epoch per rank
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(ROOT / 'tests' / 'ddp_stop_worker.py'), cfg, str(tmp_path), case],
                         capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / ('rank%d.json' % r)).read_text()) for r in (0, 1)]
    checkpoints = sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir())
    if case == 'nan':
        assert all('non-finite loss perceptual' in r['error'] for r in ranks), ranks
        assert checkpoints == []
        return
    assert ranks[0] == ranks[1], ranks
    if case == 'deadline':
        assert ranks[0] == {'steps': 1, 'stopped_early': False, 'error': None}
        assert checkpoints == ['00000000-checkpoint.pth.tar']
    else:
        assert ranks[0] == {'steps': 2, 'stopped_early': True, 'error': None}
        assert checkpoints == ['checkpoint.pth.tar']
        assert read_checkpoint(str(tmp_path / 'run' / 'checkpoints' / 'checkpoint.pth.tar'))['epoch'] == -1


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


# ---------------------------------------------------------------------- 6. the fp16 GradScaler
def test_fp16_grad_scaler_state_is_saved_and_restored(tmp_path, shapes, seeded_torch_home, one_thread):
    """An fp16 run saves its GradScaler (scale, growth tracker) with each checkpoint and a resumed
    run restores it (a fresh scale of 2^16 would spend its first steps skipping updates);
    checkpoints without it (published, bf16/fp32 runs) still resume with a fresh scaler."""
    from frames_dataset import FramesDataset
    from train import train
    config = load_config(tiny_config_file(tmp_path, shapes, num_epochs=1, generator_gan=0), mode='train')
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    dataset = FramesDataset(is_train=True, random_seed=0, **config.to_dict()['dataset_params'])
    # fp16 autocast on the CPU is slow but exists: the same code path as on CUDA
    train(config, generator, discriminator, kp_detector, None, str(tmp_path / 'run'), dataset, CPU,
          precision='fp16', num_workers=0, max_steps=1)
    path = tmp_path / 'run' / 'checkpoints' / '00000000-checkpoint.pth.tar'
    state = read_checkpoint(str(path))
    scale = state['grad_scaler']['scale']  # 2^16, halved at each step whose fp16 gradients overflowed
    assert scale in (2.0 ** 16, 2.0 ** 15) and '_growth_tracker' in state['grad_scaler']
    state['grad_scaler'].update(scale=1024.0, _growth_tracker=7)
    torch.save(state, path)

    def resumed_scaler(checkpoint):
        nets = build_networks(config.to_dict()['model_params'])
        optimizers, schedulers = make_optimizers(nets[0], nets[2], nets[1], config.train_params)
        scaler = torch.amp.GradScaler('cpu', enabled=True)
        resume(str(checkpoint), nets[0], nets[2], nets[1], optimizers, schedulers, [], verbose=False,
               grad_scaler=scaler)
        return scaler
    scaler = resumed_scaler(path)
    assert scaler.get_scale() == 1024.0 and scaler.state_dict()['_growth_tracker'] == 7
    del state['grad_scaler']
    old = tmp_path / 'old.pth.tar'
    torch.save(state, old)
    assert resumed_scaler(old).get_scale() == 2.0 ** 16


# ------------------------------------------------------- 7. the scheduler steps after its optimizer
@pytest.mark.parametrize('gan', [0, 1], ids=['without-gan', 'with-gan'])
def test_training_calls_no_scheduler_before_its_optimizer(tmp_path, shapes, seeded_torch_home, one_thread, gan):
    """torch warns 'lr_scheduler.step() before optimizer.step()' when a scheduler steps an
    optimizer that never stepped: the discriminator's, in every config without the GAN loss
    (vox-256, taichi-256, ... the published non-adv configs). No such warning, and the
    discriminator's learning rate is on the config's schedule in the checkpoint."""
    from frames_dataset import FramesDataset
    from train import train
    config = load_config(tiny_config_file(tmp_path, shapes, generator_gan=gan), mode='train')  # 2 epochs, milestone 1
    nets = build_networks(config.to_dict()['model_params'])
    dataset = FramesDataset(is_train=True, random_seed=0, **config.to_dict()['dataset_params'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        train(config, nets[0], nets[2], nets[1], None, str(tmp_path / 'run'), dataset, CPU, precision='fp32',
              num_workers=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if 'lr_scheduler.step()' in m], messages
    state = read_checkpoint(str(tmp_path / 'run' / 'checkpoints' / '00000001-checkpoint.pth.tar'))
    for name in ('optimizer_generator', 'optimizer_kp_detector', 'optimizer_discriminator'):
        assert state[name]['param_groups'][0]['lr'] == pytest.approx(2e-5), name  # past the milestone
    assert 'grad_scaler' not in state  # fp32: no GradScaler, the original layout


# ---------------------------------------------------------------- 6. workers and process groups
def test_default_workers_are_shared_by_the_processes_of_a_machine(monkeypatch):
    """8 processes on a 16-CPU machine (torchrun sets LOCAL_WORLD_SIZE) share its CPUs: one
    worker each, not 8 each (64 workers and their memory)."""
    import frames_dataset
    monkeypatch.setattr(frames_dataset, 'cpu_count', lambda: 16)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert frames_dataset.default_num_workers() == 8
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    assert frames_dataset.default_num_workers() == 1
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    assert frames_dataset.default_num_workers() == 7
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '32')
    assert frames_dataset.default_num_workers() == 0


@pytest.mark.parametrize('mode', ['train', 'reconstruction', 'animate'])
def test_evaluation_process_group_waits_for_uneven_shares(monkeypatch, mode):
    """Under torchrun, reconstruction and animate gather results once every rank is done: with
    videos of uneven lengths one rank may wait far longer than NCCL's 10-minute default timeout.
    Evaluation gets a longer one; training keeps the default (a hang there is reported sooner)."""
    import datetime

    import run
    seen = {}
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kwargs: seen.update(kwargs))
    args = run.build_parser().parse_args(['--config', str(TINY), '--mode', mode, '--device', 'cpu'])
    assert run.setup_device(args, True, 0) == CPU
    assert seen['backend'] == 'gloo'
    if mode == 'train':
        assert seen.get('timeout') is None
    else:
        assert seen['timeout'] >= datetime.timedelta(hours=1)


# ------------------------------------------------------- 6. the fp16 export on the CUDA provider
@pytest.fixture
def tiny_export_networks():
    pytest.importorskip('onnxruntime', reason='needs onnxruntime (pip install -r requirements-onnx.txt)')
    from engine.torch_engine import load_networks
    torch.manual_seed(0)
    return load_networks(str(TINY))


def test_fp16_export_is_checked_on_the_cuda_provider_when_there(tmp_path, monkeypatch, tiny_export_networks,
                                                                one_thread):
    """A float16 graph is meant for GPU runtimes: where onnxruntime has the CUDA provider, export.py
    --fp16 also runs each graph there, and a session whose first provider is not CUDA (onnxruntime
    falls back to the CPU silently, e.g. without cuDNN) fails the export. Here the CUDA provider is
    reported but absent, so the session falls back: the export must refuse, naming it."""
    import onnxruntime as ort

    import export
    generator, kp_detector, config = tiny_export_networks
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CUDAExecutionProvider'] + real)
    with pytest.raises(export.ExportFailed, match='CUDAExecutionProvider.*CPUExecutionProvider'):
        export.export_model(generator, kp_detector, config, str(tmp_path / 'fp16'), fp16=True, threads=1)
    assert not (tmp_path / 'fp16' / 'manifest.json').exists()
    # float32 graphs are checked where torch's are: on the CPU provider only
    manifest = export.export_model(generator, kp_detector, config, str(tmp_path / 'fp32'), threads=1)
    assert manifest['check']['providers'] == ['CPUExecutionProvider']


def test_fp16_export_check_covers_both_providers(tmp_path, monkeypatch, tiny_export_networks, one_thread):
    """With a CUDA provider that loads (a stand-in session here: onnxruntime's CPU one, reporting
    CUDA first), the fp16 check runs each graph on both providers and records the larger difference."""
    import onnxruntime as ort

    import export
    generator, kp_detector, config = tiny_export_networks
    real_session, real = ort.InferenceSession, ort.get_available_providers()
    asked = []

    class Session(real_session):
        def __init__(self, path, options=None, providers=None, **kwargs):
            asked.append(list(providers))
            super().__init__(path, options, providers=['CPUExecutionProvider'])
            self.cuda = providers[0] == 'CUDAExecutionProvider'

        def get_providers(self):
            return (['CUDAExecutionProvider'] if self.cuda else []) + super().get_providers()
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CUDAExecutionProvider'] + real)
    monkeypatch.setattr(ort, 'InferenceSession', Session)
    manifest = export.export_model(generator, kp_detector, config, str(tmp_path), fp16=True, threads=1)
    assert manifest['check']['providers'] == ['CPUExecutionProvider', 'CUDAExecutionProvider']
    assert sum(1 for p in asked if p[0] == 'CUDAExecutionProvider') == 3  # each graph
    assert 0 < max(manifest['check']['max_abs_diff'].values()) <= export.TOLERANCE['fp16']
