"""FramesDataset, PairedDataset, augmentation, synthetic data: layouts, sampling, seeding, bad input."""
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import img_as_float32
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / '..' / 'shared'
sys.path.insert(0, str(ROOT))

from media import video_io  # noqa: E402
from media.augmentation import AllAugmentationTransform, ColorJitter  # noqa: E402
from damaged_media import cut_copy, noisy_copy  # noqa: E402
from frames_dataset import (DatasetError, DatasetRepeater, DatasetWarning, FramesDataset,  # noqa: E402
                            PairedDataset, default_num_workers, read_video, worker_init_fn)
from media.synthetic import make_video, write_dataset  # noqa: E402
from media.video_io import write_video  # noqa: E402

VOX_AUG = {'flip_param': {'horizontal_flip': True, 'time_flip': True},
           'jitter_param': {'brightness': 0.1, 'contrast': 0.1, 'saturation': 0.1, 'hue': 0.1}}
SHAPE = (32, 32, 3)
MP4_TOL = 8 / 255


def _write_layouts(folder: Path, video: np.ndarray) -> None:
    """The same frames as every layout FramesDataset reads."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / 'clip.mp4', video, fps=25)
    write_video(folder / 'clip.gif', video, fps=25)
    write_video(folder / 'clip', video, fmt='.png')                       # folder of frames
    cv2.imwrite(str(folder / 'strip.png'), np.concatenate(list(video), 1)[..., ::-1])  # (H, T*W)
    cv2.imwrite(str(folder / 'tall.png'), np.concatenate(list(video), 0)[..., ::-1])   # (T*H, W)


@pytest.fixture(scope='module')
def clip():
    return make_video(seed=5, size=32, num_frames=8)


@pytest.fixture(scope='module')
def layouts(tmp_path_factory, clip):
    root = tmp_path_factory.mktemp('layouts')
    _write_layouts(root / 'test', clip)
    _write_layouts(root / 'train', clip)
    (root / 'train' / 'notes.txt').write_text('not a video')  # ignored silently
    (root / 'train' / 'empty_dir').mkdir()
    return root


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """A synthetic dataset with ids: 3 ids x 2 videos for training, 4 test videos."""
    root = tmp_path_factory.mktemp('shapes')
    write_dataset(root, size=32, num_train=6, num_test=4, frames=8, videos_per_id=2, progress=False)
    return root


# ---------------------------------------------------------------------------------------------
# layouts and item format
# ---------------------------------------------------------------------------------------------

def test_every_layout_loads_the_same_frames(layouts, clip):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no warning for ignored non-media files
        ds = FramesDataset(layouts, frame_shape=SHAPE, is_train=False)
    assert ds.videos == ['clip', 'clip.gif', 'clip.mp4', 'strip.png', 'tall.png']
    want = img_as_float32(clip)  # (T, H, W, 3), the original's conversion
    for i, name in enumerate(ds.videos):
        item = ds[i]
        assert item['name'] == name
        video = item['video']
        assert video.dtype == np.float32 and video.shape == (3, 8, 32, 32), name
        got = video.transpose((1, 2, 3, 0))
        if name.endswith('.mp4'):
            assert np.abs(got - want).mean() < MP4_TOL, name
        elif name.endswith('.gif'):
            assert np.abs(got - want).mean() < 4 / 255, name
        else:  # PNG frames and strips: exact
            np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(read_video(Path(ds.root_dir) / name, SHAPE), got)


def test_training_item_format(layouts, clip):
    ds = FramesDataset(layouts, frame_shape=SHAPE, is_train=True, augmentation_params=None)
    assert len(ds) == 5
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {'driving', 'source', 'name'}
        for key in ('driving', 'source'):
            assert item[key].dtype == np.float32 and item[key].shape == (3, 32, 32)
            assert 0 <= item[key].min() and item[key].max() <= 1
        if item['name'] in ('clip', 'strip.png'):  # exact layouts: each frame is one of the clip's
            frames = img_as_float32(clip).transpose((0, 3, 1, 2))
            assert any(np.array_equal(item['source'], f) for f in frames)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch['driving'].shape == (2, 3, 32, 32)


def test_frames_are_resized_with_one_warning_per_video(layouts):
    with pytest.warns(DatasetWarning) as record:
        ds = FramesDataset(layouts, frame_shape=(24, 20, 3), is_train=False)
    resized = [str(w.message) for w in record if 'resized' in str(w.message)]
    assert len(resized) == 5 and 'clip.mp4' in ' '.join(resized)
    assert ds[2]['video'].shape == (3, 8, 24, 20)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ds[0], ds[1]  # no more warnings when reading


def test_gray_alpha_16bit_frames_become_rgb(tmp_path):
    import cv2
    folder = tmp_path / 'test' / 'mixed'
    folder.mkdir(parents=True)
    rgb = make_video(seed=6, size=32, num_frames=3)
    cv2.imwrite(str(folder / '0.png'), rgb[0, :, :, 0])                                  # gray
    cv2.imwrite(str(folder / '1.png'), np.dstack([rgb[1, ..., ::-1], rgb[1, ..., 0]]))  # RGBA
    cv2.imwrite(str(folder / '2.png'), rgb[2, ..., ::-1].astype(np.uint16) * 257)       # 16-bit
    video = FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)[0]['video']
    assert video.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(video[:, 0], img_as_float32(np.repeat(rgb[0, None, :, :, 0], 3, 0)))
    np.testing.assert_array_equal(video[:, 1:].transpose((1, 2, 3, 0)), img_as_float32(rgb[1:]))


# ---------------------------------------------------------------------------------------------
# splits, ids, pairs
# ---------------------------------------------------------------------------------------------

def test_seeded_split_without_train_test_folders(tmp_path):
    for i in range(10):
        write_video(tmp_path / ('v%d' % i), make_video(i, 16, 2), fmt='.png')
    train = FramesDataset(tmp_path, frame_shape=(16, 16, 3), is_train=True, random_seed=0)
    test = FramesDataset(tmp_path, frame_shape=(16, 16, 3), is_train=False, random_seed=0)
    # sklearn's train_test_split(sorted names, random_state=0, test_size=0.2):
    # permutation(10) with seed 0 is [2 8 4 9 1 6 7 3 0 5]; test = first ceil(0.2 * 10).
    assert test.videos == ['v2', 'v8']
    assert sorted(train.videos) == sorted('v%d' % i for i in (4, 9, 1, 6, 7, 3, 0, 5))
    other = FramesDataset(tmp_path, frame_shape=(16, 16, 3), is_train=False, random_seed=1)
    assert other.videos != test.videos


def test_id_sampling(shapes):
    ds = FramesDataset(shapes, frame_shape=SHAPE, id_sampling=True, is_train=True)
    assert ds.videos == ['id0000', 'id0001', 'id0002'] and len(ds) == 3
    seen = set()
    for _ in range(12):
        for i in range(3):
            name = ds[i]['name']
            assert name.startswith(ds.videos[i] + '#')
            seen.add(name)
    assert len(seen) == 6  # both videos of every id get drawn
    test = FramesDataset(shapes, frame_shape=SHAPE, id_sampling=True, is_train=False)
    assert len(test) == 4 and test.videos[0].endswith('.mp4')  # ids only matter for training


def test_paired_dataset_random_and_csv(shapes, tmp_path):
    test = FramesDataset(shapes, frame_shape=SHAPE, is_train=False)
    pairs = PairedDataset(test, number_of_pairs=5, seed=0)
    assert len(pairs) == 5
    # The original: np.random.seed(0); np.random.choice(16, 5, replace=False) over mgrid[:4, :4].
    np.random.seed(0)
    want = np.mgrid[:4, :4].reshape(2, -1).T[np.random.choice(16, 5, replace=False)]
    np.testing.assert_array_equal(pairs.pairs, want)
    item = pairs[0]
    assert set(item) == {'driving_video', 'driving_name', 'source_video', 'source_name'}
    assert item['driving_name'] == test.videos[want[0][0]]
    assert len(PairedDataset(test, number_of_pairs=100)) == 16

    csv = tmp_path / 'pairs.csv'
    csv.write_text('distance,source,driving,frame\n0,%s,%s,0\n0,%s,%s,0\n'
                   % (test.videos[1], test.videos[0], test.videos[2], test.videos[3].rsplit('.', 1)[0]))
    test.pairs_list = str(csv)
    pairs = PairedDataset(test, number_of_pairs=10)
    np.testing.assert_array_equal(pairs.pairs, [[0, 1], [3, 2]])  # (driving, source); stems accepted
    assert pairs[1]['source_name'] == test.videos[2]

    csv.write_text('source,driving\n%s,%s\n%s,ghost.mp4\n' % (test.videos[0], test.videos[1], test.videos[0]))
    with pytest.raises(DatasetError, match=r'pairs\.csv.*ghost\.mp4'):
        PairedDataset(test, number_of_pairs=1)


def test_repeater(shapes):
    ds = FramesDataset(shapes, frame_shape=SHAPE, is_train=True)
    rep = DatasetRepeater(ds, num_repeats=3)
    assert len(rep) == 18 and rep[7]['name'] == ds.videos[1]


# ---------------------------------------------------------------------------------------------
# sampling reads only what it needs
# ---------------------------------------------------------------------------------------------

def test_training_sample_decodes_only_needed_frames(tmp_path, monkeypatch):
    long = make_video(seed=7, size=32, num_frames=240)
    write_video(tmp_path / 'one_key' / 'train' / 'long.mp4', long, fps=25)             # one key frame
    write_video(tmp_path / 'many_keys' / 'train' / 'long.mp4', long, fps=25, gop=12)  # every 12

    def no_full_read(self):
        raise AssertionError('a training sample decoded the whole video')
    monkeypatch.setattr(video_io.ContainerSource, '__iter__', no_full_read)

    for sub, bound in (('one_key', None), ('many_keys', 2 * 12 + 2)):
        ds = FramesDataset(tmp_path / sub, frame_shape=SHAPE, is_train=True, cache_mb=0)
        src = ds.sources['long.mp4']
        assert src.num_frames == 240
        for _ in range(5):
            before = dict(video_io.decode_stats)
            ds[0]
            returned = video_io.decode_stats['returned'] - before['returned']
            decoded = video_io.decode_stats['decoded'] - before['decoded']
            assert returned == 2 or returned == 1  # the two frames (one when both draws agree)
            if bound:
                assert decoded <= bound
        # one key frame: ffmpeg decodes up to the later frame only; over many samples far below 240
    ds = FramesDataset(tmp_path / 'one_key', frame_shape=SHAPE, is_train=True, cache_mb=0)
    before = video_io.decode_stats['decoded']
    for _ in range(10):
        ds[0]
    assert (video_io.decode_stats['decoded'] - before) / 10 < 0.9 * 240


def test_frame_cache_gives_identical_items(shapes, monkeypatch):
    import frames_dataset
    kw = dict(frame_shape=SHAPE, is_train=True, augmentation_params=VOX_AUG, random_seed=3)
    a = FramesDataset(shapes, cache_mb=0, **kw)
    b = FramesDataset(shapes, cache_mb=64, **kw)
    found = []
    get = frames_dataset._FrameCache.get
    monkeypatch.setattr(frames_dataset._FrameCache, 'get', lambda self, name, idx: found.append(
        get(self, name, idx) is not None) or get(self, name, idx))
    for _ in range(4):
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x['name'] == y['name']
            np.testing.assert_array_equal(x['driving'], y['driving'])
            np.testing.assert_array_equal(x['source'], y['source'])
    # 16 items from 4 eight-frame videos: every video is decoded on first touch, and later items
    # are served from the cache (7 of 16 with these seeds), with identical content
    assert b._cache.used > 0 and len(found) == 4 * len(a) and sum(found) >= len(a), found
    tiny = FramesDataset(shapes, cache_mb=0.01, **kw)  # a video bigger than the budget: not cached
    x, y = FramesDataset(shapes, cache_mb=0, **kw)[0], tiny[0]
    np.testing.assert_array_equal(x['driving'], y['driving'])
    assert tiny._cache is None


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------

def test_augmentation_same_on_all_frames_and_reproducible():
    t = AllAugmentationTransform(**VOX_AUG)
    frame = make_video(seed=8, size=32, num_frames=1)[0].astype(np.float32) / 255
    clip = np.stack([frame, frame])  # two equal frames stay equal under one shared transform
    changed = flipped = 0
    for s in range(20):
        out = t(clip, np.random.default_rng(s))
        assert out.shape == clip.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out[0], out[1])
        np.testing.assert_array_equal(out, t(clip, np.random.default_rng(s)))  # same seed, same output
        changed += not np.allclose(out, clip, atol=1e-3)
        flipped += np.abs(out[0] - frame[:, ::-1]).mean() < np.abs(out[0] - frame).mean()
    assert changed >= 18 and 4 <= flipped <= 16


def test_time_flip_and_uint8_and_list_inputs():
    clip = make_video(seed=9, size=16, num_frames=2)
    t = AllAugmentationTransform(flip_param={'time_flip': True})
    outs = [t(clip, np.random.default_rng(s)) for s in range(12)]
    assert all(o.dtype == np.uint8 for o in outs)
    assert any(np.array_equal(o, clip[::-1]) for o in outs) and any(np.array_equal(o, clip) for o in outs)
    as_list = t(list(clip), np.random.default_rng(0))
    assert isinstance(as_list, list) and len(as_list) == 2


def test_jitter_adjustments_by_hand():
    """Each adjustment on colours whose result is known: torchvision's formulas."""
    from media.augmentation import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1.0
    cyan = adjust_hue(red, 0.5)  # half a turn of hue: red -> cyan
    np.testing.assert_allclose(cyan[0, 0, 0], [0, 1, 1], atol=1e-5)
    np.testing.assert_allclose(adjust_hue(red, 1 / 3)[0, 0, 0], [0, 1, 0], atol=1e-5)  # a third: green
    gray = adjust_saturation(red, 0.0)  # no saturation: the luma 0.2989 on every channel
    np.testing.assert_allclose(gray[0, 0, 0], [0.2989] * 3, atol=1e-6)
    clip = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(adjust_brightness(clip, 0.5), clip * 0.5, atol=1e-7)
    flat = adjust_contrast(clip, 0.0)  # no contrast: each frame becomes the mean of its luma
    luma = 0.2989 * clip[..., 0] + 0.587 * clip[..., 1] + 0.114 * clip[..., 2]
    for t in range(2):
        np.testing.assert_allclose(flat[t], np.full((4, 4, 3), luma[t].mean()), atol=1e-6)
    # torchvision semantics: brightness factor uniform in [max(0, 1 - b), 1 + b]
    factors = [f for s in range(200) for n, f in ColorJitter(brightness=0.5).draw(np.random.default_rng(s))]
    assert 0.5 <= min(factors) < 0.55 and 1.45 < max(factors) <= 1.5


