"""Cut a video into square face clips ready for the model (default 256x256).

Pass 1 detects faces (every ``--detect_every`` frame) and links them into tracks by IoU; a
track ends when its face is lost for more than ``--max_gap`` frames or jumps (a cut, a sudden
move): IoU with the track's first box <= ``--iou_with_initial`` (as the original script) or with
its latest box <= ``--iou_with_previous``. Each track at least ``--min_frames`` long gets one
fixed square box (union or mean of its boxes, grown by ``--increase``, kept inside the frame,
side >= ``--min_size``). Pass 2 reads the video again and streams every crop into its clip,
``<out_dir>/<video-stem>_<track#>_<start>-<end>.mp4`` (frame indices, inclusive).

    python crop_video.py --inp video.mp4 --detector haar --out_dir crops/
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from analysis.face import (DETECTORS, FA_WEIGHTS_ENV, CropGeometry, Detector, FaceToolsError, iou, make_detector,
                           square_box)
from core.cli import HelpFormatter, one_line_warnings, report
from media.images import resize

PROG = 'crop_video.py'


# --------------------------------------------------------------------------- tracking

@dataclass
class Track:
    """Face boxes linked over frames; ``start``/``end`` are frame indices (inclusive)."""
    start: int
    end: int
    initial: np.ndarray
    last: np.ndarray
    union: np.ndarray
    box_sum: np.ndarray
    count: int = 1

    @classmethod
    def begin(cls, frame: int, box: np.ndarray) -> 'Track':
        box = np.asarray(box, dtype=np.float64)[:4]
        return cls(frame, frame, box.copy(), box.copy(), box.copy(), box.copy())

    def extend(self, frame: int, box: np.ndarray) -> None:
        box = np.asarray(box, dtype=np.float64)[:4]
        self.end, self.last, self.count = frame, box, self.count + 1
        self.union = np.concatenate([np.minimum(self.union[:2], box[:2]),
                                     np.maximum(self.union[2:], box[2:])])
        self.box_sum = self.box_sum + box

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def box(self, mode: str) -> np.ndarray:
        """The track's box: 'union' of all boxes (the original) or their 'mean'."""
        if mode == 'union':
            return self.union
        if mode == 'mean':
            return self.box_sum / self.count
        raise ValueError("unknown box mode %r: expected 'union' or 'mean'" % (mode,))


@dataclass
class FaceTracker:
    """Greedy IoU tracker: feed ``update(frame, boxes)`` in frame order, then ``finish()``."""
    iou_with_initial: float = 0.25
    iou_with_previous: float = 0.3
    max_gap: int = 5
    active: list[Track] = field(default_factory=list)
    done: list[Track] = field(default_factory=list)

    def update(self, frame: int, boxes: np.ndarray) -> None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        # All admissible (track, box) pairs, best continuation first; one box per track.
        pairs = []
        for t, track in enumerate(self.active):
            for b, box in enumerate(boxes):
                if (iou(box, track.initial) > self.iou_with_initial
                        and iou(box, track.last) > self.iou_with_previous):
                    pairs.append((iou(box, track.last), t, b))
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for _, t, b in sorted(pairs, reverse=True):
            if t not in used_tracks and b not in used_boxes:
                self.active[t].extend(frame, boxes[b])
                used_tracks.add(t)
                used_boxes.add(b)
        still_active = []
        for t, track in enumerate(self.active):
            if t in used_tracks or frame - track.end <= self.max_gap:
                still_active.append(track)
            else:
                self.done.append(track)
        self.active = still_active
        self.active += [Track.begin(frame, boxes[b]) for b in range(len(boxes)) if b not in used_boxes]

    def finish(self) -> list[Track]:
        """All tracks, ordered by start frame (then by position)."""
        self.done += self.active
        self.active = []
        return sorted(self.done, key=lambda t: (t.start, t.initial[0], t.initial[1]))


def track_faces(detections: Iterable[tuple[int, np.ndarray]], iou_with_initial: float = 0.25,
                iou_with_previous: float = 0.3, max_gap: int = 5) -> list[Track]:
    """Tracks from ``(frame_index, boxes (N, 4))`` pairs given in frame order."""
    tracker = FaceTracker(iou_with_initial, iou_with_previous, max_gap)
    for frame, boxes in detections:
        tracker.update(frame, boxes)
    return tracker.finish()


@dataclass(frozen=True)
class Clip:
    """One output clip: frames ``start..end`` (inclusive) cropped to ``geometry``."""
    track: int
    start: int
    end: int
    geometry: CropGeometry

    def name(self, stem: str) -> str:
        return '%s_%s_%s-%s.mp4' % (stem, self.track, self.start, self.end)


