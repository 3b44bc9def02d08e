"""The one table of formats (media/formats.py): every output format in it is written, read back and
recognised as ours by the output rule, and no other file keeps its own list of suffixes."""
import re

import numpy as np
import pytest

from conftest import ROOT
from media.formats import FORMATS, VIDEO_OUTPUTS, output_format
from media.outputs import is_ours
from media.video_io import VideoWriter, open_video


@pytest.mark.parametrize('suffix', VIDEO_OUTPUTS)
def test_every_output_format_is_written_read_back_and_known_as_ours(tmp_path, suffix):
    frames = (np.random.default_rng(0).random((3, 32, 48, 3)) * 255).astype(np.uint8)
    path = tmp_path / ('out' + suffix)
    with VideoWriter(path, fps=10) as writer:
        writer.write(frames)
    assert is_ours(str(path)), suffix
    assert len(list(open_video(path))) == 3
    assert (path.is_dir()) == (FORMATS[suffix].writes_as == 'frames')


def test_unknown_output_format_names_flag_and_choices():
    with pytest.raises(ValueError) as err:
        output_format('clip.webm', '--result_video')  # readable, but not written by this project
    assert str(err.value).startswith("--result_video: clip.webm: unknown format '.webm' (use .mp4, ")
    assert all(s in str(err.value) for s in VIDEO_OUTPUTS)


def test_no_other_file_lists_suffixes():
    """A suffix list written out elsewhere would drift from the table: look for two or more quoted
    video suffixes ('.mkv', ...) in one line of any project file outside media/formats.py."""
    suffix = r"['\"]\.(mp4|m4v|mov|mkv|avi|webm|gif)['\"]"
    offenders = []
    for path in sorted(ROOT.glob('**/*.py')):
        rel = path.relative_to(ROOT).as_posix()
        if rel == 'media/formats.py' or rel.startswith(('tests/', 'bench/')) or '/.' in '/' + rel:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if len(set(re.findall(suffix, line))) >= 2 and not line.lstrip().startswith('#'):
                offenders.append('%s:%d: %s' % (rel, number, line.strip()))
    assert not offenders, '\n'.join(offenders)
