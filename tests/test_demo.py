"""demo.py: the CLI end to end (fps, audio, sizes), its one-line errors, the original's Python API."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
from baseline import per_frame_animation  # noqa: E402
from engine.torch_engine import load_networks  # noqa: E402
from test_inference import tiny_networks  # noqa: E402

TINY = str(ROOT / 'tests' / 'tiny.yaml')


pytestmark = pytest.mark.usefixtures('one_thread')


def ffmpeg() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def streams(path) -> str:
    """ffmpeg's description of a file's streams (it exits non-zero without an output: fine)."""
    res = subprocess.run([ffmpeg(), '-hide_banner', '-i', str(path)], capture_output=True, text=True)
    return '\n'.join(line for line in res.stderr.splitlines() if 'Stream #' in line)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny checkpoint, a driving video with a sine audio track (12 fps, 14 frames, 96x80; the
    audio outlasts the video, and in short-audio.mp4 it ends a few ms before the video) and
    sources: an RGBA non-square PNG, a grayscale PNG and a 16-bit PNG."""
    import cv2
    folder = tmp_path_factory.mktemp('demo')
    generator, kp_detector, _ = tiny_networks()  # outputs that depend on source and motion
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 1},
               folder / 'tiny.pth.tar')
    for name, audio_seconds in (('driving.mp4', 2.0), ('short-audio.mp4', 1.1)):
        subprocess.run([ffmpeg(), '-hide_banner', '-loglevel', 'error', '-y',
                        '-f', 'lavfi', '-i', 'testsrc=size=96x80:rate=12:duration=1.16',  # 14 frames
                        '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=16000:duration=%g' % audio_seconds,
                        '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
                        '-c:a', 'aac', str(folder / name)], check=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / 'rgba.png'), (rng.random((50, 70, 4)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / 'gray.png'), (rng.random((40, 40)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / 'deep.png'), (rng.random((64, 48, 3)) * 65535).astype(np.uint16))
    return folder


def args_for(files, out, *extra, source='rgba.png'):
    return ['--config', TINY, '--checkpoint', str(files / 'tiny.pth.tar'), '--source_image', str(files / source),
            '--driving_video', str(files / 'driving.mp4'), '--result_video', str(out), '--quiet',
            '--batch_size', '4', *extra]


def test_demo_keeps_fps_frames_and_audio(files, tmp_path):
    from media.video_io import probe_video
    out, preview = tmp_path / 'result.mp4', tmp_path / 'preview.mp4'
    assert demo.main(args_for(files, out, '--relative', '--adapt_scale', '--preview', str(preview))) == 0
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (14, 64, 64)
    assert info.fps == pytest.approx(12)
    assert re.search(r'Stream #.*Audio', streams(out)), streams(out)
    info = probe_video(preview)
    assert (info.num_frames, info.height, info.width) == (14, 64, 3 * 64)
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]  # no temporary left behind


def test_demo_audio_shorter_than_video_keeps_every_frame(files, tmp_path):
    from media.video_io import probe_video
    out = tmp_path / 'result.mp4'
    args = args_for(files, out)
    args[args.index('--driving_video') + 1] = str(files / 'short-audio.mp4')
    assert demo.main(args) == 0
    assert probe_video(files / 'short-audio.mp4').num_frames == 14
    assert probe_video(out).num_frames == 14


def frames_of(path):
    from media.video_io import open_video
    return list(open_video(path))


def engine_output(files, source, fit_mode, initial_index=None, relative=False):
    """What demo.py must write: the engine fed the source and the driving frames fitted the same way."""
    from media.images import fit
    from engine.torch_engine import AnimationEngine
    engine = AnimationEngine.from_checkpoint(TINY, str(files / 'tiny.pth.tar'), device='cpu', precision='fp32',
                                             batch_size=4)
    driving = [fit(f, (64, 64), fit_mode) for f in frames_of(files / 'driving.mp4')]
    engine.set_source(fit(source, (64, 64), fit_mode))
    initial = driving[initial_index] if initial_index is not None else None
    return np.stack(list(engine.animate(driving, relative=relative, initial_frame=initial))), driving