def plan_clips(tracks: Sequence[Track], frame_hw: tuple[int, int], increase: float = 0.1,
               min_frames: int = 150, min_size: int = 64,
               box_mode: str = 'union') -> tuple[list[Clip], list[str]]:
    """Clips for the tracks long and large enough, and one reason per rejected track."""
    clips: list[Clip] = []
    rejected: list[str] = []
    for number, track in enumerate(tracks):
        label = 'track %s (frames %s-%s)' % (number, track.start, track.end)
        if track.length < min_frames:
            rejected.append('%s: %s frames < --min_frames %s' % (label, track.length, min_frames))
            continue
        geometry = square_box(track.box(box_mode), frame_hw, increase)
        if geometry.size < min_size:
            rejected.append('%s: crop of %s px < --min_size %s' % (label, geometry.size, min_size))
            continue
        clips.append(Clip(number, track.start, track.end, geometry))
    return clips, rejected


# --------------------------------------------------------------------------- video I/O

def _open(path: Path):
    """The input as a video_io VideoSource; one-line errors name it."""
    from media.video_io import MediaError, open_video

    if path.is_dir():
        raise FaceToolsError('input %s is a folder, expected a video file' % (path,))
    if not path.is_file():
        raise FaceToolsError('input video not found: %s' % (path,))
    try:
        return open_video(path)
    except MediaError as err:
        raise FaceToolsError(str(err)) from None


