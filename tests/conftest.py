"""Shared test helpers: the ../shared folder (skip cleanly when absent), tiny configs, seeded VGG.

Where the CI environment variable is set, no test skips silently: a skip (a missing package,
browser, shared folder or build) fails instead, naming what was missing; only tests marked
`allow_skip_in_ci` (hardware the CI machine does not have, such as CUDA) may skip there."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / '..' / 'shared').resolve()
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / 'bench'))  # the per-frame baseline (bench/baseline.py) and the learning check

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test with the reason; where the CI environment variable
    is set the shared folder must be there, so its absence fails instead (no silent skips in CI)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        reason = 'needs %s (the shared fixtures/data folder beside the repository); absent here' % p
        if os.environ.get('CI'):
            pytest.fail(reason + ' (CI is set: the shared folder must be present)')
        pytest.skip(reason)
    return p


def _no_skips_in_ci(report, item=None) -> None:
    """Under CI, turn a skip into a failure that says why it would have skipped."""
    if not os.environ.get('CI') or not report.skipped or hasattr(report, 'wasxfail'):
        return
    if item is not None and item.get_closest_marker('allow_skip_in_ci') is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = 'failed'
    report.longrepr = 'skipped under CI=1 (a CI run must exercise every test): %s' % reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _no_skips_in_ci(outcome.get_result(), item)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole file at collection
    _no_skips_in_ci(outcome.get_result())


def require(module: str, reason: str):
    """The module imported, or skip the test with the reason (fail where CI is set: nothing may
    skip there)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get('CI'):
            pytest.fail(reason + ' (CI is set: nothing may skip)')
        pytest.skip(reason)


TINY = ROOT / 'tests' / 'tiny.yaml'  # a tiny model for fast CPU tests (64x64 frames, 4 keypoints)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """A synthetic moving-shapes dataset: 4 training and 2 test videos of 8 frames, 64x64."""
    from media.synthetic import write_dataset
    root = tmp_path_factory.mktemp('shapes')
    write_dataset(str(root), size=64, num_train=4, num_test=2, frames=8, seed=0, progress=False)
    return root


def tiny_config_file(tmp_path, root, name: str = 'tiny.yaml', **train_params) -> str:
    """tests/tiny.yaml on the videos in `root`, with train_params changed (a loss weight's name,
    e.g. generator_gan, changes train_params.loss_weights), written into tmp_path."""
    import yaml
    cfg = yaml.safe_load(TINY.read_text())
    cfg['dataset_params']['root_dir'] = str(root)
    for key, value in train_params.items():
        section = cfg['train_params']['loss_weights'] if key in cfg['train_params']['loss_weights'] else cfg['train_params']
        section[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def seeded_torch_home(tmp_path, monkeypatch):
    """A $TORCH_HOME holding seeded random VGG19 weights where torch.hub looks for the ImageNet file."""
    from modules.model import VGG19_FILE, seeded_vgg19_state
    folder = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    torch.save(seeded_vgg19_state(0), folder / VGG19_FILE)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home'


@pytest.fixture(scope='module')
def one_thread():
    """Tiny models gain nothing from more threads, and a second busy process on this 2-core
    machine makes OpenMP threads wait on each other: one thread keeps these tests fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def haar_ok() -> bool:
    """Whether OpenCV with its Haar cascade files is here (OpenCV 5 dropped them)."""
    from analysis import face
    try:
        face.make_detector('haar')
    except face.FaceToolsError:
        return False
    return True


def box_inside(box, outer) -> bool:
    """An (x0, y0, x1, y1) box lies within another."""
    return box[0] >= outer[0] and box[1] >= outer[1] and box[2] <= outer[2] and box[3] <= outer[3]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def app_server(tmp_path_factory):
    """app.py started once for the tests that need a running server (the in-browser page at /web/,
    the scripts API): (url, process); its log is shown when it fails to start."""
    import subprocess
    import time
    import urllib.request

    require('gradio', 'the web app needs gradio: pip install -r requirements-app.txt')
    port = free_port()
    log = tmp_path_factory.mktemp('app-server') / 'app.log'
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), GRADIO_ANALYTICS_ENABLED='False')
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / 'app.py'), '--port', str(port), '--precision', 'fp32'],
                                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT, env=env)
    url = 'http://127.0.0.1:%d/' % port
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as res:
                if res.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail('app.py did not start:\n%s' % log.read_text()[-3000:])
        time.sleep(0.3)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
