"""Reading and writing frames and videos: images, frame folders, image strips, GIFs and ffmpeg videos.

Frames are always uint8 arrays (H, W, 3) in RGB order. Everything that touches ffmpeg uses the
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
"""
from __future__ import annotations

import os
import re
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

from images import IMAGE_EXTENSIONS, MediaError, image_size, one_line, read_image, resize, to_uint8
from outputs import FRAMES_MARKER, MARK, commit, temp_path

PathLike = Union[str, os.PathLike]

FFMPEG_VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')
VIDEO_EXTENSIONS = FFMPEG_VIDEO_EXTENSIONS + ('.gif',)
# ffmpeg muxer per output suffix (the temporary file name must not decide the format).
MUXERS = {'.mp4': 'mp4', '.m4v': 'mp4', '.mov': 'mov', '.mkv': 'matroska', '.avi': 'avi'}
OUTPUT_FORMATS = tuple(MUXERS) + ('.gif', '.png')  # '.png': a folder of numbered PNG frames
# Messages of a probe that mean the file cannot be trusted (truncated download, garbage bytes).
_CORRUPT_MARKERS = ('partial file', 'corrupt', 'invalid data', 'moov atom not found', 'truncat',
                    'error opening input', 'no such file')
_NOPTS = -(2 ** 63)

# Counters for tests and benchmarks: frames ffmpeg had to decode, frames handed to Python.
decode_stats = {'decoded': 0, 'returned': 0, 'processes': 0}


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
class _SeekTable:
    """Presentation-order key frames and their seek times (seconds from the file start)."""
    key_index: list = field(default_factory=lambda: [0])
    key_time: list = field(default_factory=lambda: [None])


def _run(cmd: list, what: PathLike) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as e:
        raise MediaError('%s: cannot run ffmpeg (%s)' % (what, e)) from None


def _ffmpeg_probe(path: str) -> tuple:
    """One stream-copy pass over the packets (no decoding): (VideoInfo, _SeekTable)."""
    cmd = [ffmpeg_exe(), '-hide_banner', '-nostats', '-loglevel', 'info', '-i', path,
           '-map', '0:v:0', '-c', 'copy', '-f', 'framecrc', '-']
    res = _run(cmd, path)
    err = res.stderr.decode('utf-8', 'replace').replace(path, '<file>')  # file names hold any word
    head = err.split('Output #0')[0].split('Stream mapping')[0]
    low = err.lower()
    bad = [m for m in _CORRUPT_MARKERS if m in low]
    packets, tb, dims = [], None, None
    for line in res.stdout.decode('ascii', 'replace').splitlines():
        if line.startswith('#tb'):
            num, den = line.split(':', 1)[1].strip().split('/')
            tb = Fraction(int(num), int(den))
        elif line.startswith('#dimensions'):
            w, h = line.split(':', 1)[1].strip().split('x')
            dims = (int(h), int(w))
        elif line and not line.startswith('#'):
            parts = [s.strip() for s in line.split(',')]
            flags = [int(s[2:], 16) for s in parts[6:] if s.startswith('F=')]
            flag = flags[0] if flags else 1  # printed only when not just "key frame"
            if not flag & 4:  # AV_PKT_FLAG_DISCARD: decoded for reference, never shown (edit lists)
                packets.append((int(parts[2]), flag & 1))
    if res.returncode != 0 or bad or not packets or dims is None:
        lines = [l for l in err.splitlines() if l.strip() and not l.startswith(' ')]
        why = lines[-1] if lines else 'no video stream'
        if bad:
            why = next(l for l in err.splitlines() if any(m in l.lower() for m in bad))
        why = re.sub(r'^\[[^\]]*\]\s*', '', why.strip())
        raise MediaError('%s: corrupt, truncated or unreadable video (%s)' % (path, why))
    if re.search(r'rotation of -?(90|270)\.0', head):  # ffmpeg auto-rotates on decode
        dims = (dims[1], dims[0])
    m = re.search(r'Video:.*?([\d.]+)(k?) fps', head) or re.search(r'Video:.*?([\d.]+)(k?) tbr', head)
    fps = float(m.group(1)) * (1000 if m.group(2) else 1) if m else 25.0
    has_audio = bool(re.search(r'Stream #\d+:\d+.*: Audio:', head))
    info = VideoInfo(len(packets), fps, dims[0], dims[1], has_audio)
    table = _SeekTable()
    if tb is not None and all(p != _NOPTS for p, _ in packets):
        # Listed pts are relative to the file's start time, as -ss before -i is.
        packets.sort()
        for i, (pts, key) in enumerate(packets):
            if key and i > 0 and pts > 0:
                t_us = (pts * tb * 1_000_000).__floor__()  # floor: never seek past the frame
                table.key_index.append(i)
                table.key_time.append('%d.%06d' % divmod(t_us, 1_000_000))
    return info, table