@pytest.mark.parametrize('source', ['gray.png', 'deep.png'])
def test_demo_sources_no_audio_and_crop_fit(files, tmp_path, source):
    """--fit crop and --best_frame checked on content: the frames (PNG, lossless) are the engine's
    output for the centre-cropped source and driving frames, relative to driving frame 3."""
    from media.images import read_image
    out, video = tmp_path / 'result.png', tmp_path / 'result.mp4'
    extra = ('--no_audio', '--fit', 'crop', '--best_frame', '3', '--relative', '--precision', 'fp32')
    assert demo.main(args_for(files, out, *extra, source=source)) == 0
    expected, _ = engine_output(files, read_image(files / source), 'crop', initial_index=3, relative=True)
    np.testing.assert_array_equal(np.stack(frames_of(out)), expected)
    stretched, _ = engine_output(files, read_image(files / source), 'resize', initial_index=3, relative=True)
    from_first, _ = engine_output(files, read_image(files / source), 'crop', initial_index=0, relative=True)
    # the check can fail: a stretched source or another initial frame gives other frames
    assert (stretched != expected).any() and (from_first != expected).any()
    assert demo.main(args_for(files, video, *extra, source=source)) == 0
    assert video.is_file() and not re.search(r'Audio', streams(video))


def test_demo_png_gif_and_preview_content(files, tmp_path):
    from media.images import read_image
    out, preview, gif = tmp_path / 'frames.png', tmp_path / 'side.png', tmp_path / 'result.gif'
    assert demo.main(args_for(files, out, '--precision', 'fp32', '--preview', str(preview))) == 0
    assert out.is_dir() and len([f for f in os.listdir(out) if f.endswith('.png')]) == 14
    result = np.stack(frames_of(out))
    expected, driving = engine_output(files, read_image(files / 'rgba.png'), 'resize')
    np.testing.assert_array_equal(result, expected)
    side = np.stack(frames_of(preview))  # source | driving | result, at the model's size
    from media.images import fit
    assert side.shape == (14, 64, 3 * 64, 3)
    np.testing.assert_array_equal(side[:, :, :64], np.broadcast_to(fit(read_image(files / 'rgba.png'), (64, 64)),
                                                                    (14, 64, 64, 3)))
    np.testing.assert_array_equal(side[:, :, 64:128], np.stack(driving))
    np.testing.assert_array_equal(side[:, :, 128:], result)
    # a GIF: Pillow merges identical consecutive frames, so compare the first one (palette error only)
    assert demo.main(args_for(files, gif, '--precision', 'fp32')) == 0
    first = frames_of(gif)[0]
    assert np.abs(first.astype(int) - result[0]).mean() < 4


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, str(ROOT / 'demo.py'), *args], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=120, env=env)


def assert_one_line_error(res, *words):
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert 'Traceback' not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_errors(files, tmp_path):
    out = tmp_path / 'never.mp4'
    res = run_cli(*args_for(files, out, source='missing.png'))
    assert_one_line_error(res, '--source_image', 'missing.png')

    bad = tmp_path / 'other.pth.tar'  # a checkpoint of another model (5 keypoints, not 4)
    cfg = ROOT.parent / 'shared' / 'fixtures' / 'reference' / 'fomm-tiny-a.pth.tar'
    if cfg.exists():
        bad = cfg
    else:
        import yaml
        data = yaml.safe_load(open(TINY))
        data['model_params']['common_params']['num_kp'] = 5
        (tmp_path / 'five.yaml').write_text(yaml.safe_dump(data))
        g, k, _ = load_networks(str(tmp_path / 'five.yaml'), None)
        torch.save({'generator': g.state_dict(), 'kp_detector': k.state_dict()}, bad)
    args = args_for(files, out)
    args[args.index('--checkpoint') + 1] = str(bad)
    res = run_cli(*args)
    assert_one_line_error(res, str(bad), 'generator.', 'shape')

    (tmp_path / 'garbage.pth.tar').write_bytes(b'not a checkpoint')
    args[args.index('--checkpoint') + 1] = str(tmp_path / 'garbage.pth.tar')
    assert_one_line_error(run_cli(*args), 'garbage.pth.tar')

    res = run_cli(*args_for(files, tmp_path / 'x.mp4')[:-2], '--driving_video', str(tmp_path / 'none.mp4'))
    assert_one_line_error(res, '--driving_video')

    (tmp_path / 'a_file').write_text('x')
    res = run_cli(*args_for(files, tmp_path / 'a_file' / 'out.mp4'))
    assert_one_line_error(res, '--result_video')
    assert_one_line_error(run_cli(*args_for(files, tmp_path / 'out.xyz')), '--result_video', '.xyz')
    assert_one_line_error(run_cli(*args_for(files, tmp_path / 'o.mp4', '--paste_back')), '--paste_back')
    assert_one_line_error(run_cli(*args_for(files, tmp_path / 'o.mp4', '--best_frame', '99')), '--best_frame')
    assert not out.exists() and not (tmp_path / 'o.mp4').exists()


