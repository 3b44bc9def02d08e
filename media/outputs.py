"""The one output-path rule, and this project's temporary files.

Every command that writes (demo.py, run.py's reconstruction/animate, crop_video.py, the web app,
live.py, export.py, prepare_dataset.py) calls `check_outputs` before any work starts:

  * an output is never one of the command's inputs: the same resolved path, the same file
    (hard links), or a folder holding an input;
  * an output that exists already is replaced only when this project wrote it (`is_ours`: a
    video or GIF carries MARK in its comment metadata, a folder of frames holds FRAMES_MARKER,
    a JSON report carries 'written_by'); anything else needs --overwrite;
  * even with --overwrite, a folder is replaced only if it holds nothing but numbered frames;
  * the output's folder must be creatable and writable.

Files are written to a hidden temporary name beside the output (`temp_path`: it carries the
writer's pid) and renamed when complete, so nothing is ever half written under the final name.
`clean_stale_temps(folder)` removes temporaries whose process is gone (SIGKILL, power loss).

No torch and no decoder here: this module is imported by the torch-free runtime too.
"""
import os
import re
import shutil
import subprocess
from typing import Dict, Iterable, Optional

MARK = 'First Order Motion Model (fomm)'  # the comment tag of every video/GIF this project writes
FRAMES_MARKER = '.fomm-frames'  # in every folder of frames this project writes
TEMP_PREFIX = '.fomm-tmp-'  # every temporary file or folder this project writes starts with this
FRAME_NAME = re.compile(r'^\d{6}\.png$')
VIDEO_SUFFIXES = ('.mp4', '.m4v', '.mov', '.mkv', '.avi')


class OutputError(ValueError):
    """An output path that would destroy something; the message names the flag and the path."""


# ------------------------------------------------------------------------------ ownership
def is_ours(path: str) -> bool:
    """Whether the existing file or folder at `path` was written by this project."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, FRAMES_MARKER))
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in VIDEO_SUFFIXES:
            return MARK in _container_comment(path)
        if ext == '.gif':
            from PIL import Image
            with Image.open(path) as im:
                comment = im.info.get('comment', b'')
            return MARK in (comment.decode('utf-8', 'replace') if isinstance(comment, bytes) else str(comment))
        if ext == '.json':
            import json
            with open(path) as f:
                return json.load(f).get('written_by') == MARK
        if ext in ('.onnx', '.csv', '.md'):
            # written beside a manifest.json / metrics.json of ours (evaluate.py's metrics.md)
            folder = os.path.dirname(os.path.abspath(path))
            return any(is_ours(os.path.join(folder, name)) for name in ('manifest.json', 'metrics.json')
                       if os.path.isfile(os.path.join(folder, name)))
    except (OSError, ValueError, AttributeError):
        return False
    return False


def _container_comment(path: str) -> str:
    """The global metadata lines of a video container as ffmpeg prints them."""
    import imageio_ffmpeg
    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-nostdin', '-i', path],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    head = res.stderr.decode('utf-8', 'replace').split('Stream #')[0]
    return ' '.join(line.strip() for line in head.splitlines() if 'comment' in line.lower())


def holds_only_frames(folder: str) -> bool:
    """A folder of numbered frames (and our marker) and nothing else: safe to replace."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    return all(e.is_file(follow_symlinks=False) and (FRAME_NAME.match(e.name) or e.name == FRAMES_MARKER)
               for e in entries)


