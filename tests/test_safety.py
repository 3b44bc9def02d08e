"""Issue 14, case by case: no input or user file is ever overwritten, damaged or oversized inputs are
refused with one line naming them, bad numbers name their key, and failed or killed runs leave
nothing half-written behind. Each test builds its damaged files itself."""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from media.synthetic import write_dataset
from media.video_io import write_video

TINY = ROOT / 'tests' / 'tiny.yaml'
pytestmark = [pytest.mark.usefixtures('one_thread'), pytest.mark.timeout(300)]


def digest(path) -> str:
    """A fingerprint of a file, or of a folder's names and contents."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(name.encode())
            h.update(digest(os.path.join(path, name)).encode())
    else:
        h.update(open(path, 'rb').read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A tiny checkpoint (with its config), a source image, a driving video, a driving frame folder."""
    from engine.torch_engine import load_networks
    folder = tmp_path_factory.mktemp('inputs')
    torch.manual_seed(0)
    generator, kp_detector, config = load_networks(str(TINY), None)
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 0,
                'config': config.to_dict()}, folder / 'tiny.pth.tar')
    frames = (np.random.default_rng(0).random((6, 64, 64, 3)) * 255).astype(np.uint8)
    write_video(folder / 'driving.mp4', frames, fps=10)
    write_video(folder / 'frames', frames, fmt='.png')
    import cv2
    cv2.imwrite(str(folder / 'source.png'), frames[0])
    cv2.imwrite(str(folder / 'photo.jpg'), frames[1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def demo(inputs, *args, result=None, source='source.png', driving='driving.mp4'):
    """demo.py in a subprocess (config from the checkpoint): (exit status, stderr lines)."""
    cmd = [sys.executable, str(ROOT / 'demo.py'), '--checkpoint', str(inputs / 'tiny.pth.tar'), '--quiet',
           '--source_image', str(inputs / source), '--driving_video', str(inputs / driving), '--precision', 'fp32']
    # (a source or driving path that is absolute stays as it is: inputs / absolute == absolute)
    if result is not None:
        cmd += ['--result_video', str(result)]
    res = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=240, cwd=str(ROOT),
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    return res.returncode, [l for l in res.stderr.splitlines() if l.strip()]


def assert_one_line(status, lines, *words):
    assert status == 1 and len(lines) == 1 and 'Traceback' not in lines[0], lines
    for word in words:
        assert word in lines[0], lines[0]


# ------------------------------------------------------------------------- output-path rule
def test_result_or_preview_equal_to_an_input_is_refused(inputs, tmp_path):
    before = {name: digest(inputs / name) for name in ('driving.mp4', 'frames', 'source.png')}
    assert_one_line(*demo(inputs, result=inputs / 'driving.mp4'), '--result_video', 'also the input --driving_video')
    assert_one_line(*demo(inputs, '--preview', str(inputs / 'driving.mp4'), result=tmp_path / 'r.mp4'), '--preview')
    # a frame-folder driving input given as the .png (frames folder) result
    assert_one_line(*demo(inputs, '--overwrite', result=inputs / 'frames', driving='frames'), '--result_video')
    link = tmp_path / 'same.mp4'  # the same file under another name
    os.link(inputs / 'driving.mp4', link)
    assert_one_line(*demo(inputs, '--overwrite', result=link), '--result_video', 'also the input')
    assert {name: digest(inputs / name) for name in before} == before
    assert not (tmp_path / 'r.mp4').exists()


def test_an_existing_folder_of_the_user_is_never_replaced(inputs, tmp_path):
    mine = tmp_path / 'holiday.png'  # a folder the user made, whose name ends in .png
    mine.mkdir()
    (mine / 'notes.txt').write_text('precious')
    (mine / '000000.png').write_bytes(b'a frame of mine')
    before = digest(mine)
    assert_one_line(*demo(inputs, result=mine), '--result_video', 'other files than numbered frames')
    assert_one_line(*demo(inputs, '--overwrite', result=mine), '--result_video', 'left untouched')
    assert digest(mine) == before
    folder = tmp_path / 'out.mp4'
    folder.mkdir()
    assert_one_line(*demo(inputs, result=folder), '--result_video', 'existing folder')


def test_a_file_this_tool_did_not_write_needs_overwrite(inputs, tmp_path):
    result = tmp_path / 'result.mp4'
    result.write_bytes(b'my own video')
    assert_one_line(*demo(inputs, result=result), '--result_video', 'not written by this tool', '--overwrite')
    assert result.read_bytes() == b'my own video'
    assert demo(inputs, '--overwrite', result=result)[0] == 0
    first = digest(result)
    assert demo(inputs, result=result)[0] == 0  # ours now: replaced without --overwrite
    from media.outputs import is_ours
    assert is_ours(str(result)) and first
    frames = tmp_path / 'frames.png'
    assert demo(inputs, result=frames)[0] == 0 and demo(inputs, result=frames)[0] == 0  # our frames folder


def test_stale_temporaries_of_killed_runs_are_cleaned_and_live_ones_kept(inputs, tmp_path):
    from media.outputs import STALE_AFTER_S, writer_id
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    here = writer_id()
    stale = tmp_path / ('.fomm-tmp-result.mp4.%s.%d.mp4' % (here, dead.pid))  # what a SIGKILLed writer leaves
    stale.write_bytes(b'half a video')
    stale_dir = tmp_path / ('.fomm-tmp-frames.png.%s.%d' % (here, dead.pid))
    stale_dir.mkdir()
    live = tmp_path / ('.fomm-tmp-other.mp4.%s.%d.mp4' % (here, os.getpid()))  # another job still writing
    live.write_bytes(b'in progress')
    # another host or container sharing the folder: its pid means nothing here, so only its age counts
    other = 'ffffffff' if here != 'ffffffff' else '00000000'
    remote = tmp_path / ('.fomm-tmp-remote.mp4.%s.%d.mp4' % (other, dead.pid))
    remote.write_bytes(b'written on another host right now')
    abandoned = tmp_path / ('.fomm-tmp-old.mp4.%s.%d.mp4' % (other, os.getpid()))
    abandoned.write_bytes(b'left two days ago')
    old = time.time() - STALE_AFTER_S - 3600
    os.utime(abandoned, (old, old))
    assert demo(inputs, result=tmp_path / 'result.mp4')[0] == 0
    assert not stale.exists() and not stale_dir.exists() and not abandoned.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, 'result.mp4'])


