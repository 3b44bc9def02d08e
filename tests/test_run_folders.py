"""Runs never share a folder: two trainings of one config started in the same second get a folder
each, evaluations of one checkpoint get their own sub-folder per run, and a run that is still
training cannot be resumed by a second process (tiny config on synthetic videos, CPU)."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, tiny_config_file
from core.checkpoint import read_checkpoint


def tiny_config(tmp_path, root) -> str:
    """Two epochs of one step, a checkpoint each, one test video to reconstruct."""
    path = tiny_config_file(tmp_path, root, num_epochs=2, num_repeats=1, checkpoint_freq=1)
    cfg = yaml.safe_load(open(path).read())
    cfg['reconstruction_params']['num_videos'] = 1
    open(path, 'w').write(yaml.safe_dump(cfg))
    return path


# run.py with the run folder's timestamp frozen: both processes pick the same name, as two runs
# started in the same second do
SAME_SECOND = ("import sys; sys.path.insert(0, %r); import logger; "
               "logger.run_dir_name = lambda name, when=None: name + '_20260101-000000'; "
               "import run; sys.exit(run.main(sys.argv[1:]))")


def start_run(*args, env=None):
    return subprocess.Popen([sys.executable, '-c', SAME_SECOND % str(ROOT)] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env)


def test_two_trainings_started_together_get_a_folder_each(tmp_path, shapes, seeded_torch_home):
    cfg, log = tiny_config(tmp_path, shapes), tmp_path / 'log'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    runs = [start_run('--config', cfg, '--log_dir', log, '--num_workers', 0, '--seed', seed, env=env)
            for seed in (1, 2)]
    outs = [r.communicate(timeout=240) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1][-2000:] for o in outs]
    folders = sorted(p.name for p in log.iterdir())
    assert folders == ['tiny_20260101-000000', 'tiny_20260101-000000-2'], folders
    assert sorted(o[0].strip().splitlines()[-1] for o in outs) == [str(log / f) for f in folders]  # each its own
    states = []
    for folder in folders:
        run = log / folder
        lines = (run / 'log.txt').read_text().splitlines()
        assert [line.split(')')[0] for line in lines] == ['00000000', '00000001'], lines  # not interleaved
        assert not (run / '.fomm-training').exists()  # the lock is released at the end
        states.append(read_checkpoint(str(run / 'checkpoints' / '00000001-checkpoint.pth.tar')))
    # different seeds: if one had overwritten the other's checkpoint, both would hold the same weights
    a, b = (s['generator'] for s in states)
    assert any(not a[k].equal(b[k]) for k in a if a[k].is_floating_point())


def claim(args):
    from logger import claim_folder
    return claim_folder(args)


def test_claim_folder_gives_each_process_its_own(tmp_path):
    with multiprocessing.get_context('spawn').Pool(6) as pool:
        got = pool.map(claim, [str(tmp_path / 'run')] * 6)
    assert sorted(got) == sorted([str(tmp_path / 'run')] + [str(tmp_path / ('run-%d' % n)) for n in range(2, 7)])


def test_evaluations_of_one_checkpoint_get_their_own_folders(tmp_path, shapes, seeded_torch_home):
    import run
    cfg, log = tiny_config(tmp_path, shapes), tmp_path / 'log'
    assert run.main(['--config', cfg, '--log_dir', str(log), '--num_workers', '0', '--max_steps', '1']) == 0
    (folder,) = log.iterdir()
    checkpoint = sorted((folder / 'checkpoints').glob('0*-checkpoint.pth.tar'))[-1]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    evals = [start_run('--config', cfg, '--log_dir', log, '--mode', 'reconstruction', '--checkpoint', checkpoint,
                       '--batch_size', 2, env=env) for _ in range(2)]
    outs = [e.communicate(timeout=240) for e in evals]
    assert all(e.returncode == 0 for e in evals), [o[1][-2000:] for o in outs]
    printed = sorted(Path(o[0].strip().splitlines()[-1]) for o in outs)  # run.py's last line: the folder written
    assert len(set(printed)) == 2 and all(p.parent == folder and p.name.startswith('reconstruction_') for p in printed)
    for p in printed:
        report = json.loads((p / 'metrics.json').read_text())
        assert len(report['videos']) == 1 and len(list(p.glob('*.mp4'))) == 1


def test_resuming_a_run_that_is_still_training_is_refused(tmp_path, shapes, seeded_torch_home, capsys):
    import run
    from logger import LOCK_NAME, RunLock
    cfg, log = tiny_config(tmp_path, shapes), tmp_path / 'log'
    assert run.main(['--config', cfg, '--log_dir', str(log), '--num_workers', '0', '--max_steps', '1']) == 0
    (folder,) = log.iterdir()
    checkpoint = sorted((folder / 'checkpoints').glob('*.pth.tar'))[-1]
    before = (folder / 'log.txt').read_text()
    capsys.readouterr()
    with RunLock(str(folder)):  # another process trains there now (this one, standing in for it)
        assert run.main(['--config', cfg, '--log_dir', str(log), '--checkpoint', str(checkpoint),
                         '--num_workers', '0', '--max_steps', '1']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'is being trained now' in err[0] and '--fork' in err[0], err
    assert (folder / 'log.txt').read_text() == before
    # a lock left by a killed training on this machine is taken over
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    from media.outputs import writer_id
    (folder / LOCK_NAME).write_text(json.dumps({'writer': writer_id(), 'pid': dead.pid, 'host': 'here'}))
    assert run.main(['--config', cfg, '--log_dir', str(log), '--checkpoint', str(checkpoint),
                     '--num_workers', '0', '--max_steps', '1']) == 0
    assert not (folder / LOCK_NAME).exists()
