"""Compare generated videos with the real ones, frame by frame: L1, PSNR, SSIM and the paper's
AKD, MKR and AED (the modern pose-evaluation). Videos are paired by name (without extension):
`real/x.mp4` with `generated/x.mp4`, `generated/x/` (a folder of frames, as `run.py --mode
reconstruction` writes with format .png) or `generated/x.png` (a strip of frames side by side).

    pip install -r requirements-eval.txt        # dlib + its pretrained face models (faces)
    python evaluate.py --real data/vox/test --generated log/vox-256_<stamp>/reconstruction
    python evaluate.py --real data/taichi/test --generated GEN --kind bodies \\
        --pose_model pose.onnx [--reid_model reid.onnx]      # model contracts: docs/evaluation.md

Writes metrics.json / metrics.csv (per video and mean, as run.py --mode reconstruction) and
metrics.md (a table in the paper's layout: L1, AKD, MKR, AED) into --out. A pair that cannot be
compared (a name on one side only, other frame counts or sizes, an unreadable file) is listed
under 'skipped' with the reason; only when nothing could be compared is it an error.
"""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from analysis import metrics as metrics_lib
from analysis.face import FaceToolsError
from analysis.measures import MeasuresUnavailable, VideoMeasures, measured_shape
from core.cli import HelpFormatter, interrupted, one_line_warnings, report
from media.images import IMAGE_EXTENSIONS, MediaError, one_line
from media.outputs import OutputError, check_outputs, exit_on_sigterm, temp_path
from media.video_io import VIDEO_EXTENSIONS, media_stem, open_video

PROG = 'evaluate.py'
KINDS = ('faces', 'bodies')
REPORT_FILES = ('metrics.json', 'metrics.csv', 'metrics.md')


