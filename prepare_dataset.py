"""Prepare videos for fast training: each one at the config's frame size, with frequent key frames.

    python prepare_dataset.py data/my-videos data/my-videos-256 --frame_shape 256,256
    python prepare_dataset.py IN OUT --frame_shape 64,64 --gop 8 --workers 4

IN holds videos in any layout FramesDataset reads (video files, GIFs, folders of frames, image
strips), under IN/train and IN/test (kept as OUT/train and OUT/test) or directly in IN. Each one
is written to OUT as an .mp4 resized once to --frame_shape (images.resize) with a key frame every
--gop frames, without audio (or, with --format png, as a folder of frames). A training sample then
decodes at most about --gop frames per frame it needs, instead of everything from the start of the
video (a camera or a download usually has one key frame every few seconds). Train on it with
dataset_params.root_dir: OUT and the same frame_shape. Output names are the inputs' without their
media extension ('id#clip.mov' -> 'id#clip.mp4'), so id sampling and pairs lists keep working.

Resumable: each output is written to a hidden temporary name and renamed when complete, so a
file under its final name is finished, and a second run skips it; temporaries left by a killed
run are removed. OUT remembers its settings (.fomm-prepared.json): resuming with other ones is
refused. Inputs that cannot be read completely (corrupt, cut, damaged: see video_io) are listed
at the end and skipped; the exit status is non-zero only when nothing could be prepared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from core import cli
from media.images import MediaError, one_line, resize
from media.outputs import MARK, OutputError, clean_stale_temps
from media.video_io import ContainerSource, VideoWriter, is_image_file, media_stem, open_video

PROG = 'prepare_dataset.py'
MANIFEST = '.fomm-prepared.json'  # in OUT: the settings it was prepared with; marks OUT as ours
SPLITS = ('train', 'test')
FORMATS = ('mp4', 'png')


@dataclass(frozen=True)
class Settings:
    """How every video of one OUT folder is written (kept in its manifest)."""
    frame_shape: tuple  # (H, W)
    gop: int = 8  # key-frame interval of the .mp4 outputs
    format: str = 'mp4'  # 'mp4' or 'png' (a folder of frames)
    crf: int = 18  # libx264 quality: lower is better, 18 is visually lossless

    def output_name(self, name: str) -> str:
        return media_stem(name) + ('.mp4' if self.format == 'mp4' else '')


def parse_frame_shape(text: str) -> tuple:
    """'256,256' or '256x256' (or '256,256,3') -> (256, 256); ValueError naming the flag."""
    parts = [p for p in text.replace('x', ',').split(',') if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) == 3 and shape[2] == 3:
        shape = shape[:2]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError('--frame_shape: expected H,W (e.g. 256,256), got %r' % text)
    return shape


def check_folders(inp: str, out: str) -> None:
    """The output-path rule for a folder of outputs: OUT is never IN, inside IN, or a folder
    holding IN; an existing, non-empty OUT must be one this tool prepared."""
    if not os.path.isdir(inp):
        raise ValueError('IN: folder not found: %s' % inp)
    i, o = os.path.realpath(inp), os.path.realpath(out)
    if o == i or o.startswith(i.rstrip(os.sep) + os.sep):
        raise OutputError('OUT: %s is the input folder or inside it (%s); choose a folder outside it' % (out, inp))
    if i.startswith(o.rstrip(os.sep) + os.sep):
        raise OutputError('OUT: %s holds the input folder %s; choose another folder' % (out, inp))
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError('OUT: %s exists and is not a folder' % out)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)):
        raise OutputError('OUT: %s is a folder that this tool did not prepare (no %s); choose a new or empty '
                          'folder' % (out, MANIFEST))


def open_manifest(out: str, settings: Settings) -> None:
    """Write OUT's manifest, or check that the one there has these settings (a resume)."""
    path = os.path.join(out, MANIFEST)
    mine = dict(asdict(settings), frame_shape=list(settings.frame_shape), written_by=MARK)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                theirs = json.load(f)
        except (OSError, ValueError) as e:
            raise OutputError('OUT: cannot read %s (%s)' % (path, one_line(e))) from None
        changed = [k for k in mine if theirs.get(k) != mine[k]]
        if changed:
            raise OutputError('OUT: %s was prepared with %s; resume with the same settings or use a new folder'
                              % (out, ', '.join('%s %s' % (k, theirs.get(k)) for k in changed)))
        return
    try:
        os.makedirs(out, exist_ok=True)
        with open(path, 'w') as f:
            json.dump(mine, f, indent=1)
    except OSError as e:
        raise OutputError('OUT: cannot write into %s (%s)' % (out, e.strerror or e)) from None


def plan(inp: str, out: str, settings: Settings) -> tuple:
    """([(input, output)] still to do, number already done, [(input, reason)] refused)."""
    from frames_dataset import list_media  # here, not at the top: spawned workers need no torch
    splits = [s for s in SPLITS if os.path.isdir(os.path.join(inp, s))] or ['']
    todo, done, refused = [], 0, []
    for split in splits:
        src_dir, dst_dir = os.path.join(inp, split), os.path.join(out, split)
        os.makedirs(dst_dir, exist_ok=True)
        clean_stale_temps(dst_dir)  # half-written outputs of a killed run
        taken = {}
        for name in list_media(Path(src_dir)):
            src = os.path.join(src_dir, name)
            if os.path.isdir(src) and not any(is_image_file(f) for f in os.listdir(src)):
                continue  # a folder without frames: not a video (FramesDataset skips it too)
            dst = os.path.join(dst_dir, settings.output_name(name))
            if dst in taken:
                refused.append((src, 'same output name as %s (%s); rename one' % (taken[dst], dst)))
                continue
            taken[dst] = src
            if os.path.exists(dst):
                done += 1
            else:
                todo.append((src, dst))
    return todo, done, refused


