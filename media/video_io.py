"""Reading and writing frames and videos: images, frame folders, image strips, GIFs and container videos.

Frames are always uint8 arrays (H, W, 3) in RGB order. Container videos (.mp4, .mov, ...) are
decoded in-process with PyAV (FFmpeg's libraries, bundled in the `av` wheel): no process per
read, seeking to the key frame before a wanted frame. Writing and audio muxing use the ffmpeg
binary shipped inside the imageio-ffmpeg wheel, so no system ffmpeg is needed.

Reading
    read_image(path)                  -> uint8 (H, W, 3); gray -> RGB, alpha dropped, 16-bit -> 8-bit
    probe_video(path)                 -> VideoInfo(num_frames, fps, height, width, has_audio)
    open_video(path, frame_shape)     -> VideoSource with .read(indices) and iteration
    read_frames(path, indices)        -> uint8 (N, H, W, 3), decoding only what those frames need
    iter_video_frames(path)           -> a generator of frames (streamed, memory flat in length)

Writing
    VideoWriter(path, fps, fmt)       -> .write(frame or batch), .close(); a context manager.
                                         Writes to a hidden temporary name and renames on close.
    write_video(path, frames, fps)    -> the same in one call
    copy_audio(src_video, dst_video)  -> mux the audio of src into dst; False when src has none

Every failure on a user's file raises MediaError (a ValueError) with one line naming the file.
Decode integrity: a container video whose file holds fewer frames than its container lists, or
whose frames do not all decode, raises MediaError naming the file and both counts; with
`open_video(path, allow_damaged=True)` it is a DamagedVideoWarning and the frames that decoded
are used.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from media.formats import CONTAINERS, FORMATS, MUXERS, VIDEO_INPUTS, VIDEO_OUTPUTS, listing, suffix_of
from media.images import IMAGE_EXTENSIONS, MediaError, image_size, one_line, read_image, resize, to_uint8
from media.outputs import FRAMES_MARKER, MARK, commit, temp_path

PathLike = Union[str, os.PathLike]

# the suffixes of media/formats.py's table, under the names this module has always had
FFMPEG_VIDEO_EXTENSIONS = CONTAINERS
VIDEO_EXTENSIONS = VIDEO_INPUTS
OUTPUT_FORMATS = VIDEO_OUTPUTS  # '.png': a folder of numbered PNG frames

# Counters for tests and benchmarks, per process: containers opened, decode runs (one per seek),
# frames the decoder produced, non-reference frames it skipped on the way to a wanted one, and
# frames converted to RGB and handed to Python.
decode_stats = {'opens': 0, 'runs': 0, 'decoded': 0, 'skipped': 0, 'returned': 0}

# Containers opened by a parent process and inherited by a forked child: never freed in the
# child (freeing a threaded decoder there can wait forever on threads that only the parent has).
_INHERITED = []


class DamagedVideoWarning(UserWarning):
    """A damaged video used anyway (allow_damaged): fewer frames, or frames with decoder errors."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------------------
# Video metadata
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a video before decoding it."""
    num_frames: int
    fps: float
    height: int
    width: int
    has_audio: bool = False


@dataclass
class _FrameIndex:
    """Where a container video's shown frames are: their presentation timestamps in order (None:
    the file has none usable, frames are counted as they come), the presentation index of each
    key frame with the timestamp to seek to for it (None: the file start), and the quarter turns
    (counter-clockwise) that its display matrix asks for."""
    pts: Optional[np.ndarray] = None  # int64 (T,), sorted
    key_index: list = field(default_factory=lambda: [0])
    key_ts: list = field(default_factory=lambda: [None])
    quarter_turns: int = 0

    def frame_at(self, pts: Optional[int]) -> int:
        """Presentation index of a decoded frame's timestamp; -1 when it is not a shown frame."""
        if self.pts is None or pts is None:
            return -1
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else -1

    def key_before(self, i: int) -> int:
        """Position in key_index of the last key frame at or before frame i."""
        return int(np.searchsorted(self.key_index, i, side='right')) - 1


def _run(cmd: list, what: PathLike) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as e:
        raise MediaError('%s: cannot run ffmpeg (%s)' % (what, e)) from None


def _pyav():
    try:
        import av
    except ImportError:
        raise MediaError('decoding %s videos needs PyAV: pip install av'
                         % '/'.join(FFMPEG_VIDEO_EXTENSIONS)) from None
    return av