# ------------------------------------------------------------------------------ damaged inputs
def test_truncated_and_corrupt_images_and_a_text_file_are_refused(inputs, tmp_path):
    data = (inputs / 'photo.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 2])
    noisy = bytearray(data)
    noisy[len(data) // 2:len(data) // 2 + 64] = np.random.default_rng(1).integers(0, 256, 64, np.uint8).tobytes()
    (tmp_path / 'noisy.jpg').write_bytes(bytes(noisy))
    (tmp_path / 'notes.png').write_text('this is text\n' * 20)
    for name, words in (('cut.jpg', ('truncated',)), ('noisy.jpg', ('corrupt',)),
                        ('notes.png', ('not an image file',))):
        status, lines = demo(inputs, result=tmp_path / ('%s.mp4' % name), source=tmp_path / name)
        assert_one_line(status, lines, name, *words)
        assert 'pyav' not in lines[0].lower()
        assert not (tmp_path / ('%s.mp4' % name)).exists()


def test_a_damaged_driving_video_is_refused_or_used_with_one_line_warnings(inputs, tmp_path):
    sys.path.insert(0, str(ROOT / 'tests'))
    from damaged_media import cut_copy
    from media.synthetic import make_video
    write_video(tmp_path / 'good.mp4', make_video(3, 64, 40), fps=10)
    cut_copy(tmp_path / 'good.mp4', tmp_path / 'cut.mp4', keep=0.6)
    status, lines = demo(inputs, result=tmp_path / 'r.mp4', driving=tmp_path / 'cut.mp4')
    assert_one_line(status, lines, 'cut.mp4', 'of the 40 frames')
    assert not (tmp_path / 'r.mp4').exists()
    # opted in: warnings as one line each, in the command's own words (not Python's file:line + source line)
    status, lines = demo(inputs, '--allow_damaged', result=tmp_path / 'r.mp4', driving=tmp_path / 'cut.mp4')
    assert status == 0 and (tmp_path / 'r.mp4').exists(), lines
    warned = [l for l in lines if 'cut.mp4' in l]  # the container's shortfall, then frames that fail to decode
    assert warned and all(l.startswith('demo.py: warning: ') and 'allow_damaged' in l for l in warned), lines
    assert not any('warnings.warn' in l or 'Warning:' in l for l in lines), lines


def test_pixel_limit(tmp_path, monkeypatch):
    from media.images import MediaError, read_image
    import cv2
    cv2.imwrite(str(tmp_path / 'big.png'), np.zeros((300, 400, 3), np.uint8))
    assert read_image(tmp_path / 'big.png').shape == (300, 400, 3)
    with pytest.raises(MediaError, match=r'big.png: 400x300 is 0.1 megapixels, over the limit of 0.1 .*FOMM_MAX_PIXELS'):
        read_image(tmp_path / 'big.png', limit=100_000)
    monkeypatch.setenv('FOMM_MAX_PIXELS', '50000')
    with pytest.raises(MediaError, match='over the limit'):
        read_image(tmp_path / 'big.png')


def test_checkpoint_messages_tell_the_damage_apart(tmp_path, inputs):
    from core.checkpoint import CheckpointError, read_checkpoint
    (tmp_path / 'random.pth').write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (tmp_path / 'empty.pth').write_bytes(b'')
    data = (inputs / 'tiny.pth.tar').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    torch.save({'a': torch.zeros(3)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    legacy = (tmp_path / 'legacy.pth').read_bytes()
    (tmp_path / 'cut-legacy.pth').write_bytes(legacy[:len(legacy) - 40])

    class Payload:
        def __reduce__(self):
            return (os.system, ('true',))
    torch.save({'generator': Payload()}, tmp_path / 'code.pth')
    for name, words in (('random.pth', 'not a PyTorch checkpoint'), ('empty.pth', 'empty file'),
                        ('cut.pth', 'truncated'), ('cut-legacy.pth', 'truncated'), ('code.pth', 'may carry code')):
        with pytest.raises(CheckpointError, match=words) as err:
            read_checkpoint(str(tmp_path / name))
        assert name in str(err.value) and len(str(err.value).splitlines()) == 1


# ----------------------------------------------------------------------------- config values
def write_config(tmp_path, edit, name='cfg.yaml') -> str:
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize('section, key, value, words', [
    ('train_params', 'num_epochs', 0, 'num_epochs: 0 must be at least 1'),
    ('train_params', 'num_epochs', -3, 'num_epochs: -3 must be at least 1'),
    ('train_params', 'batch_size', -2, 'batch_size: -2 must be at least 1'),
    ('train_params', 'num_repeats', 0, 'num_repeats: 0'),
    ('train_params', 'lr_generator', -1e-4, 'train_params.lr_generator: -0.0001 must be in [0, 1)'),
    ('train_params', 'scales', [1, 0.5, 0], 'train_params.scales: [1, 0.5, 0] must be in (0, 1]'),
    ('train_params', 'epoch_milestones', [-1], 'epoch_milestones: [-1] must be at least 0'),
    ('train_params.loss_weights', 'perceptual', [10, -1], 'loss_weights.perceptual: [10, -1] must be at least 0'),
    ('train_params.transform_params', 'points_tps', 0, 'points_tps: 0 must be at least 1'),
    ('dataset_params', 'frame_shape', [64, -64, 3], 'frame_shape'),
    ('dataset_params', 'root_dir', None, 'root_dir is missing'),
    ('dataset_params.augmentation_params', 'jitter_param', {'hue': 0.7}, 'jitter_param.hue: 0.7 must be in [0, 0.5]'),
    ('model_params.common_params', 'num_kp', 0, 'common_params.num_kp: 0 must be at least 1'),
    ('model_params.kp_detector_params', 'temperature', 0, 'kp_detector_params.temperature: 0 must be > 0'),
    ('model_params.kp_detector_params', 'scale_factor', 1.5, 'kp_detector_params.scale_factor: 1.5 must be in (0, 1]'),
    ('model_params.generator_params', 'block_expansion', 0, 'generator_params.block_expansion: 0 must be at least 1'),
    ('model_params.generator_params.dense_motion_params', 'kp_variance', -0.01, 'kp_variance: -0.01 must be > 0'),
    ('model_params.discriminator_params', 'num_blocks', 0, 'discriminator_params.num_blocks: 0 must be at least 1'),
])
def test_out_of_range_values_name_file_key_and_value(tmp_path, section, key, value, words):
    from core.config import ConfigError, load_config

    def edit(cfg):
        for part in section.split('.'):
            cfg = cfg.setdefault(part, {}) if cfg.get(part) is None else cfg[part]
        cfg[key] = value
    path = write_config(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_config(path, mode='train')
    message = str(err.value)
    assert message.startswith(path) and words in message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize('section, key, value', [('common_params', 'num_kp', 0), ('kp_detector_params', 'temperature', 0)])
def test_demo_refuses_a_config_that_cannot_animate(tmp_path, inputs, section, key, value):
    """`temperature: 0` used to animate a black video with exit 0, `num_kp: 0` to fail later in torch:
    both stop at the config with one line naming file, key and value, and write nothing."""
    path = write_config(tmp_path, lambda c: c['model_params'][section].__setitem__(key, value))
    source, driving = inputs / 'source.png', inputs / 'driving.mp4'
    out = tmp_path / 'out.mp4'
    res = subprocess.run([sys.executable, str(ROOT / 'demo.py'), '--config', path, '--checkpoint',
                          str(inputs / 'tiny.pth.tar'), '--source_image', str(source),
                          '--driving_video', str(driving), '--result_video', str(out), '--device', 'cpu'],
                         capture_output=True, text=True, cwd=str(ROOT))
    assert res.returncode != 0 and not out.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and '%s.%s: 0 must' % (section, key) in lines[0], res.stderr


def test_inference_checks_only_what_inference_uses_and_names_the_smallest_frame(tmp_path):
    from core.config import ConfigError, load_config
    small_scales = write_config(tmp_path, lambda c: c['train_params'].__setitem__('scales', [1, 0.125]))
    load_config(small_scales)  # demo.py: a training-only value does not matter
    with pytest.raises(ConfigError, match='16 px'):
        load_config(small_scales, mode='train')
    deep = write_config(tmp_path, lambda c: c['model_params']['kp_detector_params'].update(num_blocks=5,
                                                                                            scale_factor=0.25))
    with pytest.raises(ConfigError) as err:
        load_config(deep)
    message = str(err.value)
    # 64 x 0.25 = 16 px cannot be halved 5 times; 128 x 0.25 = 32 can, and 128 suits the other networks
    assert 'model_params.kp_detector_params' in message and '64x64' in message and '128 px' in message, message


def test_a_checkpoint_that_makes_non_finite_frames_is_refused(tmp_path, inputs):
    """Weights of a diverged training (NaN): demo.py stops with one line at the first batch instead
    of writing a constant video, and leaves nothing behind."""
    state = torch.load(inputs / 'tiny.pth.tar', weights_only=True)
    name = next(k for k in state['generator'] if k.startswith('final.') and k.endswith('weight'))
    state['generator'][name] = torch.full_like(state['generator'][name], float('nan'))
    torch.save(state, tmp_path / 'nan.pth.tar')
    out = tmp_path / 'out.mp4'
    res = subprocess.run([sys.executable, str(ROOT / 'demo.py'), '--checkpoint', str(tmp_path / 'nan.pth.tar'),
                          '--source_image', str(inputs / 'source.png'), '--driving_video', str(inputs / 'driving.mp4'),
                          '--result_video', str(out), '--device', 'cpu', '--quiet'], capture_output=True, text=True,
                         cwd=str(ROOT))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and 'non-finite values' in lines[0], res.stderr
    assert sorted(os.listdir(tmp_path)) == ['nan.pth.tar']


# --------------------------------------------------------------------------- runs and evaluation
@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    write_dataset(str(root), size=64, num_train=4, num_test=2, frames=6, seed=0, progress=False)
    return root


def run_py(*args):
    import run
    return run.main([str(a) for a in args])


def test_start_up_failures_leave_no_run_folder(tmp_path, shapes, inputs, seeded_torch_home, capsys):
    cfg = write_config(tmp_path, lambda c: c['dataset_params'].__setitem__('root_dir', str(shapes)))
    other = write_config(tmp_path, lambda c: c['model_params']['common_params'].__setitem__('num_kp', 5), 'five.yaml')
    from engine.torch_engine import load_networks
    g, k, _ = load_networks(other, None)
    torch.save({'generator': g.state_dict(), 'kp_detector': k.state_dict()}, tmp_path / 'five.pth.tar')
    (tmp_path / 'junk.pth.tar').write_bytes(b'junk')
    for mode in ('train', 'reconstruction'):
        for checkpoint in ('five.pth.tar', 'junk.pth.tar'):
            log = tmp_path / ('log-%s-%s' % (mode, checkpoint))
            assert run_py('--config', cfg, '--mode', mode, '--checkpoint', tmp_path / checkpoint, '--log_dir', log,
                          '--num_workers', 0) == 1
            assert not log.exists() or not os.listdir(log), (mode, checkpoint, os.listdir(log))
    err = capsys.readouterr().err
    assert 'five.pth.tar: generator.' in err and 'junk.pth.tar: not a PyTorch checkpoint' in err


def test_reconstruction_skips_unreadable_videos_and_lists_them(tmp_path, shapes, inputs):
    import json
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(shapes, root)
    good = sorted((root / 'test').iterdir())[0]
    (root / 'test' / 'broken.mp4').write_bytes(good.read_bytes()[:200])  # a cut download
    cfg = write_config(tmp_path, lambda c: c['dataset_params'].__setitem__('root_dir', str(root)))
    log = tmp_path / 'log'
    with pytest.warns(Warning, match='broken.mp4'):
        assert run_py('--config', cfg, '--mode', 'reconstruction', '--checkpoint', inputs / 'tiny.pth.tar',
                      '--log_dir', log, '--batch_size', 4) == 0
    report = json.loads(next(log.glob('*/reconstruction/metrics.json')).read_text())
    assert [v['name'] for v in report['videos']] == sorted(p.name for p in (shapes / 'test').iterdir())
    assert [s['name'] for s in report['skipped']] == ['broken.mp4'] and report['mean']['videos'] == 2


def test_crop_video_says_why_no_clip_was_written(tmp_path, capsys):
    import crop_video
    frames = np.zeros((6, 64, 64, 3), np.uint8)  # no face anywhere
    write_video(tmp_path / 'empty.mp4', frames, fps=10)
    assert crop_video.main(['--inp', str(tmp_path / 'empty.mp4'), '--detector', 'haar', '--quiet',
                            '--min_frames', '2']) == 0
    err = capsys.readouterr().err
    assert 'no clip written' in err and 'no face was detected' in err and 'reasons above' not in err


def test_sigterm_mid_write_leaves_no_temporary(inputs, tmp_path):
    import signal
    import time
    long = tmp_path / 'long.mp4'  # enough frames that the demo is still writing when signalled
    write_video(long, (np.random.default_rng(2).random((400, 64, 64, 3)) * 255).astype(np.uint8), fps=25)
    out = tmp_path / 'out'
    out.mkdir()
    cmd = [sys.executable, str(ROOT / 'demo.py'), '--checkpoint', str(inputs / 'tiny.pth.tar'), '--quiet',
           '--source_image', str(inputs / 'source.png'), '--driving_video', str(long), '--batch_size', '1',
           '--result_video', str(out / 'result.mp4'), '--preview', str(out / 'preview.mp4'), '--precision', 'fp32']
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith('.fomm-tmp-') for p in out.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, 'the demo ended before it could be signalled'
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and 'interrupted' in err, err
    assert list(out.iterdir()) == []  # neither the result nor any temporary
