"""Video datasets for training and evaluation: FramesDataset, DatasetRepeater, PairedDataset.

Layouts under a split folder (root_dir/train, root_dir/test, or root_dir itself with a seeded
80/20 split), as the original accepted them:
  * a folder per video holding its frames as images, ordered by file name;
  * video files: .mp4 .mov .avi .mkv .webm .m4v, and .gif;
  * one image (.png/.jpg/...) holding the frames side by side, shape (H, T*W) (moving-gif data).
Other files are ignored. Names starting with '.' (e.g. partial writes) are ignored.

Items: training -> {'driving': float32 (3, H, W) in [0, 1], 'source': same, 'name': str};
test -> {'video': float32 (3, T, H, W) in [0, 1], 'name': str}.

A training item decodes only the two frames it returns (plus, for a compressed video, the frames
between each one and the key frame before it), never the whole video as the original did; the
frame count comes from the container at start-up. Frames decoded on the way are kept in a
bounded per-process cache (cache_mb), so later samples of the same video decode nothing.
`prepare_dataset.py` turns a folder of videos into a copy at frame_shape with frequent key
frames, where a sample decodes a few frames at most.

A video that cannot be read stops a training set at start-up (one line naming it); in a test
set it is kept, with a warning, and reading it raises DatasetError, so evaluation skips it and
lists it. A video whose frames do not all decode is an error naming both counts, or with
allow_damaged a warning (see video_io).
"""
from __future__ import annotations

import csv
import os
import random
import signal
import warnings
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from core.runtime import cpu_count
from media.augmentation import AllAugmentationTransform, process_rng
from media.images import IMAGE_EXTENSIONS, MediaError, frames_to_float, resize
from media.video_io import VIDEO_EXTENSIONS, FolderSource, VideoInfo, VideoSource, is_image_file, open_video

_MAX_WARNINGS = 10  # per kind of warning and dataset; the rest are summarised in one line


class DatasetError(ValueError):
    """A problem with the user's data; the message is one line naming the file or config key."""


class DatasetWarning(UserWarning):
    """Something in the data was fixed on the fly (skipped video, resized frames)."""


