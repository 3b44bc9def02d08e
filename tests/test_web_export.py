"""The export the in-browser page ships (web/models/shapes-64, written by export.py) is the embedded
default's: its checksums hold, it names the embedded checkpoint and config, and onnxruntime running
it gives what the torch engine gives with checkpoints/shapes-64.pth.tar (a retrained default with a
stale export fails here: Makefile, target web, says how to write it again)."""
import json

import numpy as np

from conftest import ROOT, require

EXPORT = ROOT / 'web' / 'models' / 'shapes-64'
CHECKPOINT = ROOT / 'checkpoints' / 'shapes-64.pth.tar'
CONFIG = ROOT / 'config' / 'shapes-64.yaml'


def test_shipped_export_is_the_embedded_checkpoint(one_thread):
    require('onnxruntime', 'needs onnxruntime: pip install -r requirements-onnx.txt')
    from core.config import load_config
    from engine.onnx_engine import OnnxEngine
    from engine.torch_engine import AnimationEngine
    from media.images import read_image
    from media.video_io import open_video

    manifest = json.loads((EXPORT / 'manifest.json').read_text())
    assert manifest['checkpoint'] == CHECKPOINT.name and manifest['precision'] == 'fp32'
    expected = load_config(str(CONFIG)).model_params.common_params
    assert manifest['num_kp'] == expected.num_kp and manifest['frame_shape'] == [64, 64]
    onnx = OnnxEngine.from_export(str(EXPORT), threads=1)  # checks every file against the manifest's sha256
    torch_engine = AnimationEngine.from_checkpoint(str(CONFIG), str(CHECKPOINT), device='cpu', precision='fp32')
    source = read_image(ROOT / 'assets' / 'shapes-source.png')
    frames = list(open_video(ROOT / 'assets' / 'shapes-driving.mp4').read(range(0, 64, 8)))
    outputs = []
    for engine in (onnx, torch_engine):
        engine.set_source(source)
        outputs.append(np.stack(list(engine.animate(frames, relative=True, output='float'))))
    # export.py refuses to write graphs further than 1e-4 from torch (fp32): the same bar here
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4, np.abs(outputs[0] - outputs[1]).max()
