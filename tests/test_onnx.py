"""ONNX export (export.py) and the torch-free runtime (engine/onnx_engine.py) against the torch engine."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('onnx', reason='needs onnx (pip install -r requirements-onnx.txt)')
pytest.importorskip('onnxruntime', reason='needs onnxruntime (pip install -r requirements-onnx.txt)')

import export  # noqa: E402
from conftest import ROOT  # noqa: E402
from core.config import load_config  # noqa: E402
from engine.torch_engine import AnimationEngine, load_networks  # noqa: E402
from engine.onnx_engine import MANIFEST, ExportError, OnnxEngine, sha256  # noqa: E402
from media.outputs import is_ours  # noqa: E402
from test_inference import moving_frames, tiny_networks  # noqa: E402
from test_model import PUBLISHED  # noqa: E402

SHAPES_CONFIG = str(ROOT / 'config' / 'shapes-64.yaml')
SHAPES_CHECKPOINT = str(ROOT / 'checkpoints' / 'shapes-64.pth.tar')
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures('one_thread')


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """tests/tiny.yaml with random, non-trivial weights (test_inference.tiny_networks), exported by
    export_model; with the torch engine over the same networks, batch 4."""
    generator, kp_detector, config = tiny_networks()
    folder = tmp_path_factory.mktemp('onnx') / 'tiny'
    export.export_model(generator, kp_detector, config, str(folder), threads=1)
    return folder, AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 4)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """The embedded trained model, exported by the command line."""
    folder = tmp_path_factory.mktemp('onnx') / 'shapes'
    assert export.main(['--config', SHAPES_CONFIG, '--checkpoint', SHAPES_CHECKPOINT, '--out', str(folder)]) == 0
    return folder, AnimationEngine.from_checkpoint(SHAPES_CONFIG, SHAPES_CHECKPOINT, 'cpu', 'fp32', batch_size=4)


def inputs_for(model: str):
    """(source, 16 driving frames): float frames for the tiny model, uint8 for shapes-64."""
    source, frames = moving_frames(1, seed=5)[0], moving_frames(16)
    if model == 'shapes':
        return (source * 255).round().astype(np.uint8), [(f * 255).round().astype(np.uint8) for f in frames]
    return source, frames


# ------------------------------------------------------------------------------ same frames
@pytest.mark.parametrize('relative,adapt_scale', [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize('model', ['tiny', 'shapes'])
def test_animation_matches_torch_engine(request, model, relative, adapt_scale):
    folder, torch_engine = request.getfixturevalue(model)
    engine = OnnxEngine.from_export(str(folder), batch_size=4, threads=1)
    source, frames = inputs_for(model)
    engine.set_source(source)
    torch_engine.set_source(source)
    got = list(engine.animate(frames, relative=relative, adapt_scale=adapt_scale, output='float'))
    expected = list(torch_engine.animate(frames, relative=relative, adapt_scale=adapt_scale, output='float'))
    assert len(got) == 16 and got[0].shape == (64, 64, 3) and got[0].dtype == np.float32
    assert max_diff(got, expected) < TOLERANCE
    if model == 'tiny' and (relative, adapt_scale) == (True, False):  # the modes really differ here
        absolute = list(engine.animate(frames, relative=False, output='float'))
        assert max_diff(got, absolute) > 10 * TOLERANCE


def test_engine_api(tiny):
    folder, torch_engine = tiny
    engine = OnnxEngine.from_export(str(folder), batch_size=3, threads=1)
    source, frames = inputs_for('tiny')
    with pytest.raises(RuntimeError, match='set_source'):
        next(engine.stream(frames))
    engine.set_source(source)
    torch_engine.set_source(source)
    assert engine.frame_shape == (64, 64) and engine.precision == 'fp32' and engine.device == 'cpu'
    kp, kp_torch = engine.keypoints(frames[3]), torch_engine.keypoints(frames[3])
    assert set(kp) == {'value', 'jacobian'} and kp['jacobian'].shape == (1, 4, 2, 2)
    assert all(max_diff(kp[k], kp_torch[k].numpy()) < 1e-5 for k in kp)

    batches = list(engine.stream(frames[:7], extras=True))
    assert [len(b['frames']) for b in batches] == [3, 3, 1]
    first = batches[0]
    assert isinstance(first['prediction'], np.ndarray) and first['prediction'].dtype == np.float32
    assert first['prediction'].shape == (3, 3, 64, 64) and first['occlusion_map'].shape[:2] == (3, 1)
    assert first['frames'][0] is frames[0] and first['kp_norm']['value'].shape == (3, 4, 2)

    pairs = list(engine.animate(frames[:5], with_inputs=True))  # uint8 output by default
    assert [p[0] is f for p, f in zip(pairs, frames)] == [True] * 5 and pairs[0][1].dtype == np.uint8
    assert [b.shape for b in engine.animate(frames[:5], output='batch')] == [(3, 3, 64, 64), (2, 3, 64, 64)]
    for bad in ({'output': 'x'}, {'output': 'batch', 'with_inputs': True}):
        with pytest.raises(ValueError, match='output'):
            next(engine.animate(frames, **bad))

    got = list(engine.animate(frames, initial_frame=frames[9], output='float'))
    expected = list(torch_engine.animate(frames, initial_frame=frames[9], output='float'))
    assert max_diff(got, expected) < TOLERANCE

    for eng in (engine, torch_engine):  # live use: the reference frame kept between calls
        eng.set_reference(frames[2])
    live = [engine.animate_frame(f, adapt_scale=True) for f in frames[4:7]]
    live_torch = [torch_engine.animate_frame(f, adapt_scale=True) for f in frames[4:7]]
    assert live[0].dtype == np.uint8 and max_diff(live, live_torch) <= 1

    with pytest.raises(ValueError, match='32x32.*64x64'):
        engine.set_source(np.zeros((32, 32, 3), np.uint8))


def test_fp16_export(tiny, tmp_path):
    """--fp16: float16 inside, float32 at the interface; close to the fp32 torch engine."""
    generator, kp_detector, config = tiny_networks()
    manifest = export.export_model(generator, kp_detector, config, str(tmp_path), fp16=True, threads=1)
    assert manifest['precision'] == 'fp16' and max(manifest['check']['max_abs_diff'].values()) > 1e-6
    engine = OnnxEngine.from_export(str(tmp_path), batch_size=4, threads=1)
    torch_engine = tiny[1]
    source, frames = inputs_for('tiny')
    engine.set_source(source)
    torch_engine.set_source(source)
    got = list(engine.animate(frames, adapt_scale=True, output='float'))
    expected = list(torch_engine.animate(frames, adapt_scale=True, output='float'))
    assert engine.precision == 'fp16' and got[0].dtype == np.float32 and max_diff(got, expected) < 2e-2
    import onnx
    weights = onnx.load(str(tmp_path / 'generator.onnx')).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) == 4} == {onnx.TensorProto.FLOAT16}  # conv weights


def test_runtime_never_imports_torch(tiny):
    folder, _ = tiny
    code = ('import sys; sys.path.insert(0, %r); import numpy as np; from engine.onnx_engine import OnnxEngine; '
            'e = OnnxEngine.from_export(%r, threads=1); e.set_source(np.zeros((64, 64, 3), np.uint8)); '
            'n = len(list(e.animate([np.full((64, 64, 3), 99, np.uint8)] * 5, adapt_scale=True))); '
            'print(n, "torch" in sys.modules)' % (str(ROOT), str(folder)))
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['5', 'False']


# ------------------------------------------------------------------------------ bad exports
def broken(folder, tmp_path, how: str) -> str:
    """A copy of an export, broken in one way."""
    copy = tmp_path / 'export'
    shutil.copytree(folder, copy)
    manifest_path = copy / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if how == 'missing':
        os.remove(copy / 'generator.onnx')
    elif how in ('corrupt', 'corrupt-rehashed'):
        path = copy / 'kp_detector.onnx'
        path.write_bytes(path.read_bytes()[:5000] + b'\x00garbage')
        if how == 'corrupt-rehashed':  # the checksum agrees: onnxruntime must refuse it
            manifest['graphs']['kp_detector']['sha256'] = sha256(str(path))
            manifest_path.write_text(json.dumps(manifest))
    elif how == 'no-manifest':
        os.remove(manifest_path)
    elif how == 'bad-json':
        manifest_path.write_text('{"format": 1, ')
    elif how == 'frame-size':  # a manifest that claims another size than the graphs take
        manifest['frame_shape'] = [128, 128]
        manifest_path.write_text(json.dumps(manifest))
    return str(copy)


@pytest.mark.parametrize('how,message', [
    ('missing', r'generator\.onnx: missing'),
    ('corrupt', r'kp_detector\.onnx: checksum mismatch'),
    ('corrupt-rehashed', r'kp_detector\.onnx: onnxruntime cannot load it'),
    ('no-manifest', r'manifest\.json: missing'),
    ('bad-json', r'manifest\.json: unreadable manifest'),
    ('frame-size', r'kp_detector\.onnx: takes \[64, 64\] frames, but manifest\.json says frame_shape \[128, 128\]'),
])
def test_broken_export_one_line(tiny, tmp_path, how, message):
    folder = broken(tiny[0], tmp_path, how)
    with pytest.raises(ExportError, match=message) as info:
        OnnxEngine.from_export(folder, threads=1)
    assert '\n' not in str(info.value)


def test_expected_frame_size(tiny):
    with pytest.raises(ExportError, match=r'manifest\.json: frame_shape \[64, 64\], but \[256, 256\] expected'):
        OnnxEngine.from_export(str(tiny[0]), frame_shape=(256, 256, 3))


# ------------------------------------------------------------------------------ export.py
def test_export_writes_ours_and_checks_paths(tiny, tmp_path, capsys):
    folder = tiny[0]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest['precision'] == 'fp32' and manifest['opset'] == export.DEFAULT_OPSET
    assert max(manifest['check']['max_abs_diff'].values()) <= TOLERANCE
    assert all(is_ours(str(folder / name)) for name in ('manifest.json', 'kp_detector.onnx', 'generator.onnx'))
    assert not [p for p in os.listdir(folder) if p.startswith('.fomm-tmp')]

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'generator.onnx').write_bytes(b'someone else\'s model')
    cases = [(['--out', str(foreign)], 'generator.onnx exists and was not written by this tool'),
             (['--out', str(tmp_path / 'x'), '--opset', '15'], '--opset: 15 is too old'),
             (['--out', SHAPES_CHECKPOINT], 'exists and is not a folder'),
             (['--out', str(tmp_path / 'x'), '--config', str(tmp_path / 'nope.yaml')], '--config: file not found')]
    for extra, message in cases:
        assert export.main(['--checkpoint', SHAPES_CHECKPOINT] + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (foreign / 'generator.onnx').read_bytes() == b'someone else\'s model'


def test_operator_that_does_not_export():
    class Inverse(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x)

    with pytest.raises(export.ExportFailed, match="the probe graph does not export to ONNX opset 17: .*linalg_inv") \
            as info:
        export.export_graph(Inverse(), (torch.eye(2).repeat(3, 1, 1),), os.devnull, (['x'], ['y']), ['x', 'y'], 17,
                            what='probe')
    assert '\n' not in str(info.value)


def test_export_beyond_tolerance_writes_nothing(tmp_path):
    generator, kp_detector, config = tiny_networks(seed=3)
    with pytest.raises(export.ExportFailed, match='differs from torch by .* > --tolerance 1e-12; nothing written'):
        export.export_model(generator, kp_detector, config, str(tmp_path), tolerance=1e-12, threads=1)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ demo.py
@pytest.fixture(scope='module')
def media(tmp_path_factory):
    import cv2

    from media.video_io import write_video
    folder = tmp_path_factory.mktemp('media')
    source, frames = inputs_for('shapes')
    cv2.imwrite(str(folder / 'source.png'), source[:, :, ::-1])
    write_video(str(folder / 'driving.mp4'), frames[:6], fps=10)
    return folder


def demo_args(media, out, *extra):
    return ['--source_image', str(media / 'source.png'), '--driving_video', str(media / 'driving.mp4'),
            '--result_video', str(out), '--quiet', '--relative', '--no_audio', '--batch_size', '4', *extra]


def test_demo_onnx_backend_without_torch(shapes, media, tmp_path):
    """demo.py --backend onnx gives the torch backend's frames, in a process where torch cannot load."""
    from media.video_io import read_frames
    folder, _ = shapes
    code = ('import sys; sys.modules["torch"] = None; sys.path.insert(0, %r); import demo; '
            'sys.exit(demo.main(sys.argv[1:]))' % str(ROOT))
    args = demo_args(media, tmp_path / 'onnx.png', '--backend', 'onnx', '--onnx_dir', str(folder))
    res = subprocess.run([sys.executable, '-c', code] + args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import demo
    assert demo.main(demo_args(media, tmp_path / 'torch.png', '--config', SHAPES_CONFIG, '--checkpoint',
                               SHAPES_CHECKPOINT, '--precision', 'fp32')) == 0
    got, expected = read_frames(tmp_path / 'onnx.png', range(6)), read_frames(tmp_path / 'torch.png', range(6))
    assert got.shape == (6, 64, 64, 3) and max_diff(got, expected) <= 1


def test_demo_onnx_errors(tiny, media, tmp_path, capsys):
    import demo
    cases = [(['--backend', 'onnx'], '--backend onnx needs --onnx_dir'),
             (['--backend', 'onnx', '--onnx_dir', broken(tiny[0], tmp_path, 'corrupt')],
              'kp_detector.onnx: checksum mismatch')]
    for extra, message in cases:
        assert demo.main(demo_args(media, tmp_path / 'out.mp4', *extra)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'out.mp4').exists()


# ------------------------------------------------------------------------------ published configs
def architecture(config) -> str:
    """What the graphs depend on: the networks' parameters (not the discriminator's) and the frame size."""
    model = config.to_dict()['model_params']
    model.pop('discriminator_params', None)
    return json.dumps([model, list(config.dataset_params.frame_shape[:2])], sort_keys=True)


@pytest.fixture(scope='module')
def published_exports():
    return {}  # architecture -> (export manifest, max abs diff on one frame); 7 of the 8 configs share one


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_config_exports(name, published_exports, tmp_path_factory):
    """Each published config exports (random weights, seeded) and its onnxruntime engine matches
    the torch engine on one frame. The graphs depend only on the networks' parameters and the frame
    size, so configs that share them share one export and one comparison (vox, taichi, bair,
    fashion, nemo and their adversarial variants do; mgif has a single Jacobian map)."""
    config = load_config(str(ROOT / 'config' / (name + '.yaml')))
    key = architecture(config)
    if key not in published_exports:
        torch.manual_seed(0)
        generator, kp_detector, _ = load_networks(config, None)
        folder = tmp_path_factory.mktemp('published') / name
        manifest = export.export_model(generator, kp_detector, config, str(folder), threads=1)
        engine = OnnxEngine.from_export(str(folder), batch_size=1, frame_shape=config.dataset_params.frame_shape,
                                        threads=1)
        torch_engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 1)
        h, w = engine.frame_shape
        rng = np.random.default_rng(0)
        source, frame = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for _ in range(2)]
        engine.set_source(source)
        torch_engine.set_source(source)
        diff = max_diff(next(engine.animate([frame], output='float')),
                        next(torch_engine.animate([frame], output='float')))
        published_exports[key] = manifest, diff
    manifest, diff = published_exports[key]
    assert manifest['frame_shape'] == list(config.dataset_params.frame_shape[:2])
    assert manifest['num_kp'] == config.model_params.common_params.num_kp
    assert diff < TOLERANCE


