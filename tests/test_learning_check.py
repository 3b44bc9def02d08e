"""The embedded default model learned motion, judged by bench/learning_check.py's evaluation on
synthetic videos it never saw (drawn with another seed than its training data)."""
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from conftest import ROOT
from media.synthetic import write_dataset
from media.video_io import iter_video_frames

sys.path.insert(0, str(ROOT / 'bench'))
import learning_check  # noqa: E402


@pytest.fixture(scope='module')
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp('held-out')
    write_dataset(str(root), size=64, num_train=0, num_test=4, frames=32, seed=123, progress=False)
    return root / 'test'


def test_embedded_model_beats_copying_the_source_on_held_out_videos(held_out, tmp_path, one_thread):
    strip = tmp_path / 'strip.png'
    per_video, mean = learning_check.evaluate(str(ROOT / 'config' / 'shapes-64.yaml'),
                                              str(ROOT / 'checkpoints' / 'shapes-64.pth.tar'),
                                              str(held_out), strip=str(strip), columns=5)
    assert len(per_video) == 4
    # the copy baseline is what it says: every frame against the first one
    video = np.stack(list(iter_video_frames(held_out / 'shapes0000.mp4'))).astype(np.float64) / 255
    assert per_video['shapes0000.mp4']['copy'] == pytest.approx(np.abs(video - video[:1]).mean(), rel=1e-5)
    # motion carried by the keypoints makes the reconstruction better than no motion and than copying;
    # measured: driven 0.0333, copy 0.0525, no motion 0.0591 (the previous model: driven 0.0443)
    assert mean['driven'] <= 0.036, mean  # the bar the retrained model was set (issue 15), 8% above the figure
    assert mean['driven'] < 0.7 * mean['copy'] and mean['driven'] < 0.65 * mean['no_motion'], mean
    image = imageio.imread(strip)
    assert image.shape == (4 * 2 * 64, 5 * 64, 3)
    # first column: the source frame above its own reconstruction, which resembles it
    source, rebuilt = image[:64, :64].astype(float), image[64:128, :64].astype(float)
    assert np.abs(source - rebuilt).mean() / 255 < 0.1
