"""The one table of file formats: for each suffix, how it is read, how it is written, and how this
project marks the outputs it writes (so the output-path rule can tell them from the user's files).

    fmt = FORMATS['.mp4']          # Format(suffix, reads_as, writes_as, muxer, marked_by)
    output_format(path, flag)      # the Format of an output path, or ValueError listing the choices

The readers (media/video_io.py, media/images.py), the writer (video_io.VideoWriter), the output
rule (media/outputs.is_ours) and the command lines' messages all read this table. A new output
format is one entry here plus its writer in VideoWriter; a new container with an ffmpeg muxer is
one entry only. Imports nothing of the project (the torch-free runtime uses it too).
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple


class Format(NamedTuple):
    suffix: str
    reads_as: Optional[str]  # 'video' (a container, PyAV), 'gif', 'image' (a still, or a strip of frames); None
    writes_as: Optional[str]  # 'video' (ffmpeg into `muxer`), 'gif' (Pillow), 'frames' (a folder of PNGs), 'report'
    muxer: Optional[str]  # ffmpeg's muxer for a 'video' output (a temporary name must not decide it)
    marked_by: Optional[str]  # how our outputs are known: 'comment' (the container's comment metadata),
    # 'gif-comment', 'frames-marker' (a marker file in the folder), 'json' (a 'written_by' field),
    # 'report-beside' (written beside a report or manifest of ours); None: never an output


TABLE: Tuple[Format, ...] = (
    Format('.mp4', 'video', 'video', 'mp4', 'comment'),
    Format('.m4v', 'video', 'video', 'mp4', 'comment'),
    Format('.mov', 'video', 'video', 'mov', 'comment'),
    Format('.mkv', 'video', 'video', 'matroska', 'comment'),
    Format('.avi', 'video', 'video', 'avi', 'comment'),
    Format('.webm', 'video', None, None, None),  # read only: libx264 does not go into WebM
    Format('.gif', 'gif', 'gif', None, 'gif-comment'),
    Format('.png', 'image', 'frames', None, 'frames-marker'),  # as an output: a folder of numbered PNGs
    Format('.jpg', 'image', None, None, None),
    Format('.jpeg', 'image', None, None, None),
    Format('.bmp', 'image', None, None, None),
    Format('.tif', 'image', None, None, None),
    Format('.tiff', 'image', None, None, None),
    Format('.webp', 'image', None, None, None),
    Format('.json', None, 'report', None, 'json'),  # metrics.json, manifest.json
    Format('.csv', None, 'report', None, 'report-beside'),  # metrics.csv beside metrics.json
    Format('.onnx', None, 'report', None, 'report-beside'),  # graphs beside manifest.json
    Format('.md', None, 'report', None, 'report-beside'),  # evaluate.py's metrics.md beside metrics.json
)
FORMATS: Dict[str, Format] = {f.suffix: f for f in TABLE}

CONTAINERS = tuple(f.suffix for f in TABLE if f.reads_as == 'video')  # decoded with PyAV
VIDEO_INPUTS = CONTAINERS + tuple(f.suffix for f in TABLE if f.reads_as == 'gif')
IMAGE_INPUTS = tuple(f.suffix for f in TABLE if f.reads_as == 'image')
VIDEO_OUTPUTS = tuple(f.suffix for f in TABLE if f.writes_as in ('video', 'gif', 'frames'))
MUXERS = {f.suffix: f.muxer for f in TABLE if f.writes_as == 'video'}
DEFAULT_VIDEO = '.mp4'  # what a command writes when the user names no format
REPORTS_BESIDE = ('manifest.json', 'metrics.json')  # the reports a 'report-beside' file belongs to


def suffix_of(path: str) -> str:
    """'result.MP4' -> '.mp4'."""
    name = str(path).replace('\\', '/').rsplit('/', 1)[-1]
    return ('.' + name.rsplit('.', 1)[1].lower()) if '.' in name.lstrip('.') else ''


def listing(suffixes: Sequence[str]) -> str:
    """'.mp4, .m4v, ... or .png' for a message."""
    suffixes = list(suffixes)
    return suffixes[0] if len(suffixes) == 1 else '%s or %s' % (', '.join(suffixes[:-1]), suffixes[-1])


def output_format(path: str, flag: str, allowed: Sequence[str] = VIDEO_OUTPUTS) -> Format:
    """The Format an output path asks for; ValueError naming the flag, the path and the choices."""
    fmt = FORMATS.get(suffix_of(path))
    if fmt is None or fmt.suffix not in allowed:
        raise ValueError('%s: %s: unknown format %r (use %s%s)'
                         % (flag, path, suffix_of(path), listing(allowed),
                            '; .png: a folder of frames' if '.png' in allowed else ''))
    return fmt