def _why(e: BaseException) -> str:
    """An FFmpeg error without the file name (the caller's message names the file once)."""
    return getattr(e, 'strerror', None) or one_line(e)


class _Container:
    """An open container video and its first video stream's decoder, for one read.

    threads: decoder threads (1 for random access: many data-loader workers decode at once, and
    skipping non-reference frames needs the decoder to see each packet as it is sent; 0: FFmpeg
    picks, for streaming a whole video). Closed only by the process that opened it."""

    def __init__(self, path: str, threads: int = 1):
        av = _pyav()
        self.path, self.pid = path, os.getpid()
        self.container, self.demux_error, self.errors, self.empty = None, None, (av.FFmpegError,), 0
        try:
            self.container = av.open(path, metadata_errors='ignore')
        except av.FFmpegError as e:
            if isinstance(e, FileNotFoundError):
                raise MediaError('%s: video not found' % path) from None
            raise MediaError('%s: corrupt, truncated or unreadable video (%s)' % (path, _why(e))) from None
        decode_stats['opens'] += 1
        if not self.container.streams.video:
            self.close()
            raise MediaError('%s: corrupt, truncated or unreadable video (no video stream)' % path)
        self.stream = self.container.streams.video[0]
        self.codec = self.stream.codec_context
        self.codec.thread_count = threads
        if threads != 1:
            self.codec.thread_type = 'AUTO'
        # one RGB converter per read, single-threaded: PyAV's default makes a converter with its
        # own thread pool for every frame, and freeing one inherited by a forked worker hangs
        self.converter = av.video.reformatter.VideoReformatter()

    def packets(self) -> Iterator:
        """The video stream's packets in decode order, then None (drains the decoder). Empty
        samples (a dropped frame in some MP4s: sent to a decoder they would mean "end of
        stream") are counted in self.empty instead; a demuxing error ends the packets early
        (self.demux_error)."""
        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    yield packet
                elif packet.dts is not None:  # PyAV ends with an empty packet without timestamps
                    self.empty += 1
        except self.errors as e:
            self.demux_error = _why(e)
        yield None

    def rgb(self, frame) -> np.ndarray:
        """A decoded frame -> uint8 (H, W, 3) RGB."""
        decode_stats['returned'] += 1
        return self.converter.reformat(frame, format='rgb24', threads=1).to_ndarray()

    def seek(self, ts: int) -> None:
        """To the key frame at or before presentation timestamp ts; the decoder restarts."""
        self.container.seek(ts, stream=self.stream, backward=True, any_frame=False)
        self.codec.flush_buffers()

    def close(self) -> None:
        if self.container is None:
            return
        if os.getpid() == self.pid:
            self.container.close()
        else:
            _INHERITED.append(self.container)
        self.container = None

    def __enter__(self) -> '_Container':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _probe_container(path: str, allow_damaged: bool = False) -> tuple:
    """One pass over the packets, decoding only the first frame (its size and display rotation):
    (VideoInfo, _FrameIndex). A file that holds fewer frames than its container lists is damaged
    (a cut download): MediaError naming both counts, or a warning with allow_damaged."""
    with _Container(path) as c:
        # what the container's index lists: trusted for MP4/MOV (the sample table); AVI headers
        # count in other units, Matroska does not say
        listed = c.stream.frames if 'mp4' in c.container.format.name.split(',') else 0
        rate = c.stream.average_rate or c.stream.guessed_rate
        has_audio = bool(c.container.streams.audio)
        first, stored, shown, keys = None, 0, [], []
        for packet in c.packets():
            if first is None:  # the decoder drops edit-list pre-roll itself: this is a shown frame
                try:
                    first = next(iter(c.codec.decode(packet)), None)
                except c.errors:
                    pass
            if packet is None:
                continue
            stored += 1
            if packet.is_discard:  # decoded only as a reference for later frames (edit lists)
                continue
            shown.append(packet.pts if packet.pts is not None else packet.dts)
            keys.append(packet.is_keyframe)
        reorders = bool(c.codec.has_b_frames)
    if first is None or not shown:
        raise MediaError('%s: corrupt, truncated or unreadable video (%s)'
                         % (path, c.demux_error or 'no frame could be decoded'))
    stored += c.empty
    if c.demux_error or stored < listed:
        msg = '%s: truncated or damaged video: the file holds %d of the %d frames its container lists' % (
            path, stored, max(stored, listed)) + (' (%s)' % c.demux_error if c.demux_error else '')
        if not allow_damaged:
            raise MediaError(msg + '; --allow_damaged uses what is there')
        warnings.warn(msg + '; using those (allow_damaged)', DamagedVideoWarning, stacklevel=3)
    turns = int(round((first.rotation or 0) / 90.0)) % 4  # ffmpeg's autorotate: display matrix
    h, w = (first.width, first.height) if turns % 2 else (first.height, first.width)
    info = VideoInfo(len(shown), float(rate) if rate else 25.0, h, w, has_audio)
    return info, _frame_index(shown, keys, turns, reorders)


