"""The paper's AKD, MKR and AED with real pretrained networks (dlib, the evaluation extra) on real
face videos, evaluate.py's pairing and reports, the body path's ONNX loading on small networks
written here, and the measures wired into reconstruction, animation and the learning check.

References are independent of the code under test: a video against itself, the same video
translated by a known number of pixels, another person, frames blanked on purpose."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared_path
from media.video_io import iter_video_frames, open_video, write_video

pytestmark = pytest.mark.usefixtures('one_thread')

FRAMES = 4  # per video: a few frames keep this file fast
SHIFT = 4  # pixels


def evaluate_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / 'evaluate.py'), '--no_progress'] + [str(a) for a in args],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def shifted(frame, dx):
    """The frame translated right by dx pixels (black where nothing comes in)."""
    out = np.zeros_like(frame)
    out[:, dx:] = frame[:, :-dx]
    return out


@pytest.fixture(scope='module')
def faces(tmp_path_factory):
    """data/test/: the first FRAMES frames of the two face test videos (mp4), and the frames they decode to."""
    pytest.importorskip('dlib', reason='the evaluation extra: pip install -r requirements-eval.txt')
    root = tmp_path_factory.mktemp('faces')
    real = {}
    for name in ('face-g', 'face-h'):
        clip = [f for _, f in zip(range(FRAMES), iter_video_frames(shared_path('data', 'faces-256', 'test',
                                                                                name + '.mp4')))]
        write_video(root / 'data' / 'test' / (name + '.mp4'), np.stack(clip), fps=25)
        real[name] = open_video(root / 'data' / 'test' / (name + '.mp4')).read_all()  # what the evaluation reads
    return root, real


def run_evaluate(faces, generated: dict, name: str, *extra):
    """evaluate.py on data/test/ against a folder of generated videos {name: frames or a path to copy}."""
    root, _ = faces
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for video, content in generated.items():
        if isinstance(content, str):
            shutil.copy(content, folder / os.path.basename(content))
        else:
            write_video(folder / video, np.stack(content), fps=25, fmt='.png')  # lossless: a folder of frames
    out = root / (name + '-report')
    res = evaluate_cli('--real', root / 'data' / 'test', '--generated', folder, '--out', out, *extra)
    assert res.returncode == 0, res.stderr
    return json.loads((out / 'metrics.json').read_text()), out, res


def test_a_video_against_itself_scores_zero(faces):
    root, _ = faces
    report, out, _ = run_evaluate(faces, {n: str(root / 'data' / 'test' / (n + '.mp4')) for n in ('face-g', 'face-h')}, 'self')
    assert [v['name'] for v in report['videos']] == ['face-g', 'face-h'] and report['skipped'] == []
    for v in report['videos']:
        assert v['frames'] == FRAMES and v['l1'] == 0
        assert v['akd'] == 0 and v['aed'] == 0 and v['mkr'] == 0
        assert v['no_detection_real'] == 0 and v['no_detection_generated'] == 0  # a face in every frame
    assert 'dlib' in report['measures']['akd'] and 'dlib' in report['measures']['aed']
    table = (out / 'metrics.md').read_text()
    assert '| video | frames | L1 | AKD | MKR | AED |' in table and '| face-g | %d | 0.0000 | 0.000 | 0.000 | 0.000 |' % FRAMES in table
    assert (out / 'metrics.csv').read_text().splitlines()[0].startswith('name,frames,l1,psnr,ssim')


def test_translated_video_moves_the_landmarks_by_the_shift_and_keeps_the_identity(faces):
    _, real = faces
    moved, _, _ = run_evaluate(faces, {n + '.png': [shifted(f, SHIFT) for f in real[n]] for n in real}, 'shifted')
    other, _, _ = run_evaluate(faces, {'face-g.png': list(real['face-h']), 'face-h.png': list(real['face-g'])},
                               'other')
    for v in moved['videos']:
        # landmarks follow the image: dlib's points are whole pixels, and the detector's box moves in
        # its own steps, so each point lands within a pixel of the shift
        assert abs(v['akd'] - SHIFT) <= 1, v
        assert v['mkr'] == 0
        assert v['aed'] < 0.15, v  # a quarter of dlib's same-person threshold (0.6)
    for shift_row, other_row in zip(moved['videos'], other['videos']):
        assert other_row['aed'] >= 3 * shift_row['aed'], (shift_row, other_row)
        assert other_row['aed'] > 0.6  # another person, by dlib's own threshold


def test_blanking_half_the_frames_gives_mkr_one_half(faces):
    _, real = faces
    blanked = {n + '.png': [f if i % 2 else np.zeros_like(f) for i, f in enumerate(real[n])] for n in real}
    report, _, _ = run_evaluate(faces, blanked, 'blanked')
    for v in report['videos']:
        assert v['no_detection_real'] == 0
        # every real frame has a face; the kept frames are identical, so only the blanked half loses it
        assert v['mkr'] == pytest.approx(0.5) and v['no_detection_generated'] == pytest.approx(0.5)
        assert v['akd'] == 0 and v['aed'] == 0  # measured on the frames where both have a face


def test_unpaired_unreadable_and_shorter_videos_are_skipped_with_a_reason(faces):
    root, real = faces
    folder = root / 'mixed'
    write_video(folder / 'face-g.mp4', real['face-g'], fps=25)  # a fair pair
    write_video(folder / 'face-h', real['face-h'][:FRAMES - 2], fps=25, fmt='.png')  # shorter
    (folder / 'stranger.mp4').write_bytes(b'\x00' * 64)  # no real video of that name
    (root / 'real-mixed').mkdir()
    for name in ('face-g.mp4', 'face-h.mp4'):
        shutil.copy(root / 'data' / 'test' / name, root / 'real-mixed' / name)
    (root / 'real-mixed' / 'broken.mp4').write_bytes(b'not a video' * 50)
    (folder / 'broken.mp4').write_bytes(b'not a video' * 50)
    res = evaluate_cli('--real', root / 'real-mixed', '--generated', folder, '--out', root / 'mixed-report')
    assert res.returncode == 0, res.stderr
    report = json.loads((root / 'mixed-report' / 'metrics.json').read_text())
    assert [v['name'] for v in report['videos']] == ['face-g']
    reasons = {s['name']: s['reason'] for s in report['skipped']}
    assert sorted(reasons) == ['broken', 'face-h', 'stranger']
    assert 'broken.mp4' in reasons['broken']
    assert '%d generated frames' % (FRAMES - 2) in reasons['face-h'] and '%d real' % FRAMES in reasons['face-h']
    assert 'no real video named stranger' in reasons['stranger']
    assert 'Skipped:' in (root / 'mixed-report' / 'metrics.md').read_text()


def test_nothing_to_compare_is_one_line_and_writes_nothing(faces, tmp_path):
    root, _ = faces
    (tmp_path / 'gen').mkdir()
    write_video(tmp_path / 'gen' / 'face-g.mp4', np.zeros((FRAMES + 1, 256, 256, 3), np.uint8), fps=25)
    res = evaluate_cli('--real', root / 'data' / 'test', '--generated', tmp_path / 'gen', '--out', tmp_path / 'out')
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert 'nothing could be compared' in res.stderr and 'face-g' in res.stderr
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


def test_outputs_follow_the_output_rule(faces, tmp_path):
    root, _ = faces
    inside = evaluate_cli('--real', root / 'data' / 'test', '--generated', root / 'data' / 'test', '--out', root / 'data' / 'test' / 'x')
    assert inside.returncode == 1 and '--out' in inside.stderr and 'inside the input folder' in inside.stderr
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'metrics.md').write_text('my notes\n')
    generated = tmp_path / 'gen'
    shutil.copytree(root / 'data' / 'test', generated)
    res = evaluate_cli('--real', root / 'data' / 'test', '--generated', generated, '--out', out, '--max_frames', '1')
    assert res.returncode == 1 and 'metrics.md' in res.stderr and '--overwrite' in res.stderr
    assert (out / 'metrics.md').read_text() == 'my notes\n'  # nothing lost
    res = evaluate_cli('--real', root / 'data' / 'test', '--generated', generated, '--out', out, '--max_frames', '1',
                       '--overwrite')
    assert res.returncode == 0, res.stderr
    assert json.loads((out / 'metrics.json').read_text())['mean']['frames'] == 2
    # a second run replaces its own report without --overwrite
    res = evaluate_cli('--real', root / 'data' / 'test', '--generated', generated, '--out', out, '--max_frames', '2')
    assert res.returncode == 0, res.stderr
    assert json.loads((out / 'metrics.json').read_text())['mean']['frames'] == 4


@pytest.mark.parametrize('hidden', ['dlib', 'face_recognition_models'])
def test_missing_extra_says_the_line_that_installs_it(faces, tmp_path, hidden):
    root, _ = faces
    code = ("import sys, runpy; sys.modules[%r] = None; sys.argv = ['evaluate.py'] + sys.argv[1:]; "
            "runpy.run_path('evaluate.py', run_name='__main__')" % hidden)
    res = subprocess.run([sys.executable, '-c', code, '--real', str(root / 'data' / 'test'), '--generated',
                          str(root / 'data' / 'test'), '--out', str(tmp_path / 'out')], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and 'pip install -r requirements-eval.txt' in res.stderr
    assert not (tmp_path / 'out').exists()  # stopped before anything was created


# ------------------------------------------------------------------ the measures' arithmetic
class _Given:
    """A measurer that returns the observations it is handed, frame by frame (frames are indices)."""

    min_side = 256

    def __init__(self, observations):
        self.observations = observations

    def observe(self, frames):
        return [self.observations[int(f)] for f in frames]


def test_animation_measures_align_scale_and_place_once_then_follow_the_motion():
    from analysis.measures import NOTHING, AnimationMeasures, Observation
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    visible = np.ones(4, bool)
    emb = np.zeros(3)

    def obs(points, e=emb):
        return Observation(points, visible, e)
    # driving: a square of side 10 moving right by 3 px a frame; animated: a square of side 5 placed
    # elsewhere, moving by 1.5 px a frame (the same motion at its scale) in frames 1-2, then stopping
    driving = [obs(square + (3 * t, 0)) for t in range(4)]
    animated = [obs(0.5 * square + (100 + 1.5 * min(t, 2), 50), emb + (0.1 * t, 0, 0)) for t in range(4)]
    given = _Given({0: obs(square, emb), **{10 + t: d for t, d in enumerate(driving)},
                    **{20 + t: a for t, a in enumerate(animated)}, 99: NOTHING})
    m = AnimationMeasures(given, 0)
    m.add_batch([10, 11, 12, 13, 99], [20, 21, 22, 23, 99])
    r = m.result()
    assert r['alignment_scale'] == pytest.approx(2.0)  # sqrt(100 / 25)
    # frames 0-2 follow exactly; frame 3 lags 3 driving pixels: mean over the 4 frames with faces
    assert r['akd_motion'] == pytest.approx(3 / 4)
    assert r['aed_source'] == pytest.approx(np.mean([0, 0.1, 0.2, 0.3]))  # the source's embedding is emb
    assert r['no_detection_driving'] == pytest.approx(1 / 5) and r['no_detection_animated'] == pytest.approx(1 / 5)


def test_video_measures_count_missing_keypoints_one_by_one():
    from analysis.measures import NOTHING, Observation, VideoMeasures
    points = np.arange(10, dtype=np.float64).reshape(5, 2)
    all5 = np.ones(5, bool)
    three = np.array([1, 1, 1, 0, 0], bool)
    given = _Given({0: Observation(points, all5), 1: Observation(points + (0, 2), three), 2: NOTHING,
                    3: Observation(points, three)})
    m = VideoMeasures(given)
    m.add_batch([0, 0, 2, 3], [1, 2, 0, 0])
    r = m.result()
    # real keypoints: 5 + 5 + 0 + 3 = 13; missing: 2 (frame 0) + 5 (frame 1: no body) + 0
    assert r['mkr'] == pytest.approx(7 / 13)
    assert r['akd'] == pytest.approx(np.mean([2.0, 0.0]))  # frames 0 and 3 have keypoints on both sides
    assert r['no_detection_real'] == pytest.approx(1 / 4) and r['no_detection_generated'] == pytest.approx(1 / 4)
    assert math.isnan(r['aed'])  # no embeddings: does not apply


# ------------------------------------------------------------------ bodies: ONNX models written here
STRIDE = 4


def heatmap_pose_graph(path, keypoints_output=False, batch=None, size=256):
    """A stand-in pose network under the contract: heatmap k = channel k average-pooled over
    STRIDE x STRIDE cells, so keypoint k is the cell where colour channel k is brightest. With
    keypoints_output the graph itself decodes the maps to (N, K, 3) x, y (input pixels), score."""
    import onnx
    from onnx import TensorProto, helper
    n = batch if batch else 'N'
    cells = size // STRIDE
    nodes = [helper.make_node('AveragePool', ['image'], ['maps'], kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE])]
    inits = []
    if keypoints_output:
        inits = [helper.make_tensor('flat_shape', TensorProto.INT64, [3], [0, 3, cells * cells]),
                 helper.make_tensor('w', TensorProto.INT64, [], [cells]),
                 helper.make_tensor('stride', TensorProto.FLOAT, [], [float(STRIDE)]),
                 helper.make_tensor('offset', TensorProto.FLOAT, [], [STRIDE / 2 - 0.5]),
                 helper.make_tensor('last', TensorProto.INT64, [1], [2])]
        nodes += [helper.make_node('Reshape', ['maps', 'flat_shape'], ['flat']),
                  helper.make_node('ArgMax', ['flat'], ['best'], axis=2, keepdims=0),
                  helper.make_node('ReduceMax', ['flat'], ['score'], axes=[2], keepdims=0),
                  helper.make_node('Mod', ['best', 'w'], ['col']),
                  helper.make_node('Div', ['best', 'w'], ['row']),
                  helper.make_node('Cast', ['col'], ['colf'], to=TensorProto.FLOAT),
                  helper.make_node('Cast', ['row'], ['rowf'], to=TensorProto.FLOAT),
                  # cell centre in input pixels: (col + 0.5) * STRIDE - 0.5
                  helper.make_node('Mul', ['colf', 'stride'], ['xs']), helper.make_node('Add', ['xs', 'offset'], ['x']),
                  helper.make_node('Mul', ['rowf', 'stride'], ['ys']), helper.make_node('Add', ['ys', 'offset'], ['y']),
                  helper.make_node('Unsqueeze', ['x', 'last'], ['x1']),
                  helper.make_node('Unsqueeze', ['y', 'last'], ['y1']),
                  helper.make_node('Unsqueeze', ['score', 'last'], ['s1']),
                  helper.make_node('Concat', ['x1', 'y1', 's1'], ['keypoints'], axis=2)]
        output = helper.make_tensor_value_info('keypoints', TensorProto.FLOAT, [n, 3, 3])
    else:
        output = helper.make_tensor_value_info('maps', TensorProto.FLOAT, [n, 3, cells, cells])
    graph = helper.make_graph(nodes, 'pose', [helper.make_tensor_value_info('image', TensorProto.FLOAT,
                                                                            [n, 3, size, size])], [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def colour_reid_graph(path):
    """A stand-in re-id network: the embedding is the frame's mean (normalised) colour."""
    import onnx
    from onnx import TensorProto, helper
    nodes = [helper.make_node('GlobalAveragePool', ['image'], ['pooled']),
             helper.make_node('Flatten', ['pooled'], ['embedding'], axis=1)]
    graph = helper.make_graph(nodes, 'reid', [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N', 3, 64, 32])],
                              [helper.make_tensor_value_info('embedding', TensorProto.FLOAT, ['N', 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.save(model, str(path))
    return path


def dots(t, dx=0, drop=()):
    """A 256x256 black frame with a red, a green and a blue 4x4 dot on the pooling grid, moving with t."""
    frame = np.zeros((256, 256, 3), np.uint8)
    for k, (x, y) in enumerate([(40 + 8 * t, 60), (120, 80 + 4 * t), (200 - 4 * t, 200)]):
        if k not in drop:
            frame[y:y + STRIDE, x + dx:x + dx + STRIDE, k] = 255
    return frame


@pytest.fixture(scope='module')
def body_models(tmp_path_factory):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    folder = tmp_path_factory.mktemp('onnx')
    return {'heatmaps': heatmap_pose_graph(folder / 'maps.onnx'),
            'keypoints': heatmap_pose_graph(folder / 'points.onnx', keypoints_output=True),
            'batch1': heatmap_pose_graph(folder / 'one.onnx', batch=1),
            'reid': colour_reid_graph(folder / 'reid.onnx')}


@pytest.mark.parametrize('model', ['heatmaps', 'keypoints', 'batch1'])
def test_pose_model_contract_finds_keypoints_where_they_are(body_models, model):
    from analysis.body_measures import OnnxPoseModel
    pose = OnnxPoseModel(str(body_models[model]))
    got = pose([dots(0), dots(2)])  # (2, 3, 3)
    # dot k covers pixels x..x+3: its centre is x + 1.5, the pooled cell's centre
    want = np.array([[[41.5, 61.5], [121.5, 81.5], [201.5, 201.5]], [[57.5, 61.5], [121.5, 89.5], [193.5, 201.5]]])
    assert np.abs(got[:, :, :2] - want).max() < 1e-4, got
    assert (got[:, :, 2] > 0.3).all()  # a white cell: (1 - 0.485) / 0.229 / 16 * 16 ~ 2.2
    assert (pose([np.zeros((256, 256, 3), np.uint8)])[:, :, 2] < 0.3).all()  # black: no keypoint


def test_body_measures_with_the_onnx_contract(body_models, tmp_path):
    from analysis.body_measures import BodyMeasurer
    from analysis.measures import VideoMeasures
    measurer = BodyMeasurer(str(body_models['heatmaps']), str(body_models['reid']))
    real = [dots(t) for t in range(4)]
    acc = VideoMeasures(measurer)
    acc.add_batch(real, [dots(t, dx=SHIFT) for t in range(4)])
    r = acc.result()
    assert r['akd'] == pytest.approx(SHIFT) and r['mkr'] == 0  # one pooling cell = SHIFT pixels
    acc.reset()
    acc.add_batch(real, [dots(0, drop=(2,)), np.zeros_like(real[0]), dots(2), dots(3)])
    r = acc.result()
    assert r['mkr'] == pytest.approx((1 + 3) / 12) and r['no_detection_generated'] == pytest.approx(1 / 4)
    # AED: distance of the unit mean-colour vectors, computed here from the frames themselves
    imagenet_mean, imagenet_std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def embedding(frame):
        from media.images import resize
        v = ((resize(frame, 64, 32).astype(np.float64) / 255 - imagenet_mean) / imagenet_std).mean(axis=(0, 1))
        return v / np.linalg.norm(v)
    other = [np.maximum(dots(t), np.uint8([0, 90, 30 * t])) for t in range(4)]  # other colours, same dots
    acc.reset()
    acc.add_batch(real, other)
    want = np.mean([np.linalg.norm(embedding(a) - embedding(b)) for a, b in zip(real, other)])
    # float32 in the graph: a mean of 64 x 32 values of size ~2 is off by at most 2048 * 6e-8 * 2
    assert acc.result()['aed'] == pytest.approx(want, abs=3e-4) and want > 0.1


def test_evaluate_bodies_on_body_videos(body_models, tmp_path):
    """The body path end to end on real body videos: each against itself, and translated."""
    real_dir, gen_dir = tmp_path / 'real', tmp_path / 'gen'
    frames = {}
    for name in ('fashion-a', 'ted-a'):
        clip = [f for _, f in zip(range(3), iter_video_frames(shared_path('data', 'bodies-256', name + '.mp4')))]
        write_video(real_dir / name, np.stack(clip), fmt='.png')
        frames[name] = clip
    for name, clip in frames.items():
        write_video(gen_dir / name, np.stack(clip), fmt='.png')
    res = evaluate_cli('--real', real_dir, '--generated', gen_dir, '--kind', 'bodies', '--pose_model',
                       body_models['keypoints'], '--reid_model', body_models['reid'], '--out', tmp_path / 'out')
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert report['kind'] == 'bodies' and len(report['videos']) == 2
    for v in report['videos']:
        assert v['akd'] == 0 and v['mkr'] == 0 and v['aed'] == 0 and v['l1'] == 0
    assert 'points.onnx' in report['measures']['akd']


def test_body_flags_fail_in_one_line(body_models, tmp_path):
    (tmp_path / 'v').mkdir()
    res = evaluate_cli('--real', tmp_path / 'v', '--generated', tmp_path / 'v', '--kind', 'bodies',
                       '--out', tmp_path / 'out')
    assert res.returncode == 1 and '--pose_model' in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not a graph')
    res = evaluate_cli('--real', tmp_path / 'v', '--generated', tmp_path / 'v', '--kind', 'bodies',
                       '--pose_model', bad, '--out', tmp_path / 'out')
    assert res.returncode == 1 and '--pose_model' in res.stderr and 'bad.onnx' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


# ------------------------------------------------------------------ wired into the run modes
@pytest.mark.filterwarnings('ignore:.*frames resized to 64x64')  # 256x256 clips, a 64x64 model: expected
def test_reconstruction_reports_akd_aed_and_names_the_networks(faces, tmp_path):
    import torch

    from engine.torch_engine import load_networks
    from frames_dataset import FramesDataset
    from reconstruction import reconstruction
    root, _ = faces
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(str(ROOT / 'tests' / 'tiny.yaml'), None)
    dataset = FramesDataset(root_dir=str(root / 'data'), frame_shape=(64, 64, 3), is_train=False)
    report = reconstruction(config, generator, kp_detector, None, str(tmp_path), dataset, device='cpu',
                            precision='fp32', batch_size=4, progress=False)
    saved = json.loads((tmp_path / 'reconstruction' / 'metrics.json').read_text())
    assert 'dlib' in saved['measures']['akd'] and 'dlib' in saved['measures']['aed']
    for v in saved['videos']:
        assert set(v) >= {'akd', 'aed', 'mkr', 'no_detection_real', 'no_detection_generated'}
        # 64x64 faces, upscaled for the detector, are found in every real frame
        assert v['no_detection_real'] == 0
        # an untrained generator: whatever it made, the shares add up
        assert 0 <= v['mkr'] <= 1 and v['mkr'] == pytest.approx(v['no_detection_generated'])
    assert report['mean']['videos'] == 2


def test_reconstruct_video_feeds_each_prediction_to_the_measures(faces):
    import torch

    from analysis.face_measures import FaceMeasurer
    from analysis.measures import VideoMeasures
    from reconstruction import reconstruct_video
    _, real = faces

    class Shifting:
        """An engine whose prediction is the driving frame translated by SHIFT pixels."""

        def set_source(self, frame):
            pass

        def stream(self, frames, relative=False):
            frames = list(frames)
            for i in range(0, len(frames), 4):
                batch = frames[i:i + 4]
                moved = np.stack([shifted(f, SHIFT) for f in batch]).astype(np.float32) / 255
                yield {'frames': batch, 'prediction': torch.from_numpy(moved).permute(0, 3, 1, 2)}
    measures = VideoMeasures(FaceMeasurer())
    assert reconstruct_video(Shifting(), iter(real['face-g']), None, None, measures) == FRAMES
    r = measures.result()
    assert abs(r['akd'] - SHIFT) <= 1 and r['mkr'] == 0 and measures.frames == FRAMES


def test_animation_measures_on_faces(faces):
    from analysis.face_measures import FaceMeasurer
    from analysis.measures import AnimationMeasures
    _, real = faces
    measurer = FaceMeasurer()
    source = real['face-h'][0]
    keeps = AnimationMeasures(measurer, source)  # keeps the source's identity, moves as the driving face
    keeps.add_batch(list(real['face-g']), [shifted(f, SHIFT) for f in real['face-h']])
    swaps = AnimationMeasures(measurer, source)  # turns into the driving person, moved by SHIFT pixels
    swaps.add_batch(list(real['face-g']), [shifted(f, SHIFT) for f in real['face-g']])
    k, s = keeps.result(), swaps.result()
    assert s['aed_source'] >= 3 * k['aed_source'] and k['aed_source'] < 0.6
    # the same face moved by a constant: the alignment takes the shift out (scale 1)
    assert s['alignment_scale'] == pytest.approx(1.0, abs=0.02) and s['akd_motion'] < 1.0


def test_learning_check_reports_akd_and_aed_beside_l1(faces):
    sys.path.insert(0, str(ROOT / 'bench'))
    import learning_check
    root, real = faces
    per_video, mean = learning_check.evaluate(str(ROOT / 'config' / 'shapes-64.yaml'),
                                              str(ROOT / 'checkpoints' / 'shapes-64.pth.tar'),
                                              str(root / 'data' / 'test'), max_frames=3)
    assert set(mean['measures']) == {'driven', 'copy', 'no_motion'} and mean['measured_shape'] == [256, 256]
    copy = per_video['face-g.mp4']['measures']['copy']
    # copying frame 0: frame 0 scores 0; the reference is the landmarks of the frames themselves
    from analysis.face_measures import FaceMeasurer
    from media.images import resize
    observed = FaceMeasurer().observe([resize(f, 64, 64) for f in real['face-g'][:3]])
    want = np.mean([np.linalg.norm(o.keypoints - observed[0].keypoints, axis=1).mean() for o in observed])
    assert copy['akd'] == pytest.approx(want) and copy['no_detection_real'] == 0
    assert per_video['face-g.mp4']['driven'] > 0  # the L1 figures are still there


def test_face_alignment_landmarks_feed_the_same_identity_network(faces, monkeypatch):
    """landmarks='face_alignment': its 68 points become the dlib shape that aligns the face chip.
    A stand-in landmarker returning dlib's own points must give dlib's landmarks and embedding."""
    from analysis import face
    from analysis.face_measures import FaceMeasurer
    _, real = faces
    frames = list(real['face-g'][:2]) + [np.zeros_like(real['face-g'][0])]
    reference = FaceMeasurer().observe(frames)
    points = {i: (o.keypoints if o.found else None) for i, o in enumerate(reference)}

    class Given:
        calls = 0

        def __init__(self, **kwargs):
            pass

        def __call__(self, frame):
            Given.calls += 1
            return points[Given.calls - 1]
    monkeypatch.setattr(face, 'FaceLandmarker', Given)
    got = FaceMeasurer(landmarks='face_alignment').observe(frames)
    assert [o.found for o in got] == [True, True, False] and Given.calls == 3
    for a, b in zip(got[:2], reference[:2]):
        assert np.array_equal(a.keypoints, b.keypoints)
        # the chip is aligned on the points, not on the box: the same embedding up to float rounding
        assert np.linalg.norm(a.embedding - b.embedding) < 1e-3


def test_animate_reports_identity_and_motion_of_cross_identity_pairs(faces, tmp_path, monkeypatch):
    """animate() end to end with an engine whose every frame is the source image: the identity is
    kept exactly (AED to the source 0), and only pairs of two ids are measured."""
    import torch

    import animate as animate_mode
    from core.config import load_config
    from frames_dataset import FramesDataset, PairedDataset
    from media.images import resize
    _, real = faces

    class SourceEcho:
        @classmethod
        def from_networks(cls, generator, kp_detector, config, checkpoint, **options):
            engine = cls()
            engine.config = load_config(str(ROOT / 'tests' / 'tiny.yaml'))
            return engine

        def set_source(self, frame):
            self.source = torch.from_numpy(frame.astype(np.float32) / 255).permute(2, 0, 1)

        def stream(self, frames, **kwargs):
            frames = list(frames)
            yield {'frames': frames, 'prediction': self.source[None].repeat(len(frames), 1, 1, 1)}
    monkeypatch.setattr(animate_mode, 'AnimationEngine', SourceEcho)
    for name, clip in (('id1#a', real['face-g']), ('id1#b', real['face-g'][::-1]), ('id2#c', real['face-h'])):
        write_video(tmp_path / 'data' / 'test' / (name + '.mp4'), np.stack([resize(f, 64, 64) for f in clip]), fps=25)
    pairs = PairedDataset(FramesDataset(root_dir=str(tmp_path / 'data'), frame_shape=(64, 64, 3), is_train=False),
                          number_of_pairs=9)  # all 9 (driving, source) pairs of 3 videos
    written = animate_mode.animate(None, None, None, None, str(tmp_path / 'run'), pairs, progress=False)
    assert len(written) == 9
    report = json.loads((tmp_path / 'run' / 'animation' / 'metrics.json').read_text())
    names = sorted(v['name'] for v in report['videos'])
    assert names == ['id1#a-id2#c.mp4', 'id1#b-id2#c.mp4', 'id2#c-id1#a.mp4', 'id2#c-id1#b.mp4']
    for v in report['videos']:
        assert v['aed_source'] == 0 and v['no_detection_source'] == 0 and v['no_detection_animated'] == 0
        assert v['alignment_scale'] > 0 and v['akd_motion'] >= 0 and v['frames'] == FRAMES
    assert 'dlib' in report['measures']['aed']