def test_mgif_resize_crop_rotation_keep_shape():
    clip = make_video(seed=11, size=32, num_frames=2).astype(np.float32) / 255
    t = AllAugmentationTransform(resize_param={'ratio': [0.9, 1.1]}, crop_param={'size': [32, 32]},
                                 rotation_param={'degrees': 10}, flip_param={'horizontal_flip': True},
                                 jitter_param={'hue': 0.5})
    for s in range(6):
        out = t(clip, np.random.default_rng(s))
        assert out.shape == clip.shape and out.dtype == clip.dtype


def test_dataset_reproducible_and_workers_differ(shapes, tmp_path):
    kw = dict(frame_shape=SHAPE, is_train=True, augmentation_params=VOX_AUG, random_seed=0)
    a, b = FramesDataset(shapes, **kw), FramesDataset(shapes, **kw)
    for i in range(3):
        np.testing.assert_array_equal(a[i]['driving'], b[i]['driving'])
    a.reseed(1), b.reseed(2)
    assert any(not np.array_equal(a[i]['driving'], b[i]['driving']) for i in range(3))

    # One video repeated: with identical worker streams, worker 0's batch would equal worker 1's.
    write_video(tmp_path / 'train' / 'only.mp4', make_video(13, 32, 16), fps=25)
    one = FramesDataset(tmp_path, **kw)
    one[0]  # the main process draws first: forked workers must still not inherit its stream
    rep = DatasetRepeater(one, num_repeats=6)

    def run():
        torch.manual_seed(0)
        loader = DataLoader(rep, batch_size=3, num_workers=2, worker_init_fn=worker_init_fn)
        return [b['driving'] for b in loader]
    first, second = run(), run()
    assert len(first) == 2
    for x, y in zip(first, second):  # same torch seed -> same batches
        torch.testing.assert_close(x, y)
    assert not torch.equal(first[0], first[1])  # worker 0 vs worker 1: different streams