def _frames(video, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """The video's uint8 (H, W, 3) frames, decoder failures turned into one-line errors."""
    from media.video_io import MediaError

    try:
        for index, frame in enumerate(video):
            if limit is not None and index >= limit:
                return
            yield frame
    except MediaError as err:
        raise FaceToolsError(str(err)) from None


def detect_tracks(path: Path, detector: Detector, every: int = 1, iou_with_initial: float = 0.25,
                  iou_with_previous: float = 0.3, max_gap: int = 5,
                  progress: bool = True) -> tuple[list[Track], tuple[int, int], int, float]:
    """Pass 1: tracks, frame (H, W), number of frames and fps of the video at ``path``."""
    from tqdm import tqdm

    video = _open(path)
    seen = {'hw': (0, 0), 'count': 0}

    def detections():
        for index, frame in enumerate(tqdm(_frames(video), total=video.num_frames, desc='detecting faces',
                                           unit='frame', disable=not progress)):
            seen.update(hw=frame.shape[:2], count=index + 1)
            if index % every == 0:
                yield index, detector(frame)
    tracks = track_faces(detections(), iou_with_initial, iou_with_previous, max_gap)
    if seen['count'] == 0:
        raise FaceToolsError('video %s has no frames' % (path,))
    return tracks, seen['hw'], seen['count'], float(video.info.fps or 25.0)


def clip_paths(path: Path, clips: Sequence[Clip], out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Each clip's output path, checked by the one output-path rule before anything is written."""
    from media.outputs import OutputError, check_output

    outputs = [out_dir / clip.name(path.stem) for clip in clips]
    try:
        for output in outputs:
            check_output('--out_dir', str(output), {'--inp': str(path)}, overwrite=overwrite)
    except OutputError as err:
        raise FaceToolsError(str(err)) from None
    return outputs


def write_clips(path: Path, clips: Sequence[Clip], outputs: Sequence[Path], image_shape: tuple[int, int],
                fps: float, progress: bool = True) -> list[Path]:
    """Pass 2: read ``path`` again and stream each clip's crops into its own mp4 (each written to a
    temporary name and renamed when complete)."""
    from tqdm import tqdm

    from media.video_io import VideoWriter

    writers: dict[int, VideoWriter] = {}
    last_frame = max(clip.end for clip in clips)
    try:
        for index, frame in enumerate(tqdm(_frames(_open(path), last_frame + 1), total=last_frame + 1,
                                           desc='writing clips', unit='frame', disable=not progress)):
            for number, clip in enumerate(clips):
                if not clip.start <= index <= clip.end:
                    continue
                if number not in writers:
                    writers[number] = VideoWriter(outputs[number], fps=fps)
                x0, y0, x1, y1 = clip.geometry.box
                writers[number].write(resize(frame[y0:y1, x0:x1], *image_shape))
                if index == clip.end:
                    writers.pop(number).close()
    finally:
        for writer in writers.values():  # an error part-way: unfinished clips are discarded
            writer.abort()
    return list(outputs)


# --------------------------------------------------------------------------- CLI

def _image_shape(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError('expected HEIGHT,WIDTH such as 256,256, got %r' % (text,))
    if height <= 0 or width <= 0 or height % 2 or width % 2:
        raise argparse.ArgumentTypeError('HEIGHT,WIDTH must be positive and even (H.264), got %r' % (text,))
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Detect and track faces in a video and write one square clip per stable '
                    'face track (ready for the model: e.g. the vox-256 config).')
    parser.add_argument('--inp', required=True, type=Path, help='input video')
    parser.add_argument('--out_dir', type=Path, default=None,
                        help='folder for the clips, named <video-stem>_<track#>_<start>-<end>.mp4 '
                             "(unset: the input video's folder)")
    parser.add_argument('--detector', choices=DETECTORS, default='face_alignment',
                        help='face_alignment: S3FD from face-alignment (pip install -r '
                             "requirements-face.txt; weights download once); haar: OpenCV's "
                             'Haar cascade (no download, frontal faces only)')
    parser.add_argument('--image_shape', type=_image_shape, default='256,256',
                        help='HEIGHT,WIDTH of the output clips')
    parser.add_argument('--increase', type=float, default=0.1,
                        help="margin added around the track's box, fraction of its longer side per side")
    parser.add_argument('--box', choices=('union', 'mean'), default='union',
                        help="the clip's box: union of the track's boxes (original) or their mean")
    parser.add_argument('--iou_with_initial', type=float, default=0.25,
                        help="a face continues a track only if its IoU with the track's first box is above this")
    parser.add_argument('--iou_with_previous', type=float, default=0.3,
                        help="... and its IoU with the track's latest box is above this (splits on cuts/jumps)")
    parser.add_argument('--max_gap', type=int, default=5,
                        help='frames a track may go without a detection before it ends')
    parser.add_argument('--min_frames', type=int, default=150,
                        help='shortest track (in frames) that becomes a clip')
    parser.add_argument('--min_size', type=int, default=64,
                        help='smallest crop side (in input pixels) that becomes a clip')
    parser.add_argument('--detect_every', type=int, default=1,
                        help='run the detector on every Nth frame only (faster, coarser track ends)')
    parser.add_argument('--device', default=None,
                        help='torch device for the face_alignment detector (unset: cuda if available, else cpu)')
    parser.add_argument('--cpu', action='store_true', help='same as --device cpu')
    parser.add_argument('--fa_weights_dir', type=Path, default=None,
                        help="folder holding face-alignment's weight files (unset: $%s "
                             'if set, else $TORCH_HOME/hub/checkpoints)' % (FA_WEIGHTS_ENV,))
    parser.add_argument('--offline', action='store_true',
                        help='never try to download face-alignment weights')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing clips that this tool did not write (never the input)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    """Crop ``args.inp`` as the CLI does; returns the written clip paths."""
    for flag in ('min_frames', 'detect_every'):
        if getattr(args, flag) < 1:
            raise FaceToolsError('--%s must be >= 1, got %s' % (flag, getattr(args, flag)))
    if args.max_gap < 0 or args.min_size < 1 or args.increase < 0:
        raise FaceToolsError('--max_gap and --increase must be >= 0 and --min_size >= 1')
    path = Path(args.inp)
    _open(path)  # a bad input fails before any detector loads
    device = 'cpu' if args.cpu else args.device
    detector = make_detector(args.detector, device=device, weights_dir=args.fa_weights_dir,
                             allow_download=not args.offline)
    progress = not args.quiet
    tracks, frame_hw, count, fps = detect_tracks(
        path, detector, args.detect_every, args.iou_with_initial, args.iou_with_previous,
        args.max_gap, progress)
    clips, rejected = plan_clips(tracks, frame_hw, args.increase, args.min_frames, args.min_size, args.box)
    for reason in rejected:
        print('skipped %s' % (reason,), file=sys.stderr)
    if not clips:
        why = ('%s face track(s), none long and large enough (reasons above; lower --min_frames / '
               '--min_size?)' % (len(tracks),) if tracks else 'no face was detected (--detector %s)' % (args.detector,))
        print('no clip written: %s frames of %s: %s' % (count, path, why), file=sys.stderr)
        return []
    out_dir = args.out_dir if args.out_dir is not None else path.resolve().parent
    outputs = write_clips(path, clips, clip_paths(path, clips, out_dir, args.overwrite), args.image_shape, fps,
                          progress)
    for clip, output in zip(clips, outputs):
        g = clip.geometry
        print('%s: frames %s-%s (%s), box x=%s y=%s side=%s'
              % (output, clip.start, clip.end, clip.end - clip.start + 1, g.left, g.top, g.size))
    return outputs


def main(argv: Optional[Sequence[str]] = None) -> int:
    from media.outputs import exit_on_sigterm
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # unfinished clips are discarded, not left half-written
    try:
        run(args)
    except FaceToolsError as err:
        return report(PROG, err)
    return 0


if __name__ == '__main__':
    one_line_warnings('crop_video.py')
    sys.exit(main())
