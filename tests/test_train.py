"""Training: outputs, resume, DDP, interrupt, NaN guard (tiny config on synthetic videos, CPU)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_config_file
from core.checkpoint import read_checkpoint
from core.config import load_config


def run_main(args):
    import run
    return run.main(args)


def only_run_dir(log_dir: Path) -> Path:
    runs = [p for p in log_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert ' ' not in runs[0].name and runs[0].name.startswith('tiny_')
    return runs[0]


def test_two_epochs_then_resume(tmp_path, shapes, seeded_torch_home):
    cfg = tiny_config_file(tmp_path, shapes)
    log_dir = tmp_path / 'log'
    assert run_main(['--config', cfg, '--log_dir', str(log_dir), '--num_workers', '0', '--seed', '1']) == 0
    run_dir = only_run_dir(log_dir)
    lines = (run_dir / 'log.txt').read_text().splitlines()
    assert [l.split(')')[0] for l in lines] == ['00000000', '00000001']
    assert 'perceptual' in lines[0] and 'disc_gan' in lines[0]
    assert (run_dir / 'train-vis' / '00000001-rec.png').stat().st_size > 1000
    assert load_config(str(run_dir / 'config.yaml')).train_params.num_epochs == 2
    ck0 = read_checkpoint(str(run_dir / 'checkpoints' / '00000000-checkpoint.pth.tar'))
    ck1 = read_checkpoint(str(run_dir / 'checkpoints' / '00000001-checkpoint.pth.tar'))
    assert ck0['epoch'] == 0 and ck1['epoch'] == 1 and ck1['format_version'] == 1
    assert set(ck1) >= {'generator', 'kp_detector', 'discriminator', 'optimizer_generator',
                        'optimizer_kp_detector', 'optimizer_discriminator', 'config'}
    steps_per_epoch = 4 // 2
    step_of = lambda ck: max(s['step'] for s in ck['optimizer_generator']['state'].values())  # noqa: E731
    assert step_of(ck0) == steps_per_epoch and step_of(ck1) == 2 * steps_per_epoch
    # the MultiStepLR milestone at epoch 1 lowered the learning rate
    assert ck1['optimizer_generator']['param_groups'][0]['lr'] == pytest.approx(2e-5)

    # resume from the newest checkpoint with 3 epochs: continues at epoch 2 in the same run folder
    cfg3 = tiny_config_file(tmp_path, shapes, num_epochs=3)
    (run_dir / 'config.yaml').write_text(Path(cfg3).read_text())
    ckpt = str(run_dir / 'checkpoints' / '00000001-checkpoint.pth.tar')
    assert run_main(['--config', cfg3, '--checkpoint', ckpt, '--num_workers', '0']) == 0
    lines = (run_dir / 'log.txt').read_text().splitlines()
    assert [l.split(')')[0] for l in lines] == ['00000000', '00000001', '00000002']
    ck2 = read_checkpoint(str(run_dir / 'checkpoints' / '00000002-checkpoint.pth.tar'))
    assert step_of(ck2) == 3 * steps_per_epoch  # Adam's step count carried over
    assert ck2['scheduler_generator']['last_epoch'] == 3

    # an older checkpoint of a run that went further: refused (later checkpoints and log lines stay),
    # and with --fork it continues at epoch 1 in a new run folder, optimizer restored
    before = {p.name: p.read_bytes() for p in (run_dir / 'checkpoints').iterdir()}
    log_before = (run_dir / 'log.txt').read_text()
    old = str(run_dir / 'checkpoints' / '00000000-checkpoint.pth.tar')
    assert run_main(['--config', cfg3, '--checkpoint', old, '--num_workers', '0']) == 1
    assert {p.name: p.read_bytes() for p in (run_dir / 'checkpoints').iterdir()} == before
    assert (run_dir / 'log.txt').read_text() == log_before
    fork_log = tmp_path / 'forks'
    assert run_main(['--config', cfg3, '--checkpoint', old, '--fork', '--log_dir', str(fork_log),
                     '--num_workers', '0']) == 0
    fork = only_run_dir(fork_log)
    assert [l.split(')')[0] for l in (fork / 'log.txt').read_text().splitlines()] == ['00000001', '00000002']
    ck2 = read_checkpoint(str(fork / 'checkpoints' / '00000002-checkpoint.pth.tar'))
    assert step_of(ck2) == 3 * steps_per_epoch  # Adam's step count carried over from epoch 0
    assert ck2['scheduler_generator']['last_epoch'] == 3
    assert {p.name: p.read_bytes() for p in (run_dir / 'checkpoints').iterdir()} == before

    # an original checkpoint (no scheduler entries) saved after the milestone: its optimizer already
    # holds the lowered rate; the milestones are replayed from the config's rate, not applied again
    original = {k: v for k, v in ck1.items() if not k.startswith('scheduler_')}
    assert original['optimizer_generator']['param_groups'][0]['lr'] == pytest.approx(2e-5)
    orig_path = tmp_path / 'original.pth.tar'
    torch.save(original, orig_path)
    log2 = tmp_path / 'log2'
    assert run_main(['--config', cfg3, '--checkpoint', str(orig_path), '--log_dir', str(log2),
                     '--num_workers', '0']) == 0
    ck = read_checkpoint(str(only_run_dir(log2) / 'checkpoints' / '00000002-checkpoint.pth.tar'))
    for name in ('optimizer_generator', 'optimizer_kp_detector', 'optimizer_discriminator'):
        assert ck[name]['param_groups'][0]['lr'] == pytest.approx(2e-5), name
    assert ck['scheduler_generator']['last_epoch'] == 3

    # the config resumed with governs the schedule: without milestones the rate is back at 2e-4
    cfg_flat = tiny_config_file(tmp_path, shapes, num_epochs=3, epoch_milestones=[])
    log3, ours = tmp_path / 'log3', tmp_path / 'ours.pth.tar'
    ours.write_bytes((run_dir / 'checkpoints' / '00000001-checkpoint.pth.tar').read_bytes())
    assert run_main(['--config', cfg_flat, '--checkpoint', str(ours), '--log_dir', str(log3), '--num_workers', '0']) == 0
    ck = read_checkpoint(str(only_run_dir(log3) / 'checkpoints' / '00000002-checkpoint.pth.tar'))
    assert ck['optimizer_generator']['param_groups'][0]['lr'] == pytest.approx(2e-4)


def test_ddp_two_processes_keep_identical_weights(tmp_path, shapes, seeded_torch_home):
    cfg = tiny_config_file(tmp_path, shapes)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(ROOT / 'tests' / 'ddp_worker.py'), cfg, str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    for net in ('generator', 'kp_detector', 'discriminator'):
        for k, v in r0[net].items():
            if 'running_' in k or 'num_batches' in k or 'weight_u' in k or 'weight_v' in k:
                continue  # per-process statistics (BatchNorm without --sync_bn, spectral-norm vectors)
            assert torch.allclose(v, r1[net][k], atol=1e-6), (net, k)


@pytest.mark.parametrize('sig, workers, group', [(signal.SIGINT, 0, False), (signal.SIGTERM, 1, True)],
                         ids=['sigint-to-the-process', 'sigterm-to-the-process-group-with-a-loader-worker'])
def test_a_signal_mid_epoch_leaves_a_loadable_checkpoint(tmp_path, shapes, seeded_torch_home, sig, workers, group):
    # group: the signal reaches the DataLoader worker too (a terminal's Ctrl-C, `kill -- -PGID`, a
    # scheduler's SIGTERM); the main process must still save
    cfg = tiny_config_file(tmp_path, shapes, num_repeats=200, num_epochs=1)
    log_dir = tmp_path / 'log'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, str(ROOT / 'run.py'), '--config', cfg, '--log_dir', str(log_dir),
                             '--num_workers', str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(ROOT), start_new_session=group)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(log_dir.glob('*/config.yaml')):
            time.sleep(0.2)
        time.sleep(4)  # a few training steps
        assert proc.poll() is None, proc.communicate()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    run_dir = only_run_dir(log_dir)
    ckpt = run_dir / 'checkpoints' / 'checkpoint.pth.tar'
    state = read_checkpoint(str(ckpt))
    assert state['epoch'] == -1  # epoch 0 was not finished: resuming starts it again
    assert not list((run_dir / 'checkpoints').glob('*.tmp'))
    from modules.networks import build_networks
    gen, kp, disc = build_networks(load_config(cfg).to_dict()['model_params'])
    from logger import Logger
    assert Logger.load_cpk(str(ckpt), generator=gen, kp_detector=kp, discriminator=disc) == -1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shapes, seeded_torch_home, monkeypatch, capsys):
    cfg = tiny_config_file(tmp_path, shapes, num_epochs=3, epoch_milestones=[])
    log_dir = tmp_path / 'log'
    from modules import model
    original = model.GeneratorFullModel.forward
    calls = {'n': 0}

    def poisoned(self, x):
        losses, generated = original(self, x)
        calls['n'] += 1
        if calls['n'] > 2:  # epoch 0 (2 steps) is fine, then the loss blows up
            losses['perceptual'] = losses['perceptual'] * float('nan')
        return losses, generated
    monkeypatch.setattr(model.GeneratorFullModel, 'forward', poisoned)
    assert run_main(['--config', cfg, '--log_dir', str(log_dir), '--num_workers', '0']) == 1
    err = capsys.readouterr().err
    assert 'non-finite loss perceptual' in err and 'last good checkpoint' in err
    run_dir = only_run_dir(log_dir)
    names = sorted(p.name for p in (run_dir / 'checkpoints').iterdir())
    assert names == ['00000000-checkpoint.pth.tar']
    state = read_checkpoint(str(run_dir / 'checkpoints' / names[0]))
    assert all(torch.isfinite(v).all() for v in state['generator'].values() if v.is_floating_point())