def test_default_num_workers():
    n = default_num_workers()
    assert isinstance(n, int) and 0 <= n <= 8


# ---------------------------------------------------------------------------------------------
# bad input: one DatasetError naming the file or key
# ---------------------------------------------------------------------------------------------

def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match=r'dataset_params\.root_dir.*nowhere'):
        FramesDataset(tmp_path / 'nowhere', frame_shape=SHAPE)
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.md').write_text('x')
    with pytest.raises(DatasetError, match='empty.*no videos'):
        FramesDataset(tmp_path / 'empty', frame_shape=SHAPE)
    (tmp_path / 'dirs' / 'not_frames').mkdir(parents=True)
    with pytest.raises(DatasetError, match='dirs.*no videos'):
        FramesDataset(tmp_path / 'dirs', frame_shape=SHAPE, is_train=False)
    (tmp_path / 'split' / 'train').mkdir(parents=True)
    with pytest.raises(DatasetError, match='train.*no videos'):
        FramesDataset(tmp_path / 'split', frame_shape=SHAPE)
    with pytest.raises(DatasetError, match='no test/'):
        FramesDataset(tmp_path / 'split', frame_shape=SHAPE, is_train=False)


def test_corrupt_and_truncated_videos(tmp_path):
    good = make_video(seed=12, size=32, num_frames=30)
    for split in ('train', 'test'):
        (tmp_path / 'a' / split).mkdir(parents=True)
        write_video(tmp_path / 'a' / split / 'fine.mp4', good, fps=25)
        (tmp_path / 'a' / split / 'junk.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)
    with pytest.raises(DatasetError, match='junk.mp4'):  # training: stop at start-up, naming it
        FramesDataset(tmp_path / 'a', frame_shape=SHAPE, is_train=True)
    with pytest.warns(DatasetWarning, match='junk.mp4.*evaluation skips it'):  # a test set keeps going
        test = FramesDataset(tmp_path / 'a', frame_shape=SHAPE, is_train=False)
    assert test.videos == ['fine.mp4', 'junk.mp4']
    name, _, frames = test.stream(1)  # evaluation reads it, gets the error, skips it
    with pytest.raises(DatasetError, match='junk.mp4'):
        next(frames)
    with pytest.raises(DatasetError, match='junk.mp4'):
        test[1]
    assert test[0]['video'].shape == (3, 30, 32, 32)

    (tmp_path / 'b' / 'test').mkdir(parents=True)
    cut_copy(tmp_path / 'a' / 'test' / 'fine.mp4', tmp_path / 'b' / 'test' / 'cut.mp4', keep=2 / 3)
    with pytest.raises(DatasetError, match=r'cut\.mp4.*holds \d+ of the 30 frames'):  # nothing readable
        FramesDataset(tmp_path / 'b', frame_shape=SHAPE, is_train=False)
    with pytest.warns(UserWarning, match=r'cut\.mp4.*holds \d+ of the 30 frames'):
        cut = FramesDataset(tmp_path / 'b', frame_shape=SHAPE, is_train=False, allow_damaged=True)
    assert 2 <= cut[0]['video'].shape[1] < 30


def test_short_videos_skipped_with_one_warning(tmp_path):
    folder = tmp_path / 'test'
    write_video(folder / 'single.mp4', make_video(1, 32, 1), fps=25)
    write_video(folder / 'one_png', make_video(2, 32, 1), fmt='.png')
    write_video(folder / 'ok.mp4', make_video(3, 32, 4), fps=25)
    with pytest.warns(DatasetWarning) as record:
        ds = FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1 and 'single.mp4' in msgs[0] and 'one_png' in msgs[0]
    assert ds.videos == ['ok.mp4']
    (folder / 'ok.mp4').unlink()
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match='fewer than 2 frames'):
        FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)


