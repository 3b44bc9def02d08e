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
from inference import load_networks  # noqa: E402

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
    torch.manual_seed(0)
    generator, kp_detector, _ = load_networks(TINY, None)
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
    from video_io import probe_video
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
    from video_io import probe_video
    out = tmp_path / 'result.mp4'
    args = args_for(files, out)
    args[args.index('--driving_video') + 1] = str(files / 'short-audio.mp4')
    assert demo.main(args) == 0
    assert probe_video(files / 'short-audio.mp4').num_frames == 14
    assert probe_video(out).num_frames == 14


@pytest.mark.parametrize('source', ['gray.png', 'deep.png'])
def test_demo_sources_no_audio_and_crop_fit(files, tmp_path, source):
    out = tmp_path / 'result.mp4'
    assert demo.main(args_for(files, out, '--no_audio', '--fit', 'crop', '--best_frame', '3', source=source)) == 0
    assert out.is_file() and not re.search(r'Audio', streams(out))


def test_demo_png_and_gif_output(files, tmp_path):
    from video_io import probe_video
    out = tmp_path / 'frames.png'  # a folder of numbered PNG frames
    assert demo.main(args_for(files, out, '--precision', 'fp32')) == 0
    assert out.is_dir() and len([f for f in os.listdir(out) if f.endswith('.png')]) == 14
    # a GIF is written; its frame count is not checked: Pillow merges identical consecutive
    # frames, and a random tiny model makes near-identical ones
    assert demo.main(args_for(files, tmp_path / 'result.gif')) == 0
    assert probe_video(tmp_path / 'result.gif').num_frames >= 1


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
    """A face cut from a portrait, animated, pasted back: the video has the photo's size."""
    import face
    from video_io import probe_video, read_image
    photo = ROOT.parent / 'shared' / 'data' / 'sources' / 'photo-woman.jpg'
    if not photo.exists():
        pytest.skip('needs %s' % photo)
    if not face.haar_available():
        pytest.skip('the haar detector needs OpenCV 4.x')
    out = tmp_path / 'pasted.mp4'
    args = args_for(files, out, '--crop_source', '--paste_back', '--relative')
    args[args.index('--source_image') + 1] = str(photo)
    assert demo.main(args) == 0
    h, w = read_image(photo).shape[:2]
    info = probe_video(out)
    assert (info.height, info.width, info.num_frames) == (h + h % 2, w + w % 2, 14)