def test_help_shows_defaults():
    res = run_cli('--help')
    assert res.returncode == 0
    for flag in ('--relative', '--adapt_scale', '--find_best_frame', '--best_frame', '--fit', '--no_audio',
                 '--crop_source', '--paste_back', '--precision', '--batch_size', '--device'):
        assert flag in res.stdout
    assert '(default: auto)' in res.stdout and '(default: resize)' in res.stdout


def test_original_api(files):
    generator, kp_detector = demo.load_checkpoints(TINY, str(files / 'tiny.pth.tar'), cpu=True)
    assert not generator.training and not kp_detector.training
    rng = np.random.default_rng(1)
    source = rng.random((64, 64, 3))
    driving = [rng.random((64, 64, 3)) for _ in range(5)]
    got = demo.make_animation(source, driving, generator, kp_detector, relative=True, adapt_movement_scale=True,
                              cpu=True)
    assert len(got) == 5 and got[0].shape == (64, 64, 3)
    expected = per_frame_animation(source, driving, generator, kp_detector, relative=True, adapt_movement_scale=True)
    assert max(np.abs(a - b).max() for a, b in zip(got, expected)) < 1e-4


def test_crop_source_paste_back(files, tmp_path):
    """A face cut from a portrait, animated, pasted back: the crop's frames are the engine's output
    on the cropped face; pasted back, the video has the photo's size and every pixel outside the
    face square is the photo's (exactly in PNG frames, within codec error in mp4)."""
    from analysis import face
    from media.images import read_image
    photo = ROOT.parent / 'shared' / 'data' / 'sources' / 'photo-woman.jpg'
    if not photo.exists():
        pytest.skip('needs %s' % photo)
    from conftest import haar_ok
    if not haar_ok():
        pytest.skip('the haar detector needs OpenCV 4.x')
    image = read_image(photo)
    crop, geometry = face.crop_face(image, face.find_face(image, face.make_detector('haar')), (64, 64))
    args = args_for(files, tmp_path / 'crop.png', '--crop_source', '--relative', '--precision', 'fp32')
    args[args.index('--source_image') + 1] = str(photo)
    assert demo.main(args) == 0
    expected, _ = engine_output(files, crop, 'resize', relative=True)
    np.testing.assert_array_equal(np.stack(frames_of(tmp_path / 'crop.png')), expected)

    x0, y0, x1, y1 = geometry.box
    outside = np.ones(image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    h, w = image.shape[:2]
    for name, tolerance in (('pasted.png', 0), ('pasted.mp4', 3.0)):
        args[args.index('--result_video') + 1] = str(tmp_path / name)
        assert demo.main(args + ['--paste_back']) == 0
        frames = np.stack(frames_of(tmp_path / name))[:, :h, :w].astype(int)
        assert frames.shape == (14, h, w, 3)
        error = np.abs(frames - image.astype(int))[:, outside]
        assert error.mean() <= tolerance, (name, error.mean())
        assert np.abs(frames[:, y0:y1, x0:x1] - image[y0:y1, x0:x1].astype(int)).mean() > 1  # the face moved