def test_cuda_device_index_and_no_silent_cpu_fallback(tiny, monkeypatch):
    """--device cuda:N picks GPU N (the CUDA provider's device_id); when CUDA was asked for and
    onnxruntime could not start it (it falls back to the CPU provider silently), the engine says so
    instead of running on the CPU. Mocked: no GPU here."""
    import onnxruntime as ort

    from engine import onnx_engine
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    assert onnx_engine.providers_for('cuda:1') == [('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
    assert onnx_engine.providers_for('cuda') == ['CUDAExecutionProvider', 'CPUExecutionProvider']
    assert onnx_engine.providers_for('cpu') == ['CPUExecutionProvider']
    with pytest.raises(ValueError, match='not a device'):
        onnx_engine.providers_for('cuda:x')
    asked = []
    real_session = ort.InferenceSession

    def session(path, options, providers):  # what onnxruntime-gpu does without its CUDA libraries
        asked.append(providers)
        return real_session(path, options, providers=['CPUExecutionProvider'])
    monkeypatch.setattr(ort, 'InferenceSession', session)
    with pytest.raises(ValueError, match='could not start its CUDA provider'):
        onnx_engine.OnnxEngine.from_export(str(tiny[0]), device='cuda:1')
    assert asked[0][0] == ('CUDAExecutionProvider', {'device_id': 1})
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CPUExecutionProvider'])
    with pytest.raises(ValueError, match='install onnxruntime-gpu'):
        onnx_engine.OnnxEngine.from_export(str(tiny[0]), device='cuda')