class NothingCompared(ValueError):
    """No pair of videos could be compared."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--real', required=True, help='folder of the real (test) videos')
    p.add_argument('--generated', required=True, help='folder of the generated videos, named as the real ones')
    p.add_argument('--kind', default='faces', choices=KINDS,
                   help='faces: dlib landmarks (AKD) and face embeddings (AED); bodies: --pose_model (AKD, MKR) '
                        'and --reid_model (AED)')
    p.add_argument('--out', default=None,
                   help='folder for metrics.json, metrics.csv, metrics.md (default: <generated>-evaluation beside '
                        'the generated folder)')
    p.add_argument('--overwrite', action='store_true', help='replace report files this tool did not write')
    p.add_argument('--max_frames', type=int, default=None, help='compare only the first N frames of each video')
    p.add_argument('--batch_size', type=int, default=16, help='frames per batch for the networks')
    p.add_argument('--face_detector', default='hog', choices=('hog', 'cnn'),
                   help="faces: dlib's HOG detector, or its CNN detector (slower on CPU, more tolerant of blur)")
    p.add_argument('--landmarks', default='dlib', choices=('dlib', 'face_alignment'),
                   help="faces: dlib's 68 landmarks, or face-alignment's (its weights must be present or downloadable)")
    p.add_argument('--fa_weights_dir', default=None, help='--landmarks face_alignment: folder of its weight files')
    p.add_argument('--device', default=None, help='--landmarks face_alignment: cpu or cuda (default: cuda when available)')
    p.add_argument('--pose_model', default=None, help='bodies: an ONNX pose model (contract: docs/evaluation.md)')
    p.add_argument('--reid_model', default=None, help='bodies: an ONNX person re-id model for AED (optional)')
    p.add_argument('--kp_threshold', type=float, default=0.3, help='bodies: a keypoint is found at this score or above')
    p.add_argument('--no_progress', action='store_true', help='no progress bar')
    return p


def check_flags(args) -> None:
    """Flags that need no network: one line naming the flag."""
    for flag in ('real', 'generated'):
        if not os.path.isdir(getattr(args, flag)):
            raise FileNotFoundError('--%s: not a folder: %s' % (flag, getattr(args, flag)))
    for flag in ('max_frames', 'batch_size'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError('--%s: must be >= 1, got %d' % (flag, value))
    if args.kind == 'bodies' and not args.pose_model:
        raise ValueError('--pose_model: --kind bodies needs a pose model (ONNX); no package ships one: see '
                         'docs/evaluation.md for the contract and where to get one')
    if args.kind == 'faces' and (args.pose_model or args.reid_model):
        raise ValueError('--pose_model/--reid_model: only for --kind bodies')


def check_outputs_of(args) -> Tuple[str, Dict[str, str]]:
    """The output rule for the three report files, before any video is read. Returns the output
    folder and the report paths."""
    out = args.out or os.path.normpath(os.path.abspath(args.generated)) + '-evaluation'
    for flag in ('real', 'generated'):  # an output is never an input: not even inside an input folder
        folder = os.path.realpath(getattr(args, flag))
        where = os.path.realpath(out)
        if where == folder or where.startswith(folder.rstrip(os.sep) + os.sep):
            raise OutputError('--out: %s is inside the input folder --%s (%s); choose another folder'
                              % (out, flag, getattr(args, flag)))
    paths = {name: os.path.join(out, name) for name in REPORT_FILES}
    check_outputs({'--out ' + name: path for name, path in paths.items()},
                  {'--real': args.real, '--generated': args.generated}, overwrite=args.overwrite)
    return out, paths


def make_measurer(args):
    if args.kind == 'faces':
        from analysis.face_measures import FaceMeasurer
        return FaceMeasurer(detector=args.face_detector, landmarks=args.landmarks, batch_size=args.batch_size,
                            device=args.device, fa_weights_dir=args.fa_weights_dir)
    from analysis.body_measures import BodyMeasurer
    return BodyMeasurer(args.pose_model, args.reid_model, threshold=args.kp_threshold, batch_size=args.batch_size)


# ------------------------------------------------------------------------------------ pairing
def list_videos(folder: str) -> Tuple[Dict[str, str], List[dict]]:
    """{name without extension: path} of the videos, frame folders and image strips in `folder`
    (hidden entries and other files ignored), and the names given twice (skipped)."""
    found: Dict[str, List[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        ext = os.path.splitext(entry.name)[1].lower()
        if entry.name.startswith('.') or not (entry.is_dir() or ext in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS):
            continue
        found.setdefault(media_stem(entry.name), []).append(entry.path)
    videos = {name: paths[0] for name, paths in found.items() if len(paths) == 1}
    twice = [{'name': name, 'reason': '%s: %s' % (folder, ' and '.join(os.path.basename(p) for p in paths))
              + ' share the name; rename one'} for name, paths in found.items() if len(paths) > 1]
    return videos, twice


def pair_videos(real_dir: str, generated_dir: str) -> Tuple[List[Tuple[str, str, str]], List[dict]]:
    """[(name, real path, generated path)] paired by name, and the skipped names with reasons."""
    real, skipped = list_videos(real_dir)
    generated, twice = list_videos(generated_dir)
    skipped += twice
    twice_names = {s['name'] for s in skipped}
    pairs = []
    for name in sorted(set(real) | set(generated)):
        if name in twice_names:
            continue
        if name not in generated:
            skipped.append({'name': name, 'reason': 'no generated video named %s in %s' % (name, generated_dir)})
        elif name not in real:
            skipped.append({'name': name, 'reason': 'no real video named %s in %s' % (name, real_dir)})
        else:
            pairs.append((name, real[name], generated[name]))
    return pairs, skipped


def open_pair(real_path: str, generated_path: str, max_frames: Optional[int]):
    """(real source, generated source, frames to compare); ValueError saying why they cannot be."""
    real = open_video(real_path)
    if real.num_frames == 0:
        raise MediaError('%s: no frames' % real_path)
    rh, rw = real.info.height, real.info.width
    generated = open_video(generated_path, frame_shape=(rh, rw))  # a strip is cut into frames of the real size
    if generated.num_frames != real.num_frames:
        raise ValueError('%d generated frames (%s) against %d real ones (%s)'
                         % (generated.num_frames, generated_path, real.num_frames, real_path))
    if (generated.info.height, generated.info.width) != (rh, rw):
        raise ValueError('generated frames are %dx%d (%s), real ones %dx%d (%s): compare at one size (e.g. a copy '
                         'of the test set at the model\'s size: prepare_dataset.py)'
                         % (generated.info.width, generated.info.height, generated_path, rw, rh, real_path))
    return real, generated, min(real.num_frames, max_frames or real.num_frames)


def _take(frames, n: int, done: int, side: str) -> list:
    out = [frame for _, frame in zip(range(n), frames)]
    if len(out) < n:  # a file that holds fewer frames than it lists
        raise ValueError('the %s video ended after %d frames' % (side, done + len(out)))
    return out


def compare(name: str, real, generated, count: int, measurer, batch_size: int, bar) -> dict:
    """One row: L1, PSNR, SSIM, AKD, AED, MKR and detection shares over the first `count` frames."""
    scores = metrics_lib.VideoMetrics(name)
    measures = VideoMeasures(measurer)
    real_it, generated_it = iter(real), iter(generated)
    done = 0
    while done < count:
        n = min(batch_size, count - done)
        reals = _take(real_it, n, done, 'real')
        generateds = _take(generated_it, n, done, 'generated')
        for r, g in zip(reals, generateds):
            scores.add(g, r)
        measures.add_batch(reals, generateds)
        done += n
        bar.update(n)
    row = scores.result()
    row.update(measures.result())
    return row


# ------------------------------------------------------------------------------------ report
def _cell(value, fmt: str) -> str:
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else fmt % value


def markdown_table(rows: List[dict], mean: dict, skipped: List[dict], measures: dict, args, shapes: set) -> str:
    """The paper's layout: L1, AKD, MKR, AED, per video and mean."""
    lines = ['# Evaluation: %s against %s (%s)' % (args.generated, args.real, args.kind), '',
             '| video | frames | L1 | AKD | MKR | AED |', '|---|---|---|---|---|---|']
    for row in rows + [dict(mean, name='**mean** (%d videos)' % mean['videos'])]:
        lines.append('| %s | %d | %s | %s | %s | %s |' % (row['name'], row['frames'], _cell(row.get('l1'), '%.4f'),
                                                         _cell(row.get('akd'), '%.3f'), _cell(row.get('mkr'), '%.3f'),
                                                         _cell(row.get('aed'), '%.3f')))
    sizes = ', '.join('%dx%d' % (w, h) for h, w in sorted(shapes))
    lines += ['', 'L1: mean |generated - real| on [0, 1]. AKD: pixels of the frames as measured (%s). '
              'MKR: share of keypoints found in real frames and missing in generated ones. '
              'AED: identity-embedding distance. -: does not apply.' % sizes,
              '', 'Networks: AKD %s; AED %s.' % (measures.get('akd'), measures.get('aed') or 'none')]
    if skipped:
        lines += ['', 'Skipped:'] + ['- %s: %s' % (s['name'], s['reason']) for s in skipped]
    return '\n'.join(lines) + '\n'