def default_num_workers() -> int:
    """DataLoader workers per process: the usable CPUs shared by the processes torchrun starts on
    this machine (LOCAL_WORLD_SIZE), one of each share left to its main process, at most 8
    (decoding is cheap; more workers mostly add memory). 16 CPUs: 8 alone, 1 each for 8 GPUs."""
    processes = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', 1)))
    return max(0, min(8, cpu_count() // processes - 1))


def worker_init_fn(worker_id: int) -> None:
    """Seed a DataLoader worker: its datasets' generators, numpy's and Python's global state,
    all from the worker's torch seed (distinct per worker and per epoch)."""
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    np.random.seed(seed % 2 ** 32)  # for third-party code that still uses the global state
    random.seed(seed)
    # no cv2.setNumThreads here: in a forked worker it can wait forever on the parent's thread pool
    _reseed_tree(info.dataset if info is not None else None, seed, set())
    if info is not None:
        # A signal sent to the whole process group (Ctrl-C in a terminal, `kill -- -PGID`, `pkill -f`,
        # a batch scheduler's SIGTERM) is the main process's to handle: it saves a checkpoint and then
        # stops its workers. A worker killed first made the main process fail with torch's "DataLoader
        # worker is killed by signal" before it could save. (Workers still exit when the main one does.)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _reseed_tree(obj, seed: int, seen: set) -> None:
    if obj is None or id(obj) in seen:
        return
    seen.add(id(obj))
    if hasattr(obj, 'reseed'):
        obj.reseed(seed)
    for attr in ('dataset', 'initial_dataset'):
        _reseed_tree(getattr(obj, attr, None), seed, seen)
    for child in getattr(obj, 'datasets', ()) or ():
        _reseed_tree(child, seed, seen)


def _open(path: str, frame_shape: Sequence[int], allow_damaged: bool = False) -> VideoSource:
    try:
        return open_video(path, frame_shape, allow_damaged=allow_damaged)
    except MediaError as e:
        raise DatasetError(str(e)) from None


class UnreadableVideo(VideoSource):
    """A test video that could not be opened: kept in the list so that evaluation reports it as
    skipped (never in the mean); reading it raises its error."""

    def __init__(self, path: str, error: str):
        self.path, self.error = path, error
        self.info = VideoInfo(0, 25.0, 0, 0)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        raise DatasetError(self.error)

    def __iter__(self) -> Iterator[np.ndarray]:
        raise DatasetError(self.error)


def _warn_each(messages: list, more: str) -> None:
    """A DatasetWarning per message up to _MAX_WARNINGS, then one counting the rest (more % n)."""
    for msg in messages[:_MAX_WARNINGS]:
        warnings.warn(msg, DatasetWarning, stacklevel=4)
    if len(messages) > _MAX_WARNINGS:
        warnings.warn(more % (len(messages) - _MAX_WARNINGS), DatasetWarning, stacklevel=4)


def _frame_shape(frame_shape) -> tuple:
    try:
        shape = tuple(int(v) for v in frame_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) == 2:
        shape += (3,)
    if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
        raise DatasetError('dataset_params.frame_shape: expected [height, width, 3], got %r'
                           % (frame_shape,))
    return shape


def fit_frames(frames: np.ndarray, frame_shape: Sequence[int]) -> np.ndarray:
    """uint8 (N, h, w, 3) -> (N, H, W, 3) of frame_shape, resizing when needed (images.resize)."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([resize(f, h, w) for f in frames])


def read_video(name, frame_shape=(256, 256, 3), allow_damaged: bool = False) -> np.ndarray:
    """All frames of a video (any supported layout) -> float32 (T, H, W, 3) in [0, 1].

    Frames whose size differs from frame_shape are resized (one warning)."""
    shape = _frame_shape(frame_shape)
    source = _open(str(name), shape, allow_damaged)
    try:
        frames = source.read_all()
    except MediaError as e:
        raise DatasetError(str(e)) from None
    if frames.shape[1:3] != shape[:2]:
        warnings.warn('%s: frames are %dx%d, resized to %dx%d (dataset_params.frame_shape)'
                      % (name, frames.shape[1], frames.shape[2], shape[0], shape[1]),
                      DatasetWarning, stacklevel=2)
    return frames_to_float(fit_frames(frames, shape))


def list_media(folder: Path) -> list:
    """Names of the entries of `folder` that may be videos, sorted; other files are ignored."""
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith('.'):
            continue
        ext = os.path.splitext(entry.name)[1].lower()
        if entry.is_dir() or ext in VIDEO_EXTENSIONS or ext in IMAGE_EXTENSIONS:
            names.append(entry.name)
    return names


def _seeded_split(videos: list, random_seed: int, test_size: float = 0.2) -> tuple:
    """sklearn's train_test_split(videos, random_state=random_seed, test_size=0.2), same result."""
    n = len(videos)
    n_test = int(np.ceil(test_size * n))
    perm = np.random.RandomState(random_seed).permutation(n)
    return [videos[i] for i in perm[n_test:]], [videos[i] for i in perm[:n_test]]


class _FrameCache:
    """Per-process LRU of decoded training frames, already at frame_shape, bounded in bytes.

    A compressed video is decoded from its key frame up to the frame a sample needs; the frames
    decoded on the way are kept here, so later samples of that video cost no decoding at all."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.videos = OrderedDict()  # name -> (frames uint8 (T, H, W, 3), filled bool (T,))
        self.used = 0

    def get(self, name: str, idx: np.ndarray) -> Optional[np.ndarray]:
        entry = self.videos.get(name)
        if entry is None or not entry[1][idx].all():
            return None
        self.videos.move_to_end(name)
        return entry[0][idx]

    def put(self, name: str, num_frames: int, span: dict) -> None:
        if not span:
            return
        frame = next(iter(span.values()))
        if num_frames * frame.nbytes > self.budget:
            return  # a video larger than the whole cache: never cached
        entry = self.videos.get(name)
        if entry is None:  # np.empty: pages cost memory only once written
            entry = (np.empty((num_frames,) + frame.shape, np.uint8), np.zeros(num_frames, bool))
            self.videos[name] = entry
        frames, filled = entry
        for i, f in span.items():
            if not filled[i]:
                frames[i] = f
                filled[i] = True
                self.used += f.nbytes
        self.videos.move_to_end(name)
        while self.used > self.budget and len(self.videos) > 1:
            _, (old, old_filled) = self.videos.popitem(last=False)
            self.used -= int(old_filled.sum()) * old[0].nbytes


def video_id(name: str) -> str:
    """The person/object id of a video: the part of its name before '#' (the original's rule)."""
    return os.path.basename(name).split('#')[0]


class FramesDataset(Dataset):
    """Videos under root_dir; see the module docstring for layouts and item formats.

    Same constructor as the original, so `FramesDataset(is_train=True, **config['dataset_params'])`
    works with the published configs. With id_sampling (training only) an item is one random
    video of one id, so len() is the number of ids. Random draws (frame pair, video of an id,
    augmentation) come from a per-process generator (see `reseed`).

    cache_mb (an addition): per-process budget for keeping decoded training frames (at
    frame_shape) of compressed videos and GIFs, so frames decoded on the way to a sampled one
    are not decoded again; 0 disables it. Items are the same with or without it.

    allow_damaged (an addition; run.py --allow_damaged): use the frames that decode of a video
    that holds or decodes fewer than its container lists, with a warning, instead of refusing it."""

    def __init__(self, root_dir, frame_shape=(256, 256, 3), id_sampling=False, is_train=True,
                 random_seed=0, pairs_list=None, augmentation_params=None, cache_mb: float = 256,
                 allow_damaged: bool = False):
        self.frame_shape = _frame_shape(frame_shape)
        self.allow_damaged = bool(allow_damaged)
        self._usable = {}  # allow_damaged: video name -> how many of its first frames training draws from
        self.cache_bytes = int(max(0.0, float(cache_mb)) * 2 ** 20)
        self._cache, self._cache_pid = None, None
        self.id_sampling = bool(id_sampling)
        self.is_train = bool(is_train)
        self.random_seed = int(random_seed)
        self.pairs_list = pairs_list
        root = Path(root_dir) if root_dir is not None else None
        if root is None or not root.is_dir():
            raise DatasetError('dataset_params.root_dir: folder not found: %s' % root_dir)
        try:
            self.transform = AllAugmentationTransform.from_params(augmentation_params) \
                if self.is_train else None
        except (ValueError, TypeError) as e:
            raise DatasetError('dataset_params.%s' % e) from None

        split = 'train' if self.is_train else 'test'
        if (root / 'train').is_dir() or (root / 'test').is_dir():
            folder = root / split
            if not folder.is_dir():
                raise DatasetError('dataset_params.root_dir: %s has no %s/ folder' % (root, split))
            names = list_media(folder)
            if not names:
                raise DatasetError('%s: no videos found (expected %s files, image strips or '
                                   'folders of frames)' % (folder, '/'.join(VIDEO_EXTENSIONS)))
        else:  # no predefined split: the original's seeded 80/20 split
            folder = root
            everything = list_media(root)
            if not everything:
                raise DatasetError('%s: no videos found (expected %s files, image strips or '
                                   'folders of frames)' % (root, '/'.join(VIDEO_EXTENSIONS)))
            train, test = _seeded_split(everything, self.random_seed)
            names = train if self.is_train else test
            if not names:
                raise DatasetError('%s: too few videos for a train/test split (%d found)'
                                   % (root, len(everything)))
        self.root_dir = str(folder)
        self.sources = self._probe(folder, names)
        names = sorted(self.sources)
        if self.is_train and self.id_sampling:
            by_id = defaultdict(list)
            for name in names:
                by_id[video_id(name)].append(name)
            self._by_id = dict(by_id)
            self.videos = sorted(by_id)
        else:
            self._by_id = None
            self.videos = names
        self._rng, self._rng_pid = None, None

    # ------------------------------------------------------------------------------------------
    def _probe(self, folder: Path, names: list) -> dict:
        """Open every video (frame count, size; no decoding), drop those with < 2 frames. An
        unreadable one stops a training set; a test set keeps it as an UnreadableVideo."""
        paths = [str(folder / n) for n in names]
        workers = min(8, max(1, len(paths) // 4))
        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(self._probe_one, paths), total=len(paths), unit='video',
                                desc='scanning %s' % folder, disable=len(paths) < 200, leave=False))
        sources, short, resized, errors = {}, [], [], []
        for name, src in zip(names, results):
            if src is None:  # a folder without images: not a video
                continue
            if isinstance(src, DatasetError):
                errors.append(src)
                sources[name] = UnreadableVideo(str(folder / name), str(src))
            elif src.num_frames < 2:
                short.append('%s (%d frame%s)' % (name, src.num_frames, '' if src.num_frames == 1 else 's'))
            else:
                sources[name] = src
                if (src.info.height, src.info.width) != self.frame_shape[:2]:
                    resized.append('%s (%dx%d)' % (name, src.info.height, src.info.width))
        if errors and (self.is_train or len(errors) == len(sources)):
            raise errors[0]
        if short:
            warnings.warn('%s: skipping %d video(s) with fewer than 2 frames: %s'
                          % (folder, len(short), ', '.join(short)), DatasetWarning, stacklevel=3)
        if not sources and not short:
            raise DatasetError('%s: no videos found (folders here hold no frame images)' % folder)
        if not sources:
            raise DatasetError('%s: no usable videos (all have fewer than 2 frames)' % folder)
        _warn_each(['%s (evaluation skips it)' % e for e in errors],
                   '%s: %%d more unreadable videos (evaluation skips them)' % folder)
        h, w = self.frame_shape[:2]
        _warn_each(['%s/%s: frames resized to %dx%d (dataset_params.frame_shape)' % (folder, msg, h, w)
                    for msg in resized], '%s: %%d more videos with frames resized to %dx%d' % (folder, h, w))
        return sources

    def _probe_one(self, path: str):
        try:
            if os.path.isdir(path) and not any(is_image_file(f) for f in os.listdir(path)):
                return None
            return _open(path, self.frame_shape, self.allow_damaged)
        except DatasetError as e:
            return e
        except OSError as e:
            return DatasetError('%s: cannot read (%s)' % (path, e.strerror or e))

    # ------------------------------------------------------------------------------------------
    def reseed(self, stream: int) -> None:
        """Restart this process's random stream from (random_seed, stream)."""
        self._rng, self._rng_pid = process_rng(self.random_seed, stream), os.getpid()

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator; a forked DataLoader worker gets its own from its torch seed."""
        if self._rng is None or self._rng_pid != os.getpid():
            self.reseed(torch.initial_seed())
        return self._rng

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_cache'] = state['_cache_pid'] = None  # a worker builds its own
        return state

    def _train_pair(self, name: str, source: VideoSource, rng: np.random.Generator) -> np.ndarray:
        """Two random frames of a training video, uint8 (2, H, W, 3). With allow_damaged, a pair
        that reaches a part that cannot be decoded is drawn again among the frames before its later
        frame (a warning names the video, once per process), so training goes on with the frames
        that decode; without it, the error stops training with the file's name."""
        usable = self._usable
        for _ in range(8):
            limit = usable.get(name, source.num_frames)
            frame_idx = np.sort(rng.choice(limit, replace=True, size=2))
            try:
                return self._read_pair(name, source, frame_idx)
            except MediaError as e:
                if not self.allow_damaged or frame_idx[1] == 0:
                    raise
                if name not in usable:
                    warnings.warn('%s; training uses the frames that decode (allow_damaged)' % e, DatasetWarning,
                                  stacklevel=2)
                usable[name] = min(limit, int(frame_idx[1]))
        raise MediaError('%s: damaged video: too few of its frames decode' % name)

    def _read_pair(self, name: str, source: VideoSource, frame_idx: np.ndarray) -> np.ndarray:
        """uint8 (2, H, W, 3) at frame_shape, through the frame cache when enabled."""
        video_bytes = source.num_frames * int(np.prod(self.frame_shape))
        if (self.cache_bytes <= 0 or video_bytes > self.cache_bytes
                or isinstance(source, FolderSource)):  # a folder: reading two files wastes nothing
            return fit_frames(source.read(frame_idx), self.frame_shape)
        if self._cache is None or self._cache_pid != os.getpid():
            self._cache, self._cache_pid = _FrameCache(self.cache_bytes), os.getpid()
        frames = self._cache.get(name, frame_idx)
        if frames is None:  # streamed and resized frame by frame: memory stays within the budget
            span = {i: fit_frames(f[None], self.frame_shape)[0] for i, f in source.iter_span(frame_idx)}
            self._cache.put(name, source.num_frames, span)
            frames = np.stack([span[i] for i in frame_idx])
        return frames

    def __len__(self) -> int:
        return len(self.videos)

    def stream(self, idx: int) -> Tuple[str, float, Iterator[np.ndarray]]:
        """(name, fps, frames) of video `idx` without sampling: its uint8 (H, W, 3) frames at
        frame_shape, decoded one at a time (memory flat in video length); for evaluation."""
        if self._by_id is not None:
            raise DatasetError('dataset_params.id_sampling: a training set sampled by id has no fixed videos')
        name = self.videos[idx]
        source = self.sources[name]
        h, w = self.frame_shape[:2]

        def frames():
            try:
                for frame in source:
                    yield resize(frame, h, w)
            except MediaError as e:
                raise DatasetError(str(e)) from None
        return name, float(source.info.fps or 25.0), frames()

    def __getitem__(self, idx: int) -> dict:
        rng = self.rng
        if self._by_id is not None:
            choices = self._by_id[self.videos[idx]]
            name = choices[int(rng.integers(len(choices)))]
        else:
            name = self.videos[idx]
        source = self.sources[name]
        try:
            if self.is_train:
                frames = self._train_pair(name, source, rng)  # uint8 (2, H, W, 3)
            else:
                frames = fit_frames(source.read_all(), self.frame_shape)  # uint8 (T, H, W, 3), streamed
        except MediaError as e:
            raise DatasetError(str(e)) from None
        video = frames_to_float(frames)  # (N, H, W, 3)
        out = {}
        if self.is_train:
            if self.transform is not None:
                video = self.transform(video, rng)
            out['driving'] = np.ascontiguousarray(video[1].transpose((2, 0, 1)))
            out['source'] = np.ascontiguousarray(video[0].transpose((2, 0, 1)))
        else:
            out['video'] = np.ascontiguousarray(video.transpose((3, 0, 1, 2)))  # (3, T, H, W)
        out['name'] = name
        return out


class DatasetRepeater(Dataset):
    """Pass several times over a dataset per epoch (fewer epoch boundaries, fewer worker restarts)."""

    def __init__(self, dataset: Dataset, num_repeats: int = 100):
        self.dataset = dataset
        self.num_repeats = int(num_repeats)

    def __len__(self) -> int:
        return self.num_repeats * len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        return self.dataset[idx % len(self.dataset)]


class PairedDataset(Dataset):
    """(driving, source) pairs of test videos, for animation: from the dataset's `pairs_list` CSV
    (columns `source`, `driving` naming test videos), else `number_of_pairs` seeded random pairs.
    Items: {'driving_' + key: ..., 'source_' + key: ...} for each key of the two test items."""

    def __init__(self, initial_dataset: FramesDataset, number_of_pairs: int, seed: int = 0):
        self.initial_dataset = initial_dataset
        pairs_list = getattr(initial_dataset, 'pairs_list', None)
        n = len(initial_dataset)
        if pairs_list is None:
            # The original's draw (np.random.seed(seed); np.random.choice), without global state.
            max_idx = min(int(number_of_pairs), n)
            xy = np.mgrid[:max_idx, :max_idx].reshape(2, -1).T
            count = min(xy.shape[0], int(number_of_pairs))
            self.pairs = xy.take(np.random.RandomState(seed).choice(xy.shape[0], count, replace=False),
                                 axis=0)
        else:
            self.pairs = self._read_pairs(pairs_list, initial_dataset.videos, int(number_of_pairs))

    @staticmethod
    def _read_pairs(pairs_list, videos: list, number_of_pairs: int) -> np.ndarray:
        index = {}
        for i, name in enumerate(videos):  # also accept names without their extension
            index.setdefault(os.path.splitext(name)[0], i)
        index.update({name: i for i, name in enumerate(videos)})
        try:
            with open(pairs_list, newline='') as f:
                rows = list(csv.DictReader(f))
                fields = rows[0].keys() if rows else []
        except OSError as e:
            raise DatasetError('dataset_params.pairs_list: cannot read %s (%s)'
                               % (pairs_list, e.strerror or e)) from None
        if not rows or 'source' not in fields or 'driving' not in fields:
            raise DatasetError('%s: expected a CSV with columns source,driving and at least one row'
                               % pairs_list)
        for line, row in enumerate(rows, start=2):  # every row: a wrong name means a wrong root_dir
            for col in ('source', 'driving'):
                if row[col] not in index:
                    raise DatasetError('%s: line %d: %s video %r is not in the test set (%d videos)'
                                       % (pairs_list, line, col, row[col], len(videos)))
        pairs = [(index[row['driving']], index[row['source']]) for row in rows[:number_of_pairs]]
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        driving_idx, source_idx = self.pairs[idx]
        first = self.initial_dataset[int(driving_idx)]
        second = self.initial_dataset[int(source_idx)]
        out = {'driving_' + key: value for key, value in first.items()}
        out.update({'source_' + key: value for key, value in second.items()})
        return out
