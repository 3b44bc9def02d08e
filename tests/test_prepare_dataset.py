"""prepare_dataset.py: layouts in, seekable videos out; corrupt inputs skipped; resume; output rules."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media import video_io  # noqa: E402
from damaged_media import cut_copy, noisy_copy  # noqa: E402
from frames_dataset import FramesDataset  # noqa: E402
from media.images import resize  # noqa: E402
from media.outputs import OutputError  # noqa: E402
from prepare_dataset import MANIFEST, Settings, main, prepare  # noqa: E402
from media.synthetic import make_video  # noqa: E402
from media.video_io import open_video, write_video  # noqa: E402

MP4_TOL = 8 / 255  # mean abs error allowed for libx264 at crf 18 on small textured frames


def _mae(a, b) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255)


def _prepare(inp, out, shape=(32, 32), gop=4, **kw):
    lines = []
    report = prepare(str(inp), str(out), Settings(shape, gop=gop, **kw), workers=1, progress=False, log=lines.append)
    return report, lines


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    """Every layout FramesDataset reads, frames 48x36 (not the target size), in train/ and test/."""
    import cv2
    root = tmp_path_factory.mktemp('layouts')
    clips = {}
    for split, seed in (('train', 0), ('test', 5)):
        folder = root / split
        long = make_video(seed=seed, size=48, num_frames=40)[:, :, :36]  # (40, 48, 36, 3)
        write_video(folder / 'long.mp4', long, fps=20)  # one key frame: seeking decodes from frame 0
        clips[split, 'long.mp4'] = np.stack(list(open_video(folder / 'long.mp4')))
        short = make_video(seed=seed + 1, size=48, num_frames=6)[:, :, :36]
        write_video(folder / 'anim.gif', short, fps=10)
        write_video(folder / 'frames', short, fmt='.png')
        cv2.imwrite(str(folder / 'strip.png'), np.concatenate(list(short), 1)[..., ::-1])  # (48, 6*36)
    (root / 'train' / 'notes.txt').write_text('not a video')
    return root, clips


def test_prepared_copy_has_size_count_and_seeks_like_a_full_decode(layouts, tmp_path):
    root, clips = layouts
    out = tmp_path / 'prepared'
    report, _ = _prepare(root, out, shape=(32, 24), gop=4)
    assert report == {'prepared': 8, 'already': 0, 'skipped': []}
    names = sorted(p.name for p in (out / 'train').iterdir())
    assert names == ['anim.mp4', 'frames.mp4', 'long.mp4', 'strip.mp4']
    for split in ('train', 'test'):
        for name, frames in (('long.mp4', 40), ('anim.mp4', 6), ('frames.mp4', 6), ('strip.mp4', 6)):
            video = open_video(out / split / name)
            assert (video.num_frames, video.info.height, video.info.width) == (frames, 32, 24), (split, name)
            assert not video.info.has_audio and len(video.index.key_index) >= frames // 4
    video = open_video(out / 'train' / 'long.mp4')
    full = np.stack(list(video))
    original = np.stack([resize(f, 32, 24) for f in clips['train', 'long.mp4']])
    assert _mae(full, original) < MP4_TOL  # resized once, encoded once: within codec error
    for k in np.random.default_rng(0).choice(40, size=5, replace=False):
        before = video_io.decode_stats['decoded']
        np.testing.assert_array_equal(video.read([k])[0], full[k])  # a seek gives the full decode's pixels
        assert video_io.decode_stats['decoded'] - before <= 4 + 1  # from the key frame before it
    assert video.info.fps == pytest.approx(20)
    ds = FramesDataset(out, frame_shape=(32, 24, 3), is_train=True, cache_mb=0)  # no resize warnings
    assert ds[0]['driving'].shape == (3, 32, 24)


def _write_bad_inputs(folder: Path) -> None:
    write_video(folder / 'good.mp4', make_video(seed=7, size=32, num_frames=30), fps=25)
    cut_copy(folder / 'good.mp4', folder / 'cut.mp4', keep=0.5)
    noisy_copy(folder / 'good.mp4', folder / 'noise.mp4', end=0.7, seed=1)
    (folder / 'junk.mp4').write_bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def test_corrupt_inputs_are_listed_and_skipped(tmp_path, capsys):
    inp, out = tmp_path / 'in', tmp_path / 'out'
    _write_bad_inputs(inp / 'train')
    write_video(inp / 'train' / 'other.mp4', make_video(seed=8, size=32, num_frames=12), fps=25)
    cmd = [sys.executable, str(ROOT / 'prepare_dataset.py'), str(inp), str(out), '--frame_shape', '32,32',
           '--workers', '2', '--quiet']
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'prepared 2 video(s)' in res.stderr and 'skipped 3 input(s)' in res.stderr
    for bad in ('cut.mp4', 'noise.mp4', 'junk.mp4'):
        assert any(line.strip().startswith(str(inp / 'train' / bad)) for line in res.stderr.splitlines()), bad
    assert sorted(os.listdir(out / 'train')) == ['good.mp4', 'other.mp4']  # nothing half written, no temporaries
    assert open_video(out / 'train' / 'good.mp4').num_frames == 30

    only_bad = tmp_path / 'only_bad'
    (only_bad / 'train').mkdir(parents=True)
    (only_bad / 'train' / 'junk.mp4').write_bytes(b'\x00' * 100)
    assert main([str(only_bad), str(tmp_path / 'out2'), '--frame_shape', '32,32', '--quiet']) == 1  # nothing prepared
    assert 'junk.mp4' in capsys.readouterr().err


def _dead_pid() -> int:
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_interrupted_preparation_resumes_without_redoing_finished_files(tmp_path):
    inp, out = tmp_path / 'in', tmp_path / 'out'
    for i in range(3):
        write_video(inp / ('v%d.mp4' % i), make_video(seed=20 + i, size=32, num_frames=10), fps=25)
    report, _ = _prepare(inp, out)
    assert report['prepared'] == 3 and (out / MANIFEST).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob('*.mp4')}
    # as a kill -9 in the middle of v1 leaves it: no final file, a temporary of a process now gone
    (out / 'v1.mp4').unlink()
    from media.outputs import writer_id
    stale = out / ('.fomm-tmp-v1.mp4.%s.%d.mp4' % (writer_id(), _dead_pid()))
    stale.write_bytes(b'\x00\x00\x00\x18ftypisom half written')
    report, lines = _prepare(inp, out)
    assert report == {'prepared': 1, 'already': 2, 'skipped': []} and '(2 already there)' in lines[0]
    assert not stale.exists()
    for name in ('v0.mp4', 'v2.mp4'):
        assert (out / name).stat().st_mtime_ns == stamps[name], name  # not written again
    assert open_video(out / 'v1.mp4').num_frames == 10
    with pytest.raises(OutputError, match='frame_shape'):  # resuming with other settings
        _prepare(inp, out, shape=(64, 64))


def test_output_folder_rules(tmp_path, capsys):
    inp = tmp_path / 'in'
    write_video(inp / 'test' / 'a.mp4', make_video(seed=30, size=32, num_frames=4), fps=25)
    with pytest.raises(OutputError, match='inside'):
        _prepare(inp, inp / 'prepared')
    with pytest.raises(OutputError, match='input folder'):
        _prepare(inp, inp)
    with pytest.raises(OutputError, match='holds the input'):
        _prepare(inp / 'test', inp)
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'a.mp4').write_bytes(b'my own file')
    with pytest.raises(OutputError, match='did not prepare'):
        _prepare(inp, mine)
    assert (mine / 'a.mp4').read_bytes() == b'my own file' and sorted(os.listdir(mine)) == ['a.mp4']
    for flags in (['--frame_shape', '32'], ['--frame_shape', '32,32', '--gop', '0'], ['--frame_shape', '8,8,8']):
        assert main([str(inp), str(tmp_path / 'o')] + flags) == 1
        err = capsys.readouterr().err
        assert flags[-2] in err and len(err.strip().splitlines()) == 1, err  # one line naming the flag
    assert main([str(inp), str(inp / 'test' / 'x'), '--frame_shape', '8,8']) == 1
    assert 'OUT' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists() and sorted(os.listdir(inp / 'test')) == ['a.mp4']


def test_png_frame_folders(layouts, tmp_path):
    root, clips = layouts
    report, _ = _prepare(root, tmp_path / 'png', shape=(32, 24), format='png')
    assert report['prepared'] == 8
    folder = tmp_path / 'png' / 'test' / 'long'
    video = open_video(folder)
    assert video.num_frames == 40 and (video.info.height, video.info.width) == (32, 24)
    assert _mae(video.read([17])[0], resize(clips['test', 'long.mp4'][17], 32, 24)) == 0  # lossless