def write_markdown(path: str, text: str) -> None:
    tmp = temp_path(path)
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def evaluate(args, paths: Dict[str, str], measurer) -> dict:
    pairs, skipped = pair_videos(args.real, args.generated)
    opened = []
    for name, real_path, generated_path in pairs:
        try:
            opened.append((name,) + open_pair(real_path, generated_path, args.max_frames))
        except (MediaError, ValueError, OSError) as e:
            skipped.append({'name': name, 'reason': one_line(e)})
    rows, shapes = [], set()
    bar = tqdm(total=sum(o[3] for o in opened), unit='frame', desc='evaluate', disable=args.no_progress)
    for name, real, generated, count in opened:
        bar.set_postfix_str(name)
        try:
            rows.append(compare(name, real, generated, count, measurer, args.batch_size, bar))
            shapes.add(measured_shape(real.info.height, real.info.width, measurer.min_side))
        except (MediaError, ValueError, OSError) as e:
            skipped.append({'name': name, 'reason': one_line(e)})
            tqdm.write('%s: skipped %s: %s' % (PROG, name, one_line(e)), file=sys.stderr)
    bar.close()
    skipped.sort(key=lambda s: s['name'])
    if not rows:
        raise NothingCompared('nothing could be compared between --real %s and --generated %s (%d skipped%s)'
                              % (args.real, args.generated, len(skipped),
                                 '; first: %s: %s' % (skipped[0]['name'], skipped[0]['reason']) if skipped else ''))
    measures = measurer.describe()
    extra = {'kind': args.kind, 'real': os.path.abspath(args.real), 'generated': os.path.abspath(args.generated),
             'skipped': skipped, 'measures': measures, 'max_frames': args.max_frames,
             'measured_shapes': sorted([list(s) for s in shapes])}
    written = metrics_lib.write_report(os.path.dirname(paths['metrics.json']), rows, extra=extra)
    mean = metrics_lib.summarize(rows)
    write_markdown(paths['metrics.md'], markdown_table(rows, mean, skipped, measures, args, shapes))
    print('%s: %d videos%s, L1 %.4f, AKD %s, MKR %s, AED %s -> %s'
          % (PROG, mean['videos'], ' (%d skipped)' % len(skipped) if skipped else '', mean['l1'],
             _cell(mean.get('akd'), '%.3f'), _cell(mean.get('mkr'), '%.3f'), _cell(mean.get('aed'), '%.3f'),
             written['json']))
    return {'videos': rows, 'mean': mean, 'skipped': skipped, 'paths': dict(written, md=paths['metrics.md'])}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()
    try:
        check_flags(args)
        measurer = make_measurer(args)  # before the output folder is made: a missing extra leaves nothing
        _, paths = check_outputs_of(args)
        evaluate(args, paths, measurer)
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        return interrupted(PROG, e, 'no report written')
    except (MeasuresUnavailable, FaceToolsError, OutputError, MediaError, ValueError, FileNotFoundError,
            PermissionError) as e:
        return report(PROG, e)
    return 0


if __name__ == '__main__':
    one_line_warnings(PROG)
    sys.exit(main())