def test_unreadable_images(tmp_path):
    folder = tmp_path / 'test' / 'frames'
    write_video(folder, make_video(4, 32, 3), fmt='.png')
    (folder / '000001.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'broken' * 20)
    ds = FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)
    with pytest.raises(DatasetError, match='000001.png'):
        ds[0]
    (tmp_path / 'test' / 'strip.png').write_bytes(b'not an image at all')
    with pytest.warns(DatasetWarning, match='strip.png'):
        ds = FramesDataset(tmp_path, frame_shape=SHAPE, is_train=False)
    with pytest.raises(DatasetError, match='strip.png'):
        ds[ds.videos.index('strip.png')]


def test_bad_config_values_name_the_key(shapes):
    with pytest.raises(DatasetError, match=r'jitter_param\.brighness.*brightness'):
        FramesDataset(shapes, frame_shape=SHAPE, augmentation_params={'jitter_param': {'brighness': 0.1}})
    with pytest.raises(DatasetError, match=r'augmentation_params\.flip_params'):
        FramesDataset(shapes, frame_shape=SHAPE, augmentation_params={'flip_params': {}})
    with pytest.raises(DatasetError, match='frame_shape'):
        FramesDataset(shapes, frame_shape=(32, 32, 4))
    test = FramesDataset(shapes, frame_shape=SHAPE, is_train=False, pairs_list=str(shapes / 'no.csv'))
    with pytest.raises(DatasetError, match='no.csv'):
        PairedDataset(test, 2)