def prepare_one(src: str, dst: str, settings: Settings, threads: int = 0) -> int:
    """Write one video to dst (temporary name, renamed when whole); returns its frame count.
    MediaError (naming src) when src cannot be read completely; nothing is left at dst then."""
    h, w = settings.frame_shape
    video = open_video(src, (h, w))
    if isinstance(video, ContainerSource):
        video.stream_threads = threads  # one per worker when several decode side by side
    fmt = '.mp4' if settings.format == 'mp4' else '.png'
    count = 0
    with VideoWriter(dst, fps=video.info.fps or 25.0, fmt=fmt, crf=settings.crf, gop=settings.gop) as writer:
        for frame in video:  # streamed: checks that every frame the container lists decodes
            writer.write(resize(frame, h, w))
            count += 1
    written = open_video(dst)
    if written.num_frames != count or (written.info.height, written.info.width) != (h, w):
        shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)  # never leave a wrong copy behind
        raise MediaError('%s: the prepared copy has %d frames of %dx%d, expected %d of %dx%d'
                         % (src, written.num_frames, written.info.height, written.info.width, count, h, w))
    return count


def _job(src: str, dst: str, settings: Settings, threads: int) -> tuple:
    """prepare_one in a worker process: (src, frames or None, error or None)."""
    try:
        return src, prepare_one(src, dst, settings, threads), None
    except (MediaError, ValueError, OSError) as e:
        return src, None, one_line(e)


def run_jobs(todo: list, settings: Settings, workers: int, progress: bool = True) -> list:
    """Prepare every (input, output) of todo, in `workers` processes; [(input, frames, error)]."""
    results = []
    bar = tqdm(total=len(todo), unit='video', desc='preparing', disable=not progress or not todo)
    if workers <= 1 or len(todo) <= 1:
        for src, dst in todo:
            results.append(_job(src, dst, settings, 0))
            bar.update(1)
    else:  # spawned, not forked: a worker starts with no decoder or thread state of this process
        with ProcessPoolExecutor(workers, mp_context=get_context('spawn')) as pool:
            futures = [pool.submit(_job, src, dst, settings, 1) for src, dst in todo]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update(1)
    bar.close()
    return results


def prepare(inp: str, out: str, settings: Settings, workers: int = 1, progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Prepare IN into OUT (see the module doc); returns {'prepared': n, 'already': n,
    'skipped': [(input, reason)]}. Raises ValueError/OutputError before any work on bad folders."""
    check_folders(inp, out)
    open_manifest(out, settings)
    todo, already, skipped = plan(inp, out, settings)
    if not todo and not already and not skipped:
        raise ValueError('IN: %s holds no videos (expected %s/ and %s/ folders or videos directly)'
                         % (inp, *SPLITS))
    results = run_jobs(todo, settings, workers, progress)
    prepared = sum(1 for _, frames, _ in results if frames is not None)
    skipped += sorted((src, err) for src, _, err in results if err is not None)
    log('prepared %d video(s) into %s%s' % (prepared, out, ' (%d already there)' % already if already else ''))
    if skipped:
        log('skipped %d input(s) that could not be read or written:' % len(skipped))
        for src, why in skipped:
            log('  %s' % (why if src in why else '%s: %s' % (src, why)))
    return {'prepared': prepared, 'already': already, 'skipped': skipped}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                epilog='See the module documentation (top of prepare_dataset.py) for details.',
                                formatter_class=cli.HelpFormatter)
    p.add_argument('inp', metavar='IN', help='folder of videos (with train/ and test/ inside, or videos directly)')
    p.add_argument('out', metavar='OUT', help='folder to write the prepared videos to (new, or one to resume)')
    p.add_argument('--frame_shape', required=True,
                   help='H,W of the prepared frames: the config\'s dataset_params.frame_shape')
    p.add_argument('--gop', type=int, default=8, help='a key frame every N frames (.mp4 outputs)')
    p.add_argument('--format', choices=FORMATS, default='mp4',
                   help='mp4 (small, seeks within --gop frames) or png (a folder of lossless frames per video: '
                        'nothing decoded on the way, many times larger on disk)')
    p.add_argument('--crf', type=int, default=18, help='libx264 quality of the .mp4 outputs (lower is better)')
    p.add_argument('--workers', type=int, default=0, help='videos prepared side by side; 0: one per CPU')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.gop < 1:
            raise ValueError('--gop: must be >= 1, got %d' % args.gop)
        if args.workers < 0:
            raise ValueError('--workers: must be >= 0, got %d' % args.workers)
        if args.workers == 0:
            from core.runtime import cpu_count  # here: it imports torch, which spawned workers do without
            args.workers = cpu_count()
        if not 0 <= args.crf <= 51:
            raise ValueError('--crf: must be within 0..51, got %d' % args.crf)
        settings = Settings(parse_frame_shape(args.frame_shape), args.gop, args.format, args.crf)
        report = prepare(args.inp, args.out, settings, args.workers, progress=not args.quiet,
                         log=lambda line: print(line, file=sys.stderr))
    except (ValueError, OutputError, OSError) as e:
        return cli.report(PROG, e)
    except KeyboardInterrupt:
        print('%s: interrupted; finished videos are kept, run the same command again to go on' % PROG,
              file=sys.stderr)
        return 130
    return 0 if report['prepared'] or report['already'] else 1


if __name__ == '__main__':
    cli.one_line_warnings('prepare_dataset.py')
    sys.exit(main())
