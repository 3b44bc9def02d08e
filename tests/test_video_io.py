"""video_io: image normalisation, streamed/atomic writing, random access, audio copy."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from media import video_io  # noqa: E402
from damaged_media import cut_copy, noisy_copy  # noqa: E402
from media.synthetic import make_video  # noqa: E402
from media.video_io import (MediaError, VideoWriter, copy_audio, ffmpeg_exe, has_audio,  # noqa: E402
                      iter_video_frames, open_video, probe_video, read_frames, read_image,
                      write_video)

MP4_TOL = 8 / 255  # mean abs error allowed for libx264 at crf 18 on small textured frames


@pytest.fixture(scope='module')
def clip():
    return make_video(seed=1, size=32, num_frames=12)  # uint8 (12, 32, 32, 3)


def _mae(a, b) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------

def test_read_image_normalises_gray_alpha_and_16bit(tmp_path):
    import cv2
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    cv2.imwrite(str(tmp_path / 'rgba.png'), np.dstack([rgb[..., ::-1], np.full((9, 7), 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / 'rgb16.png'), (rgb[..., ::-1].astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / 'gray16.png'), gray.astype(np.uint16) * 257 + 100)

    for name, want in [('gray.png', np.repeat(gray[..., None], 3, 2)), ('rgba.png', rgb),
                       ('rgb16.png', rgb), ('gray16.png', np.repeat(gray[..., None], 3, 2))]:
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (9, 7, 3), name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_read_image_bad_file_names_it(tmp_path):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    with pytest.raises(MediaError, match='broken.png'):
        read_image(bad)
    with pytest.raises(MediaError, match='missing.png'):
        read_image(tmp_path / 'missing.png')


# ---------------------------------------------------------------------------------------------
# writing + reading back
# ---------------------------------------------------------------------------------------------

def test_mp4_roundtrip_probe_stream_and_random_access(tmp_path, clip):
    path = tmp_path / 'v.mp4'
    with VideoWriter(path, fps=12.5) as w:
        w.write(clip[:5])          # a batch
        for f in clip[5:]:
            w.write(f)             # single frames
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.has_audio) == (12, 32, 32, False)
    assert info.fps == pytest.approx(12.5)
    full = np.stack(list(iter_video_frames(path)))
    assert full.shape == clip.shape and _mae(full, clip) < MP4_TOL
    got = read_frames(path, [7, 2, 7, 11])
    np.testing.assert_array_equal(got, full[[7, 2, 7, 11]])  # exactly the streamed frames


def test_keyframe_seeking_is_exact_and_decodes_little(tmp_path):
    video = make_video(seed=2, size=32, num_frames=96)
    path = tmp_path / 'long.mp4'
    write_video(path, video, fps=25, gop=8)
    src = open_video(path)
    assert len(src.index.key_index) >= 96 // 8  # the writer's -g took effect
    full = np.stack(list(src))
    rng = np.random.default_rng(0)
    for _ in range(4):
        idx = np.sort(rng.choice(96, size=2))
        before = dict(video_io.decode_stats)
        np.testing.assert_array_equal(src.read(idx), full[idx])
        decoded = video_io.decode_stats['decoded'] - before['decoded']
        assert decoded <= 2 * 8 + 2, (idx, decoded)  # from the key frame before each, not from 0


def test_odd_size_padded_to_even(tmp_path):
    video = make_video(seed=3, size=32, num_frames=4)[:, :31, :29]
    path = tmp_path / 'odd.mp4'
    write_video(path, video, fps=25)
    back = np.stack(list(iter_video_frames(path)))
    assert back.shape == (4, 32, 30, 3)
    assert _mae(back[:, :31, :29], video) < MP4_TOL


def test_gif_and_png_folder_roundtrip(tmp_path, clip):
    write_video(tmp_path / 'v.gif', clip, fps=10)
    gif = np.stack(list(iter_video_frames(tmp_path / 'v.gif')))
    assert gif.shape == clip.shape and _mae(gif, clip) < 4 / 255  # palette quantisation only
    assert probe_video(tmp_path / 'v.gif').fps == pytest.approx(10)

    write_video(tmp_path / 'frames', clip, fmt='.png')
    names = sorted(p.name for p in (tmp_path / 'frames').iterdir())
    assert names[:3] == ['.fomm-frames', '000000.png', '000001.png'] and len(names) == 1 + len(clip)
    np.testing.assert_array_equal(np.stack(list(iter_video_frames(tmp_path / 'frames'))), clip)
    np.testing.assert_array_equal(read_frames(tmp_path / 'frames', [3, 0]), clip[[3, 0]])


def test_writer_accepts_float_and_tensors(tmp_path, clip):
    as_float = torch.from_numpy(clip.astype(np.float32) / 255)
    write_video(tmp_path / 'f', as_float, fmt='png')
    np.testing.assert_array_equal(np.stack(list(iter_video_frames(tmp_path / 'f'))), clip)


def test_interrupted_write_leaves_no_file_and_keeps_old_one(tmp_path, clip):
    path = tmp_path / 'out.mp4'
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=25) as w:
            w.write(clip[:3])
            assert not path.exists()  # only the hidden temporary exists while writing
            raise RuntimeError('stop')
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []

    write_video(path, clip, fps=25)
    old = path.read_bytes()
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=25) as w:
            w.write(clip[:3])
            raise RuntimeError('stop')
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.mp4']

    with pytest.raises(ValueError, match='differs'):
        with VideoWriter(tmp_path / 'mixed.mp4', fps=25) as w:
            w.write(clip[0])
            w.write(clip[0, :16])
    assert not (tmp_path / 'mixed.mp4').exists()


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='unknown video format'):
        VideoWriter(tmp_path / 'x.xyz', fps=25)


def test_stream_can_stop_early(tmp_path, clip):
    path = tmp_path / 'v.mp4'
    write_video(path, clip, fps=25)
    gen = iter_video_frames(path)
    first = next(gen)
    gen.close()  # kills the ffmpeg process; must not hang
    assert first.shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------
# corrupt input
# ---------------------------------------------------------------------------------------------

def test_corrupt_and_truncated_videos_name_the_file(tmp_path, clip):
    junk = tmp_path / 'junk.mp4'
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match='junk.mp4'):
        probe_video(junk)
    good = tmp_path / 'good.mp4'
    write_video(good, make_video(seed=4, size=32, num_frames=40), fps=25)
    data = good.read_bytes()
    cut = tmp_path / 'cut.mp4'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(MediaError, match='cut.mp4'):
        probe_video(cut)


# ---------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------

def test_copy_audio(tmp_path, clip):
    src = tmp_path / 'driving.mp4'
    subprocess.run([ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', 'testsrc=size=32x32:rate=25:duration=0.5',
                    '-f', 'lavfi', '-i', 'sine=frequency=440:duration=0.5', '-c:v', 'libx264',
                    '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', str(src)], check=True)
    assert has_audio(src)
    dst = tmp_path / 'result.mp4'
    write_video(dst, clip, fps=25)
    before = np.stack(list(iter_video_frames(dst)))
    assert not has_audio(dst)
    assert copy_audio(src, dst) is True
    assert has_audio(dst)
    np.testing.assert_array_equal(np.stack(list(iter_video_frames(dst))), before)  # video untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []

    silent = tmp_path / 'silent.mp4'
    write_video(silent, clip, fps=25)
    other = tmp_path / 'other.mp4'
    write_video(other, clip, fps=25)
    old = other.read_bytes()
    assert copy_audio(silent, other) is False
    assert other.read_bytes() == old


def test_edit_list_cut_counts_and_seeks_shown_frames_only(tmp_path):
    src = tmp_path / 'src.mp4'
    write_video(src, make_video(seed=6, size=32, num_frames=60), fps=25, gop=10)
    cut = tmp_path / 'cut.mp4'  # a stream-copy cut off a key frame: hidden pre-roll packets
    subprocess.run([ffmpeg_exe(), '-v', 'error', '-ss', '0.5', '-i', str(src), '-c', 'copy', str(cut)],
                   check=True)
    full = np.stack(list(iter_video_frames(cut)))
    video = open_video(cut)
    assert video.num_frames == len(full) < 60
    idx = [0, 1, len(full) // 2, len(full) - 1]
    np.testing.assert_array_equal(video.read(idx), full[idx])


# ---------------------------------------------------------------------------------------------
# decode integrity (damaged files built here), rotation, processes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def damaged(tmp_path_factory):
    """A good 40-frame mp4, the same cut at 60% of its bytes, and with random middle bytes."""
    folder = tmp_path_factory.mktemp('damaged')
    write_video(folder / 'good.mp4', make_video(seed=9, size=64, num_frames=40), fps=25)
    cut_copy(folder / 'good.mp4', folder / 'cut.mp4')
    noisy_copy(folder / 'good.mp4', folder / 'noise.mp4')
    return folder


def test_damaged_videos_name_the_file_and_both_counts(damaged):
    good = np.stack(list(open_video(damaged / 'good.mp4')))
    with pytest.raises(MediaError, match=r'cut\.mp4: truncated or damaged video: the file holds (\d+) of '
                                         r'the 40 frames') as err:
        open_video(damaged / 'cut.mp4')
    assert int(str(err.value).split('holds ')[1].split()[0]) < 40
    noise = open_video(damaged / 'noise.mp4')  # every packet is there: found while decoding
    assert noise.num_frames == 40
    with pytest.raises(MediaError, match=r'noise\.mp4: damaged video: stopped after \d+ of 40 frames'):
        for _ in noise:
            pass
    with pytest.raises(MediaError, match=r'noise\.mp4: damaged video'):
        noise.read_all()

    for name in ('cut.mp4', 'noise.mp4'):  # opted in: a warning with both counts, the frames that decode
        with pytest.warns(video_io.DamagedVideoWarning, match=r'%s: damaged video: decoded (\d+) of \d+ frames'
                          % name.replace('.', r'\.')):
            frames = open_video(damaged / name, allow_damaged=True).read_all()
        assert 0 < len(frames) < 40
        np.testing.assert_array_equal(frames[0], good[0])  # what decodes is the real picture


def test_rotation_metadata_is_applied_like_ffmpeg(tmp_path, clip):
    plain = tmp_path / 'plain.mp4'
    write_video(plain, clip[:, :, :24], fps=25)  # 32 high, 24 wide
    for degrees in (90, 180, 270):
        rotated = tmp_path / ('rot%d.mp4' % degrees)
        subprocess.run([ffmpeg_exe(), '-v', 'error', '-display_rotation', str(degrees), '-i', str(plain),
                        '-c', 'copy', str(rotated)], check=True)
        video = open_video(rotated)
        h, w = (24, 32) if degrees % 180 else (32, 24)
        assert (video.info.height, video.info.width) == (h, w)
        cli = subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(rotated), '-f', 'rawvideo',  # auto-rotates
                              '-pix_fmt', 'rgb24', '-'], check=True, capture_output=True).stdout
        cli = np.frombuffer(cli, np.uint8).reshape(-1, h, w, 3)
        ours = np.stack(list(video))
        assert _mae(ours, cli) < 2 / 255  # the same picture, turned the same way (RGB conversion aside)
        np.testing.assert_array_equal(video.read([5]), ours[5:6])


def _read_in_child(video, inherited, out):
    inherited.close()  # the parent's open decoder: must not be freed (nor waited on) here
    out.put(video.read([0, video.num_frames - 1]).sum())


def test_sources_pickle_and_fork_without_leaks(tmp_path):
    import multiprocessing
    import os
    import pickle
    path = tmp_path / 'v.mp4'
    write_video(path, make_video(seed=10, size=32, num_frames=30), fps=25, gop=10)
    video = pickle.loads(pickle.dumps(open_video(path)))
    fds = len(os.listdir('/proc/self/fd'))
    for i in range(40):
        video.read([i % 30])
    for _ in video.iter_span([3, 17]):
        pass
    assert len(os.listdir('/proc/self/fd')) <= fds  # nothing stays open between reads
    stream = iter(video)  # a threaded decoder open in the parent while a worker forks
    next(stream)
    queue = multiprocessing.get_context('fork').Queue()
    child = multiprocessing.get_context('fork').Process(target=_read_in_child, args=(video, stream, queue))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, 'the forked reader hung or failed'
    assert queue.get(timeout=5) == video.read([0, 29]).sum()
    stream.close()