# ---------------------------------------------------------------------------------------------
# real data and the synthetic generator
# ---------------------------------------------------------------------------------------------

def test_faces_256():
    root = SHARED / 'data' / 'faces-256'
    if not root.is_dir():
        pytest.skip('needs ../shared/data/faces-256 (shared data beside the repository); absent here')
    with pytest.warns(DatasetWarning):  # 256x256 videos resized to 64x64
        train = FramesDataset(root, frame_shape=(64, 64, 3), is_train=True, id_sampling=True,
                              augmentation_params=VOX_AUG)
    assert len(train) == 6
    item = train[0]
    assert item['driving'].shape == (3, 64, 64) and item['name'] == 'face-a.mp4'
    with pytest.warns(DatasetWarning):
        test = FramesDataset(root, frame_shape=(64, 64, 3), is_train=False)
    video = test[0]['video']
    assert video.shape == (3, test.sources[test.videos[0]].num_frames, 64, 64)
    assert 0.05 < video.mean() < 0.95


def test_synthetic_deterministic_and_cli(tmp_path):
    a, b, c = make_video(0, 32, 6), make_video(0, 32, 6), make_video(1, 32, 6)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a[1:].astype(int) - a[:-1]).mean() > 0.5  # it moves
    assert np.abs(a[1:].astype(int) - a[:-1]).mean() < 20   # smoothly
    out = tmp_path / 'syn'
    res = subprocess.run([sys.executable, '-m', 'media.synthetic', '--out', str(out), '--size', '32',
                          '--num_train', '2', '--num_test', '1', '--frames', '4', '--format', 'png'],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['shapes0000', 'shapes0001']
    ds = FramesDataset(out, frame_shape=SHAPE, is_train=False)
    np.testing.assert_array_equal(np.round(ds[0]['video'].transpose((1, 2, 3, 0)) * 255),
                                  make_video(__import__('media.synthetic', fromlist=['video_seed']).video_seed(0, 'test', 0), 32, 4))
    help_text = subprocess.run([sys.executable, '-m', 'media.synthetic', '--help'],
                               capture_output=True, text=True, cwd=ROOT).stdout
    assert '(default: 64)' in help_text and '--videos_per_id' in help_text


# ---------------------------------------------------------------------------------------------
def test_training_with_allow_damaged_draws_around_a_damaged_middle(tmp_path):
    write_video(tmp_path / 'good.mp4', make_video(5, 64, 60), fps=25)
    (tmp_path / 'train').mkdir()
    noisy_copy(tmp_path / 'good.mp4', tmp_path / 'train' / 'noisy.mp4', 0.3, 0.7, seed=0)
    strict = FramesDataset(tmp_path, frame_shape=(64, 64, 3), cache_mb=0)
    with pytest.raises(DatasetError, match=r'noisy\.mp4: damaged video'):
        for _ in range(40):
            strict[0]
    lenient = FramesDataset(tmp_path, frame_shape=(64, 64, 3), cache_mb=0, allow_damaged=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        samples = [lenient[0] for _ in range(40)]  # a sample that hits the damage is drawn again
    messages = [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1 and 'noisy.mp4' in messages[0] and 'allow_damaged' in messages[0], messages
    assert all(s['source'].shape == (3, 64, 64) and np.isfinite(s['driving']).all() for s in samples)
    assert 1 <= lenient._usable['noisy.mp4'] < 60


# damaged videos end to end: evaluation skips and lists them; --allow_damaged uses them
# ---------------------------------------------------------------------------------------------

def test_reconstruction_skips_damaged_videos_and_lists_them(tmp_path, capsys):
    import json

    import yaml

    import run
    from engine.torch_engine import load_networks
    test = tmp_path / 'data' / 'test'
    write_video(test / 'good.mp4', make_video(seed=40, size=64, num_frames=40), fps=25)
    cut_copy(test / 'good.mp4', test / 'cut.mp4')
    noisy_copy(test / 'good.mp4', test / 'noise.mp4', seed=3)
    tiny = ROOT / 'tests' / 'tiny.yaml'
    config = yaml.safe_load(tiny.read_text())
    config['dataset_params']['root_dir'] = str(tmp_path / 'data')
    (tmp_path / 'tiny.yaml').write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    generator, kp_detector, _ = load_networks(str(tiny), None)
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict()}, tmp_path / 'w.pth')
    args = ['--config', str(tmp_path / 'tiny.yaml'), '--mode', 'reconstruction', '--checkpoint', str(tmp_path / 'w.pth'),
            '--device', 'cpu', '--precision', 'fp32', '--batch_size', '8']

    with pytest.warns(DatasetWarning, match=r'cut\.mp4.*holds \d+ of the 40 frames'):
        assert run.main(args + ['--log_dir', str(tmp_path / 'strict')]) == 0
    out = next((tmp_path / 'strict').iterdir()) / 'reconstruction'
    report = json.loads((out / 'metrics.json').read_text())
    assert [v['name'] for v in report['videos']] == ['good.mp4'] and report['mean']['videos'] == 1
    reasons = {s['name']: s['reason'] for s in report['skipped']}
    assert sorted(reasons) == ['cut.mp4', 'noise.mp4']
    assert re.search(r'cut\.mp4: .*holds \d+ of the 40 frames', reasons['cut.mp4'])
    assert re.search(r'noise\.mp4: damaged video: stopped after \d+ of 40 frames', reasons['noise.mp4'])
    assert 'skipped noise.mp4' in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ['good.mp4', 'metrics.csv', 'metrics.json']  # nothing half written

    with pytest.warns(UserWarning, match=r'noise\.mp4: damaged video: decoded \d+ of 40 frames'):
        assert run.main(args + ['--log_dir', str(tmp_path / 'allowed'), '--allow_damaged']) == 0
    report = json.loads((next((tmp_path / 'allowed').iterdir()) / 'reconstruction' / 'metrics.json').read_text())
    frames = {v['name']: v['frames'] for v in report['videos']}
    assert report['skipped'] == [] and frames['good.mp4'] == 40 and 0 < frames['noise.mp4'] < 40