# --------------------------------------------------------------------------------- the rule
def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(flag: str, path: str, inputs: Optional[Dict[str, Optional[str]]] = None,
                 overwrite: bool = False, folder_ok: bool = False) -> None:
    """The rule for one output (see the module doc). `flag` names it in messages ('--result_video');
    `inputs` maps flags to input paths (None entries are ignored); `folder_ok`: the output itself is a
    folder of frames (a '.png' result)."""
    if not path:
        raise OutputError('%s: no output path given' % flag)
    for in_flag, in_path in (inputs or {}).items():
        if not in_path:
            continue
        if _same(path, in_path):
            raise OutputError('%s: %s is also the input %s; choose another output name' % (flag, path, in_flag))
        if os.path.isdir(path) and _inside(in_path, path):
            raise OutputError('%s: %s is a folder holding the input %s (%s); choose another output name'
                              % (flag, path, in_flag, in_path))
    if os.path.isdir(path):
        if not folder_ok:
            raise OutputError('%s: %s is an existing folder; give a file name' % (flag, path))
        if not holds_only_frames(path):
            raise OutputError('%s: %s is an existing folder holding other files than numbered frames; it is left '
                              'untouched: choose another output name' % (flag, path))
        if not overwrite and not is_ours(path):
            raise OutputError('%s: %s is an existing folder of frames this tool did not write; add --overwrite to '
                              'replace it' % (flag, path))
    elif os.path.exists(path):
        if not os.path.isfile(path):
            raise OutputError('%s: %s exists and is not a regular file' % (flag, path))
        if not overwrite and not is_ours(path):
            raise OutputError('%s: %s exists and was not written by this tool; add --overwrite to replace it, or '
                              'choose another output name' % (flag, path))
    folder = os.path.dirname(os.path.abspath(path))
    _check_writable(flag, folder)
    clean_stale_temps(folder)  # left there by a run that was killed


def check_outputs(outputs: Dict[str, Optional[str]], inputs: Optional[Dict[str, Optional[str]]] = None,
                  overwrite: bool = False, folder_ok: Iterable[str] = ()) -> None:
    """`check_output` for each output, and no two outputs the same; call before any work starts."""
    given = {flag: path for flag, path in outputs.items() if path}
    flags = list(given)
    for i, a in enumerate(flags):
        for b in flags[i + 1:]:
            if _same(given[a], given[b]):
                raise OutputError('%s: %s is also %s' % (b, given[b], a))
    folder_ok = set(folder_ok)
    for flag, path in given.items():
        check_output(flag, path, inputs, overwrite, folder_ok=flag in folder_ok)


def _check_writable(flag: str, folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputError('%s: cannot create the folder %s (%s)' % (flag, folder, e.strerror or e)) from None
    probe = temp_path(os.path.join(folder, 'write-test'))
    try:  # a real probe: os.access says yes for root, and for /proc
        with open(probe, 'wb'):
            pass
    except OSError as e:
        raise OutputError('%s: cannot write into %s (%s)' % (flag, folder, e.strerror or e)) from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


# ------------------------------------------------------------------------------ temporaries
def temp_path(final: str, suffix: str = '') -> str:
    """A hidden temporary name beside `final` that carries this process's pid."""
    folder, name = os.path.split(os.path.abspath(final))
    return os.path.join(folder, '%s%s.%d%s' % (TEMP_PREFIX, name, os.getpid(), suffix))


_TEMP_PID = re.compile(r'^%s.*\.(\d+)(\.[A-Za-z0-9]+)?$' % re.escape(TEMP_PREFIX))


def clean_stale_temps(folder: str) -> list:
    """Remove this project's temporaries in `folder` whose writing process no longer runs; returns
    the removed paths. Those of running processes (another job writing there) are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PID.match(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def exit_on_sigterm(status: int = 143) -> None:
    """Make SIGTERM leave like Ctrl-C does: a SystemExit raised in the main thread unwinds every
    `with` block, so writers delete their temporaries instead of leaving them (the default
    SIGTERM action ends the process on the spot). Call it at the start of an entry point."""
    import signal

    def leave(signum, frame):
        raise SystemExit(status)
    try:
        signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread (e.g. inside a server's worker): nothing to do
        pass


def commit(tmp: str, final: str) -> None:
    """Move a finished temporary file or frames folder to its final name. A folder replaces an old
    folder of frames only (check_output made sure of that before the work began)."""
    if os.path.isdir(tmp) and os.path.isdir(final):
        if not holds_only_frames(final):
            raise OutputError('%s: the folder now holds other files than frames; the result is left at %s'
                              % (final, tmp))
        old = temp_path(final, '.old')
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