def _frame_index(shown: list, keys: list, turns: int, reorders: bool) -> _FrameIndex:
    """The presentation order of the shown packets (decode order differs with B-frames) and the
    key frames to seek to (by presentation timestamp: demuxers index key frames by it). Without
    usable timestamps frames are counted from the file start: none, repeated ones, or ones that
    follow decode order while the codec reorders frames (AVI has decode times only)."""
    in_decode_order = all(a < b for a, b in zip(shown, shown[1:])) if None not in shown else False
    if None in shown or len(set(shown)) != len(shown) or (reorders and in_decode_order):
        return _FrameIndex(quarter_turns=turns)
    order = np.argsort(np.asarray(shown, np.int64), kind='stable')
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    # key frame 0 is always "the file start": the pre-roll of an edit list sits before it
    key = sorted((int(rank[j]), shown[j]) for j in range(len(shown)) if keys[j] and rank[j] > 0)
    return _FrameIndex(np.asarray(shown, np.int64)[order], [0] + [k for k, _ in key],
                       [None] + [t for _, t in key], turns)


# ----------------------------------------------------------------------------------------------
# Video sources: one interface over container videos, GIFs, frame folders and image strips
# ----------------------------------------------------------------------------------------------

class VideoSource:
    """A video whose frames can be read by index or streamed. Holds no open handles (picklable)."""

    path: str
    info: VideoInfo
    allow_damaged: bool = False

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    def __len__(self) -> int:
        return self.info.num_frames

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) -> uint8 (N, H, W, 3)."""
        raise NotImplementedError

    def iter_span(self, indices: Sequence[int]) -> Iterator[tuple]:
        """(frame index, uint8 (H, W, 3)) for `indices` and every other frame decoded on the way
        (for a compressed video, those from the key frame before each one), streamed in order:
        what a cache can keep for free."""
        wanted = sorted(set(self._check(indices)))
        yield from zip(wanted, self.read(wanted))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self.read([i])[0]

    def read_all(self) -> np.ndarray:
        """All frames -> uint8 (T, H, W, 3), streamed into one preallocated array. A damaged
        video opened with allow_damaged gives the frames that decoded (its iterator warned)."""
        out = np.empty((self.num_frames, self.info.height, self.info.width, 3), np.uint8)
        n = 0
        for frame in self:
            if n == len(out):
                break
            if frame.shape != out.shape[1:]:
                frame = resize(frame, *out.shape[1:3])
            out[n] = frame
            n += 1
        if n < len(out):
            if self.allow_damaged:
                return out[:n]
            raise MediaError('%s: truncated video (decoded %d of %d frames)' % (self.path, n, len(out)))
        return out

    def _check(self, indices: Sequence[int]) -> list:
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.num_frames:
                raise IndexError('%s: frame %d out of range (video has %d frames)'
                                 % (self.path, i, self.num_frames))
        return idx


class ContainerSource(VideoSource):
    """A container video (.mp4, .mov, .mkv, .avi, ...), decoded in-process with PyAV.

    Opening reads the packets once (frame count, key frames; no decoding beyond the first frame).
    Random access opens the file, seeks to the key frame before each run of wanted frames and
    decodes up to the last one, skipping the non-reference frames it does not return, then
    closes the file: nothing stays open between reads, so the source pickles into DataLoader
    workers and a forked worker shares no decoder with its parent. Streaming decodes the whole
    file once and checks that every frame the container lists decoded (see allow_damaged)."""

    decode_threads = 1  # random access: many data-loader workers decode at once, one thread each
    stream_threads = 0  # streaming a whole video: FFmpeg picks (frame and slice threads)

    def __init__(self, path: PathLike, allow_damaged: bool = False):
        self.path = str(path)
        self.allow_damaged = bool(allow_damaged)
        if not os.path.isfile(self.path):
            raise MediaError('%s: video not found' % self.path)
        self.info, self.index = _probe_container(self.path, self.allow_damaged)

    # -- random access ----------------------------------------------------------------------
    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        got = dict(self._decode(sorted(set(idx)), every=False))
        return np.stack([got[i] for i in idx])

    def iter_span(self, indices: Sequence[int]) -> Iterator[tuple]:
        yield from self._decode(sorted(set(self._check(indices))), every=True)

    def _runs(self, wanted: list) -> list:
        """Sorted unique frames grouped into runs [(key position, frames)]; each run seeks to the
        key frame before its first frame. A new run starts when a key frame lies past the
        previous wanted frame (seeking there beats decoding through)."""
        runs = []
        for i in wanted:
            key = self.index.key_before(i)
            if runs and self.index.key_index[key] <= runs[-1][1][-1]:
                runs[-1][1].append(i)
            else:
                runs.append((key, [i]))
        return runs

    def _decode(self, wanted: list, every: bool) -> Iterator[tuple]:
        """(index, uint8 frame) for the sorted frames `wanted` (every: and all frames decoded on
        the way), in order. A frame a run missed (a seek that landed past it, damage) is decoded
        again from the file start; one still missing is an error."""
        missing = set(wanted)
        with _Container(self.path, self.decode_threads) as c:
            for key, run in self._runs(wanted):
                yield from self._take(c, self._frames(c, key, run, skip=not every), missing, every)
        if missing:
            with _Container(self.path, self.decode_threads) as c:
                yield from self._take(c, self._frames(c, 0, sorted(missing), skip=False), missing, False)
        if missing:
            raise MediaError('%s: damaged video: frame %d of %d could not be decoded'
                             % (self.path, min(missing), self.num_frames))

    def _take(self, c: _Container, frames: Iterator[tuple], missing: set, every: bool) -> Iterator[tuple]:
        for i, frame in frames:
            if i in missing or every:
                if frame.is_corrupt and not self.allow_damaged:
                    raise MediaError('%s: damaged video: frame %d of %d decoded with errors '
                                     '(--allow_damaged uses it anyway)' % (self.path, i, self.num_frames))
                missing.discard(i)
                yield i, self._upright(c.rgb(frame))

    def _frames(self, c: _Container, key: int, run: list, skip: bool) -> Iterator[tuple]:
        """(index, av frame) of the frames from key frame `key` up to run[-1], decoded from
        there. skip: the non-reference frames not in `run` are not decoded at all (nothing
        depends on them; about half of x264's frames)."""
        start, ts = self.index.key_index[key], self.index.key_ts[key]
        if ts is not None:
            c.seek(ts)
        # else key frame 0: a fresh container is at the file start (runs come in order, and only
        # the first run or a retry on a new container starts there)
        decode_stats['runs'] += 1
        wanted_pts = set(self.index.pts[run].tolist()) if skip and self.index.pts is not None else None
        following, last = start, run[-1]
        for packet in c.packets():
            if wanted_pts is not None:
                c.codec.skip_frame = 'DEFAULT' if packet is None or packet.pts in wanted_pts else 'NONREF'
            try:
                frames = c.codec.decode(packet)
            except c.errors as e:
                self._damaged(following, 'decoder error: %s' % _why(e))
                continue
            for frame in frames:
                decode_stats['decoded'] += 1
                i = following if self.index.pts is None else self.index.frame_at(frame.pts)
                if i < start:  # before the key frame in presentation order (or not a shown frame)
                    continue
                following = i + 1
                yield i, frame
                if i >= last:
                    return

    # -- streaming ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        n = bad = 0
        with _Container(self.path, self.stream_threads) as c:
            for packet in c.packets():
                try:
                    frames = c.codec.decode(packet)
                except c.errors as e:
                    bad += 1
                    self._damaged(n, 'decoder error: %s' % _why(e))
                    continue
                for frame in frames:
                    decode_stats['decoded'] += 1
                    if self.index.pts is not None and self.index.frame_at(frame.pts) < 0:
                        continue  # not one of the shown frames
                    if frame.is_corrupt:
                        bad += 1
                        self._damaged(n, 'frame %d decoded with errors' % n)
                    n += 1
                    yield self._upright(c.rgb(frame))
        if n < self.num_frames or bad or c.demux_error:
            why = c.demux_error or ('%d decoder error%s' % (bad, 's' if bad != 1 else '') if bad else '')
            self._damaged(n, why, final=True)

    def _damaged(self, decoded: int, why: str, final: bool = False) -> None:
        """Decoder trouble: MediaError naming the file and both counts, or with allow_damaged one
        warning when the whole video has been through (final)."""
        if not self.allow_damaged:
            raise MediaError('%s: damaged video: %s %d of %d frames%s; --allow_damaged uses what decodes'
                             % (self.path, 'decoded' if final else 'stopped after', decoded,
                                self.num_frames, ' (%s)' % why if why else ''))
        if final:
            warnings.warn('%s: damaged video: decoded %d of %d frames%s; using those (allow_damaged)'
                          % (self.path, decoded, self.num_frames, ' (%s)' % why if why else ''),
                          DamagedVideoWarning, stacklevel=3)

    def _upright(self, a: np.ndarray) -> np.ndarray:
        """A decoded RGB frame turned as its display matrix says, at the video's size."""
        if self.index.quarter_turns:
            a = np.ascontiguousarray(np.rot90(a, self.index.quarter_turns))
        if a.shape[:2] != (self.info.height, self.info.width):  # a size change inside the stream
            a = resize(a, self.info.height, self.info.width)
        return a


class GifSource(VideoSource):
    """An animated GIF read with Pillow (which composes frames correctly when seeking)."""

    def __init__(self, path: PathLike):
        from PIL import Image
        self.path = str(path)
        try:
            with Image.open(self.path) as im:
                n = getattr(im, 'n_frames', 1)
                w, h = im.size
                duration = im.info.get('duration') or 40
        except Exception as e:
            raise MediaError('%s: cannot read GIF (%s)' % (self.path, one_line(e))) from None
        self.info = VideoInfo(n, 1000.0 / duration, h, w)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image
        idx = self._check(indices)
        got = {}
        try:
            with Image.open(self.path) as im:
                for i in sorted(set(idx)):
                    im.seek(i)
                    got[i] = to_uint8(np.asarray(im.convert('RGB')), self.path)
        except MediaError:
            raise
        except Exception as e:
            raise MediaError('%s: cannot read GIF frame (%s)' % (self.path, one_line(e))) from None
        return np.stack([got[i] for i in idx])

    def iter_span(self, indices: Sequence[int]) -> Iterator[tuple]:
        last = max(self._check(indices))  # Pillow composes every frame up to `last` anyway
        for i, frame in enumerate(self):
            yield i, frame
            if i == last:
                return

    def __iter__(self) -> Iterator[np.ndarray]:
        from PIL import Image
        try:
            with Image.open(self.path) as im:
                for i in range(self.num_frames):
                    im.seek(i)
                    yield to_uint8(np.asarray(im.convert('RGB')), self.path)
        except (MediaError, GeneratorExit):
            raise
        except Exception as e:
            raise MediaError('%s: cannot read GIF frame (%s)' % (self.path, one_line(e))) from None


class FolderSource(VideoSource):
    """A folder of frame images, ordered by file name; reads only the files asked for."""

    def __init__(self, path: PathLike, fps: float = 25.0):
        self.path = str(path)
        self.files = sorted(f for f in os.listdir(self.path)
                            if is_image_file(f) and not f.startswith('.'))
        if self.files:
            h, w = image_size(os.path.join(self.path, self.files[0]))
        else:
            h, w = 0, 0
        self.info = VideoInfo(len(self.files), fps, h, w)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        got = {i: self._frame(i) for i in set(idx)}
        return np.stack([got[i] for i in idx])

    def _frame(self, i: int) -> np.ndarray:
        frame = read_image(os.path.join(self.path, self.files[i]))
        return resize(frame, self.info.height, self.info.width)  # odd-sized frame in a folder

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self._frame(i)


class StripSource(VideoSource):
    """One image holding the frames side by side (H, T*W) or stacked (T*H, W), as the original's
    moving-gif data. Frame size: `frame_hw` when it tiles the image, else frames of frame_hw's
    aspect ratio, else square frames; an image none of these tile is one frame."""

    def __init__(self, path: PathLike, frame_hw: Optional[tuple] = None, fps: float = 25.0):
        self.path = str(path)
        h, w = image_size(self.path)
        fh, fw = frame_hw if frame_hw else (min(h, w), min(h, w))
        self.axis, n, size = 1, 1, (h, w)
        if h == fh and w % fw == 0:
            self.axis, n, size = 1, w // fw, (fh, fw)
        elif w == fw and h % fh == 0:
            self.axis, n, size = 0, h // fh, (fh, fw)
        else:  # frames of another size than frame_hw, same aspect ratio
            fw2 = h * fw / fh
            fh2 = w * fh / fw
            if fw2 == int(fw2) and w % int(fw2) == 0:
                self.axis, n, size = 1, w // int(fw2), (h, int(fw2))
            elif fh2 == int(fh2) and h % int(fh2) == 0:
                self.axis, n, size = 0, h // int(fh2), (int(fh2), w)
            elif w > h and w % h == 0:  # square frames side by side
                self.axis, n, size = 1, w // h, (h, h)
            elif h > w and h % w == 0:  # square frames stacked
                self.axis, n, size = 0, h // w, (w, w)
            else:
                size = (h, w)
        self.info = VideoInfo(n, fps, size[0], size[1])

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        image = read_image(self.path)
        h, w = self.info.height, self.info.width
        if self.axis == 1:
            return np.stack([image[:, i * w:(i + 1) * w] for i in idx])
        return np.stack([image[i * h:(i + 1) * h] for i in idx])

    def iter_span(self, indices: Sequence[int]) -> Iterator[tuple]:
        self._check(indices)  # the whole image is decoded anyway
        yield from enumerate(self.read(range(self.num_frames)))

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from self.read(range(self.num_frames))


def open_video(path: PathLike, frame_shape: Optional[Sequence[int]] = None,
               allow_damaged: bool = False) -> VideoSource:
    """A VideoSource for a video file, a GIF, a folder of frames or an image strip.

    frame_shape (H, W[, C]) only guides how an image strip is cut into frames. allow_damaged: a
    container video that holds or decodes fewer frames than it lists is used with a
    DamagedVideoWarning instead of refused (MediaError naming the file and both counts)."""
    p = Path(path)
    if p.is_dir():
        return FolderSource(p)
    if not p.exists():
        raise MediaError('%s: not found' % p)
    ext = suffix_of(p)
    reads_as = FORMATS[ext].reads_as if ext in FORMATS else None
    if reads_as == 'gif':
        return GifSource(p)
    if reads_as == 'video':
        return ContainerSource(p, allow_damaged)
    if reads_as == 'image':
        return StripSource(p, tuple(frame_shape[:2]) if frame_shape else None)
    raise MediaError('%s: unknown media type %r (expected one of %s, an image strip or a folder '
                     'of frames)' % (p, ext, ', '.join(VIDEO_EXTENSIONS)))


def media_stem(name: str) -> str:
    """A video's name without a media extension: 'id#clip.mp4' -> 'id#clip', 'frames' -> 'frames'."""
    stem, ext = os.path.splitext(os.path.basename(str(name)))
    return stem if ext.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS else os.path.basename(str(name))


def output_suffix(fmt: str) -> str:
    """A config's `format` ('mp4' or '.mp4') as a suffix the writer knows; errors name the key."""
    suffix = fmt if fmt.startswith('.') else '.' + fmt
    if suffix.lower() not in OUTPUT_FORMATS:
        raise MediaError('format: %r is not one of %s' % (fmt, ', '.join(OUTPUT_FORMATS)))
    return suffix.lower()


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps, size and audio presence, without decoding any frame."""
    return open_video(path).info


def read_frames(path: PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames at `indices` of a video -> uint8 (N, H, W, 3); decodes only what they need."""
    return open_video(path).read(indices)


def iter_video_frames(path: PathLike) -> Iterator[np.ndarray]:
    """Stream the frames of any supported video as uint8 (H, W, 3), one at a time."""
    yield from open_video(path)


def has_audio(path: PathLike) -> bool:
    """Whether a container video has an audio stream (reads the header only)."""
    p = str(path)
    if Path(p).suffix.lower() not in FFMPEG_VIDEO_EXTENSIONS or not os.path.isfile(p):
        return False
    av = _pyav()
    try:
        with av.open(p, metadata_errors='ignore') as container:
            return bool(container.streams.audio)
    except av.FFmpegError:
        return False


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def _as_uint8_batch(frames) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3), uint8 or float in [0, 1] (numpy or torch) -> uint8 (N, H, W, 3)."""
    if hasattr(frames, 'detach'):  # a torch tensor
        frames = frames.detach().cpu().numpy()
    a = np.asarray(frames)
    if a.ndim in (2, 3) and not (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4)):
        a = a[None]
    if a.ndim == 3:  # (N, H, W) gray batch
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError('expected frames (H, W, 3) or (N, H, W, 3), got shape %s' % (a.shape,))
    if a.dtype != np.uint8 or a.shape[-1] != 3:
        a = np.stack([to_uint8(f) for f in a])
    return a


class VideoWriter:
    """Stream frames into a video: `.mp4`/`.mov`/`.mkv`/`.avi` (libx264, yuv420p), `.gif`, or
    `.png` (a folder of numbered PNG frames at `path`).

        with VideoWriter('out.mp4', fps=25) as w:
            for batch in batches:        # uint8 (H, W, 3) / (N, H, W, 3), or float in [0, 1]
                w.write(batch)

    Frames go to a hidden temporary name beside `path`, renamed to `path` on close(); an error
    (or an exception inside the `with`) removes the temporary, so `path` is never half written.
    `crf`/`preset`/`codec` set the encoder (libx264: lower crf = better); `gop` the key-frame
    interval (ffmpeg's -g; short makes random frame access cheap, see ContainerSource).
    Odd frame sizes are padded to even by repeating the last row/column (yuv420p needs even).
    GIF frames are kept in memory until close (Pillow writes a GIF in one go).
    """

    def __init__(self, path: PathLike, fps: float = 25.0, fmt: Optional[str] = None,
                 crf: int = 18, preset: str = 'medium', codec: str = 'libx264',
                 gop: Optional[int] = None):
        self.path = Path(path)
        self.fps = float(fps)
        if not self.fps > 0:
            raise ValueError('fps must be > 0, got %r' % fps)
        fmt = (fmt or self.path.suffix or '').lower()
        if fmt and not fmt.startswith('.'):
            fmt = '.' + fmt
        if fmt not in VIDEO_OUTPUTS:
            raise ValueError('%s: unknown video format %r (use %s)' % (self.path, fmt, listing(VIDEO_OUTPUTS)))
        self.kind = FORMATS[fmt].writes_as  # 'video' (ffmpeg), 'gif' or 'frames'
        self.fmt, self.crf, self.preset, self.codec, self.gop = fmt, crf, preset, codec, gop
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(temp_path(str(self.path), '' if self.kind == 'frames' else fmt))
        self._proc = None
        self._errf = None
        self._gif = []
        self._size = None  # (H, W) of the first frame
        self.frames_written = 0
        self._closed = False
        if self.kind == 'frames':
            if self._tmp.exists():
                shutil.rmtree(self._tmp)
            self._tmp.mkdir()
            (self._tmp / FRAMES_MARKER).write_text(MARK + '\n')  # outputs.is_ours: ours to replace

    def __enter__(self) -> 'VideoWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start_ffmpeg(self, h: int, w: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1001000)
        cmd = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-y',
               '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', '%dx%d' % (w + w % 2, h + h % 2),
               '-framerate', str(rate), '-i', '-', '-an', '-c:v', self.codec]
        if self.codec == 'libx264':
            cmd += ['-preset', self.preset, '-crf', str(self.crf)]
        if self.gop:
            cmd += ['-g', str(int(self.gop))]  # key-frame interval: short = cheap random access
        cmd += ['-pix_fmt', 'yuv420p', '-metadata', 'comment=' + MARK]  # outputs.is_ours
        if MUXERS[self.fmt] in ('mp4', 'mov'):
            cmd += ['-movflags', '+faststart']
        cmd += ['-f', MUXERS[self.fmt], str(self._tmp)]
        self._errf = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._errf)

    def _ffmpeg_error(self) -> str:
        if self._errf is None:
            return ''
        self._errf.seek(0)
        return one_line(RuntimeError(self._errf.read().decode('utf-8', 'replace')))

    def write(self, frames) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3); uint8, or float in [0, 1]."""
        if self._closed:
            raise ValueError('%s: write() after close()' % self.path)
        batch = _as_uint8_batch(frames)
        if self._size is None:
            self._size = batch.shape[1:3]
            if self.kind == 'video':
                self._start_ffmpeg(*self._size)
        if batch.shape[1:3] != self._size:
            self.abort()
            raise ValueError('%s: frame size %s differs from the first frame %s'
                             % (self.path, tuple(batch.shape[1:3]), tuple(self._size)))
        if self.kind == 'video':
            h, w = self._size
            if h % 2 or w % 2:
                batch = np.pad(batch, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
            try:
                self._proc.stdin.write(np.ascontiguousarray(batch).tobytes())
            except (BrokenPipeError, OSError):
                msg = self._ffmpeg_error()
                self.abort()
                raise MediaError('%s: ffmpeg stopped while writing (%s)' % (self.path, msg)) from None
        elif self.kind == 'gif':
            self._gif.extend(batch.copy())
        else:  # png folder
            for f in batch:
                name = self._tmp / ('%06d.png' % self.frames_written)
                if not cv2.imwrite(str(name), f[:, :, ::-1]):
                    self.abort()
                    raise MediaError('%s: cannot write frame %s' % (self.path, name))
                self.frames_written += 1
            return
        self.frames_written += len(batch)

    def close(self) -> Path:
        """Finish the file and move it to `path`; returns `path`."""
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise ValueError('%s: no frames were written' % self.path)
        try:
            if self.kind == 'video':
                self._proc.stdin.close()
                rc = self._proc.wait()
                if rc != 0:
                    raise MediaError('%s: ffmpeg failed (%s)' % (self.path, self._ffmpeg_error()))
            elif self.kind == 'gif':
                from PIL import Image
                images = [Image.fromarray(f) for f in self._gif]
                images[0].save(self._tmp, format='GIF', save_all=True, append_images=images[1:],
                               duration=max(10, int(round(1000.0 / self.fps))), loop=0, comment=MARK)
                self._gif = []
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self._errf is not None:
            self._errf.close()
        return self.path

    def _commit(self) -> None:
        commit(str(self._tmp), str(self.path))

    def abort(self) -> None:
        """Stop and delete the temporary output; `path` is left as it was."""
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
        if self._errf is not None:
            self._errf.close()
        self._gif = []
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()

    def __del__(self) -> None:
        try:
            if not self._closed and self.frames_written:
                warnings.warn('%s: VideoWriter was never closed; its output was discarded'
                              % self.path, RuntimeWarning)
            self.abort()  # never promote an unclosed writer's output to the final name
        except Exception:
            pass


def write_video(path: PathLike, frames: Iterable, fps: float = 25.0, fmt: Optional[str] = None,
                **kwargs) -> Path:
    """Write frames (an array (T, H, W, 3) or any iterable of frames/batches) in one call."""
    with VideoWriter(path, fps=fps, fmt=fmt, **kwargs) as w:
        if isinstance(frames, np.ndarray):
            w.write(frames)
        else:
            for f in frames:
                w.write(f)
    return Path(path)


def copy_audio(src_video: PathLike, dst_video: PathLike) -> bool:
    """Mux the first audio stream of `src_video` into `dst_video` (video stream copied untouched).

    Returns False, changing nothing, when the source has no audio. The audio is stream-copied when
    the container accepts it, else re-encoded to AAC; the audio is cut at the video's length.
    `dst_video` is replaced atomically."""
    src, dst = Path(src_video), Path(dst_video)
    if not src.is_file():
        raise MediaError('%s: audio source not found' % src)
    if not dst.is_file() or suffix_of(dst) not in MUXERS:
        raise MediaError('%s: can only add audio to an existing %s file' % (dst, '/'.join(MUXERS)))
    if not has_audio(src):
        return False
    tmp = Path(temp_path(str(dst), '.audio' + dst.suffix))
    base = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-y', '-i', str(dst),
            '-i', str(src), '-map', '0:v:0', '-map', '1:a:0', '-c:v', 'copy']
    # cut the audio at the video's length (-shortest would drop the last video frame when the audio
    # track ends a few ms early)
    info = probe_video(dst)
    duration = info.num_frames / info.fps if info.fps else None
    tail = (['-t', '%.6f' % duration] if duration else []) + ['-f', MUXERS[dst.suffix.lower()], str(tmp)]
    try:
        res = _run(base + ['-c:a', 'copy'] + tail, src)
        if res.returncode != 0:
            res = _run(base + ['-c:a', 'aac'] + tail, src)
        if res.returncode != 0:
            raise MediaError('%s: cannot copy audio from %s (%s)' % (
                dst, src, one_line(RuntimeError(res.stderr.decode('utf-8', 'replace')))))
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True