# ----------------------------------------------------------------------------------------------
# Video sources: one interface over ffmpeg videos, GIFs, frame folders and image strips
# ----------------------------------------------------------------------------------------------

class VideoSource:
    """A video whose frames can be read by index or streamed. Holds no open handles (picklable)."""

    path: str
    info: VideoInfo

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
        """All frames -> uint8 (T, H, W, 3), streamed into one preallocated array."""
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
            raise MediaError('%s: truncated video (decoded %d of %d frames)' % (self.path, n, len(out)))
        return out

    def _check(self, indices: Sequence[int]) -> list:
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.num_frames:
                raise IndexError('%s: frame %d out of range (video has %d frames)'
                                 % (self.path, i, self.num_frames))
        return idx


class FfmpegSource(VideoSource):
    """A container video (.mp4, .mov, .avi, ...). Random access seeks to the nearest key frame
    before each requested frame and decodes only from there, in one ffmpeg call per key-frame run."""

    decode_threads = 1  # many data-loader workers run at once: one decoder thread each

    def __init__(self, path: PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise MediaError('%s: video not found' % self.path)
        self.info, self._seek = _ffmpeg_probe(self.path)

    def _key_before(self, i: int) -> int:
        """Position in the seek table of the last key frame at or before frame i."""
        keys = self._seek.key_index
        lo, hi = 0, len(keys) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if keys[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _runs(self, indices: Sequence[int]) -> list:
        """Sorted unique frames grouped into runs; each run is one ffmpeg call that seeks to the
        key frame before its first frame. A new run starts when a key frame lies past the
        previous wanted frame (seeking there beats decoding through)."""
        runs, cur = [], []
        for i in sorted(set(indices)):
            if cur and self._seek.key_index[self._key_before(i)] > cur[-1]:
                runs.append(cur)
                cur = []
            cur.append(i)
        return runs + [cur] if cur else runs

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        got = {}
        for run in self._runs(idx):
            got.update(self._decode_run(run))
        return np.stack([got[i] for i in idx])

    def iter_span(self, indices: Sequence[int]) -> Iterator[tuple]:
        for run in self._runs(self._check(indices)):  # streamed: memory is one frame at a time
            k = self._key_before(run[0])
            start, t = self._seek.key_index[k], self._seek.key_time[k]
            n = 0
            for n, frame in enumerate(_stream_raw(self.path, self.info.height, self.info.width,
                                                  seek=t, count=run[-1] - start + 1,
                                                  threads=self.decode_threads), start=1):
                yield start + n - 1, frame
            if n < run[-1] - start + 1:
                raise MediaError('%s: truncated or corrupt video (frame %d of %d could not be '
                                 'decoded)' % (self.path, start + n, self.num_frames))

    def _decode_run(self, run: list) -> dict:
        """Decode from the key frame before run[0] up to run[-1] and return the frames of `run`
        (ffmpeg's select filter drops the others before RGB conversion)."""
        k = self._key_before(run[0])
        start, t = self._seek.key_index[k], self._seek.key_time[k]
        h, w = self.info.height, self.info.width
        cmd = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error',
               '-threads', str(self.decode_threads)]
        if t is not None:
            cmd += ['-ss', t]
        cmd += ['-i', self.path, '-map', '0:v:0',
                '-vf', 'select=' + '+'.join('eq(n\\,%d)' % (i - start) for i in run),
                '-fps_mode', 'passthrough', '-frames:v', str(len(run)),
                '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-']
        res = _run(cmd, self.path)
        decode_stats['processes'] += 1
        decode_stats['decoded'] += run[-1] - start + 1
        frames = np.frombuffer(res.stdout, np.uint8)
        n = frames.size // (h * w * 3)
        if n < len(run):
            if n == 0 and res.returncode != 0:
                raise MediaError('%s: cannot decode (%s)' % (self.path, one_line(
                    RuntimeError(res.stderr.decode('utf-8', 'replace')))))
            raise MediaError('%s: truncated or corrupt video (frame %d of %d could not be decoded)'
                             % (self.path, run[n], self.num_frames))
        frames = frames[:len(run) * h * w * 3].reshape(len(run), h, w, 3)
        decode_stats['returned'] += len(run)
        return dict(zip(run, frames))

    def __iter__(self) -> Iterator[np.ndarray]:
        h, w = self.info.height, self.info.width
        yield from _stream_raw(self.path, h, w)


def _stream_raw(path: str, h: int, w: int, seek: Optional[str] = None, count: Optional[int] = None,
                threads: int = 0) -> Iterator[np.ndarray]:
    """Decode a video with ffmpeg into a pipe, one uint8 (h, w, 3) frame at a time; optionally
    from a seek time (seconds, as a string) and for at most `count` frames."""
    cmd = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-threads', str(threads)]
    cmd += ['-ss', seek] if seek is not None else []
    cmd += ['-i', path, '-map', '0:v:0', '-fps_mode', 'passthrough']
    cmd += ['-frames:v', str(count)] if count is not None else []
    cmd += ['-f', 'rawvideo', '-pix_fmt', 'rgb24', '-']
    size = h * w * 3
    with tempfile.TemporaryFile() as errf:  # a file, not a pipe: a chatty ffmpeg cannot block
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
        decode_stats['processes'] += 1
        try:
            while True:
                buf = proc.stdout.read(size)
                if len(buf) < size:
                    break
                decode_stats['decoded'] += 1
                decode_stats['returned'] += 1
                yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            proc.wait()
            if proc.returncode != 0:
                errf.seek(0)
                msg = errf.read().decode('utf-8', 'replace')
                raise MediaError('%s: decoding failed (%s)' % (path, one_line(RuntimeError(msg))))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()


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


def open_video(path: PathLike, frame_shape: Optional[Sequence[int]] = None) -> VideoSource:
    """A VideoSource for a video file, a GIF, a folder of frames or an image strip.

    frame_shape (H, W[, C]) only guides how an image strip is cut into frames."""
    p = Path(path)
    ext = p.suffix.lower()
    if p.is_dir():
        return FolderSource(p)
    if not p.exists():
        raise MediaError('%s: not found' % p)
    if ext == '.gif':
        return GifSource(p)
    if ext in FFMPEG_VIDEO_EXTENSIONS:
        return FfmpegSource(p)
    if ext in IMAGE_EXTENSIONS:
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
    """Whether a container video has an audio stream."""
    p = str(path)
    if Path(p).suffix.lower() not in FFMPEG_VIDEO_EXTENSIONS or not os.path.isfile(p):
        return False
    res = _run([ffmpeg_exe(), '-hide_banner', '-nostdin', '-i', p], p)
    return bool(re.search(r'Stream #\d+:\d+.*: Audio:', res.stderr.decode('utf-8', 'replace')))


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
    interval (ffmpeg's -g; short makes random frame access cheap, see FfmpegSource).
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
        if fmt not in MUXERS and fmt not in ('.gif', '.png'):
            raise ValueError('%s: unknown video format %r (use .mp4, .mov, .mkv, .avi, .gif or .png)'
                             % (self.path, fmt))
        self.fmt, self.crf, self.preset, self.codec, self.gop = fmt, crf, preset, codec, gop
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(temp_path(str(self.path), '' if fmt == '.png' else fmt))
        self._proc = None
        self._errf = None
        self._gif = []
        self._size = None  # (H, W) of the first frame
        self.frames_written = 0
        self._closed = False
        if fmt == '.png':
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
            if self.fmt in MUXERS:
                self._start_ffmpeg(*self._size)
        if batch.shape[1:3] != self._size:
            self.abort()
            raise ValueError('%s: frame size %s differs from the first frame %s'
                             % (self.path, tuple(batch.shape[1:3]), tuple(self._size)))
        if self.fmt in MUXERS:
            h, w = self._size
            if h % 2 or w % 2:
                batch = np.pad(batch, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
            try:
                self._proc.stdin.write(np.ascontiguousarray(batch).tobytes())
            except (BrokenPipeError, OSError):
                msg = self._ffmpeg_error()
                self.abort()
                raise MediaError('%s: ffmpeg stopped while writing (%s)' % (self.path, msg)) from None
        elif self.fmt == '.gif':
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
            if self.fmt in MUXERS:
                self._proc.stdin.close()
                rc = self._proc.wait()
                if rc != 0:
                    raise MediaError('%s: ffmpeg failed (%s)' % (self.path, self._ffmpeg_error()))
            elif self.fmt == '.gif':
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
    if not dst.is_file() or dst.suffix.lower() not in MUXERS:
        raise MediaError('%s: can only add audio to an existing %s file'
                         % (dst, '/'.join(sorted(MUXERS))))
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
