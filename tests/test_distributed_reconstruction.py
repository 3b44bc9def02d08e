"""Evaluation over processes: torchrun splits the test videos (reconstruction) or pairs (animate); rank 0
writes the merged report, and the files are those one process writes."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from modules.networks import build_networks
from media.synthetic import write_dataset
from media.video_io import open_video


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny config over 3 synthetic test videos (an odd count: the ranks get unequal shares) and
    a checkpoint of seeded random weights."""
    tmp = tmp_path_factory.mktemp('recon')
    root = write_dataset(str(tmp / 'shapes'), size=64, num_train=1, num_test=3, frames=6, seed=3, progress=False)
    cfg = yaml.safe_load((ROOT / 'tests' / 'tiny.yaml').read_text())
    cfg['dataset_params']['root_dir'] = str(root)
    cfg['animate_params']['num_pairs'] = 5  # of the 9 (driving, source) pairs: unequal shares too
    config_path = tmp / 'tiny.yaml'
    config_path.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    generator, kp_detector, _ = build_networks(cfg['model_params'], discriminator=False)
    checkpoint = tmp / 'tiny.pth.tar'
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 0}, checkpoint)
    return tmp, str(config_path), str(checkpoint)


def run_mode(command, mode: str, log_dir, config_path, checkpoint) -> tuple:
    """run.py --mode `mode` started by `command` (python, or torchrun); (the run folder, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    args = [str(ROOT / 'run.py'), '--config', config_path, '--mode', mode, '--checkpoint', checkpoint,
            '--log_dir', str(log_dir), '--device', 'cpu', '--precision', 'fp32', '--batch_size', '4']
    res = subprocess.run(command + args, capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p for p in log_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # every rank wrote into the one run folder
    return runs[0], res.stderr


def reconstruct(command, log_dir, config_path, checkpoint) -> dict:
    folder = run_mode(command, 'reconstruction', log_dir, config_path, checkpoint)[0] / 'reconstruction'
    report = json.loads((folder / 'metrics.json').read_text())
    report['files'] = sorted(p.name for p in folder.iterdir() if p.suffix == '.mp4')
    return report


def test_two_processes_write_the_same_metrics_as_one(setup):
    tmp, config_path, checkpoint = setup
    one = reconstruct([sys.executable], tmp / 'one', config_path, checkpoint)
    two = reconstruct([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'],
                      tmp / 'two', config_path, checkpoint)
    assert (one['processes'], two['processes']) == (1, 2)  # the work was split
    assert len(one['videos']) == 3 and one['files'] == two['files'] and len(two['files']) == 3
    assert [v['name'] for v in two['videos']] == [v['name'] for v in one['videos']]  # the same order
    for a, b in zip(one['videos'] + [one['mean']], two['videos'] + [two['mean']]):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert b[key] == value, key


def animate_pairs(command, log_dir, config_path, checkpoint) -> tuple:
    run, log = run_mode(command, 'animate', log_dir, config_path, checkpoint)
    return {p.name: open_video(p).read_all() for p in sorted((run / 'animation').iterdir())}, log


def test_two_processes_animate_the_same_pairs_as_one(setup):
    tmp, config_path, checkpoint = setup
    one, _ = animate_pairs([sys.executable], tmp / 'anim-one', config_path, checkpoint)
    two, log = animate_pairs([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'],
                             tmp / 'anim-two', config_path, checkpoint)
    assert 'animation: 5 pairs by 2 processes (3 + 2)' in log, log[-2000:]  # the work was split
    assert len(one) == 5 and sorted(one) == sorted(two)  # every pair once, none twice or lost
    for name, frames in one.items():
        assert frames.shape == two[name].shape and (frames == two[name]).all(), name
