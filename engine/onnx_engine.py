"""The torch-free engine: the driver (engine/driver.py) over the graphs export.py writes, run by
onnxruntime. Same API as the torch engine (engine.torch_engine.AnimationEngine), same frames
within float rounding:

    engine = OnnxEngine.from_export('export/vox-256')      # a folder written by export.py
    engine.set_source(photo)                               # (H, W, 3) uint8 or float in [0, 1]
    for frame in engine.animate(driving_frames):           # any iterable of frames, streamed
        writer.write(frame)                                # (H, W, 3) uint8

It imports numpy, onnxruntime and the project's torch-free foundation (images, config,
modules/keypoints), never torch: onnxruntime with its dependencies installs in 80 MB, torch in
818 MB (bench/bench_onnx.py --install_sizes). The export holds three graphs (file names and tensor
names in its manifest.json):

    kp_detector  frames (B, 3, H, W) -> kp_value (B, K, 2), kp_jacobian (B, K, 2, 2)
    source       source (1, 3, H, W) -> encoded (1, C', h, w), the generator's encoding
    generator    encoded, source, the source's and the driving keypoints (B of them)
                 -> prediction (B, 3, H, W) [, occlusion_map (B, 1, h', w')]

The source's keypoints come from the kp_detector graph (a source graph holding them too would
carry a second copy of the detector's weights: +78 MB for vox-256). Between the two per-frame
graphs, the keypoints are normalised in numpy by modules.keypoints.normalize_kp, the function
the torch engine runs. The graphs have a fixed frame size (the config's frame_shape): frames of
another size are refused with a message (fit them first, as demo.py does with images.fit).
"""
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from engine.driver import Driver, no_context
from media.images import float_to_uint8, to_float

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1
GRAPHS = ('kp_detector', 'source', 'generator')  # the roles of the graphs, in the manifest's 'graphs'
KP_NAMES = ('value', 'jacobian')  # keypoint dict keys, in the order of the graphs' keypoint tensors
KP = Dict[str, np.ndarray]


def graph_names(jacobian: bool = True, occlusion_map: bool = True) -> Dict[str, tuple]:
    """{role: (input names, output names)} of the graphs of a model with or without Jacobians and
    an occlusion map; export.py names the tensors so and the engine feeds them so."""
    kp = KP_NAMES if jacobian else KP_NAMES[:1]
    return {
        'kp_detector': (['frames'], ['kp_%s' % k for k in kp]),
        'source': (['source'], ['encoded']),
        'generator': (['encoded', 'source'] + ['kp_source_%s' % k for k in kp] + ['kp_driving_%s' % k for k in kp],
                      ['prediction'] + (['occlusion_map'] if occlusion_map else [])),
    }


class ExportError(ValueError):
    """An export folder that cannot be used (missing, corrupt or changed file, wrong frame size):
    the message names the file."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str) -> dict:
    """The manifest of an export folder, checked for the keys the engine needs; ExportError names
    the file."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise ExportError('%s: no such export folder (write one with export.py)' % folder)
    if not os.path.isfile(path):
        raise ExportError('%s: missing; %s is not a folder written by export.py' % (path, folder))
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError('%s: unreadable manifest (%s)' % (path, str(e).splitlines()[0])) from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT_VERSION:
        raise ExportError('%s: not a manifest of format %d (export again with this version of export.py)'
                          % (path, FORMAT_VERSION))
    graphs = manifest.get('graphs')
    shape = manifest.get('frame_shape')
    if not isinstance(graphs, dict) or any(not isinstance(graphs.get(g), dict) for g in GRAPHS):
        raise ExportError('%s: graphs: expected the entries %s' % (path, ', '.join(GRAPHS)))
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ExportError('%s: frame_shape: expected [height, width], got %r' % (path, shape))
    for role in GRAPHS:
        entry = graphs[role]
        if not all(isinstance(entry.get(k), t) for k, t in (('file', str), ('sha256', str), ('inputs', list),
                                                             ('outputs', list))):
            raise ExportError('%s: graphs.%s: expected file, sha256, inputs and outputs' % (path, role))
        if os.path.basename(entry['file']) != entry['file']:
            raise ExportError('%s: graphs.%s.file: %r is not a file name in the folder' % (path, role, entry['file']))
    return manifest


def check_files(folder: str, manifest: dict) -> None:
    """Every graph file present, with the checksum the manifest holds."""
    for role in GRAPHS:
        entry = manifest['graphs'][role]
        path = os.path.join(folder, entry['file'])
        if not os.path.isfile(path):
            raise ExportError('%s: missing (listed in %s as the %s graph)' % (path, MANIFEST, role))
        if sha256(path) != entry['sha256']:
            raise ExportError('%s: checksum mismatch with %s (the file changed after export: export again)'
                              % (path, MANIFEST))


def providers_for(device: Optional[str]) -> List:
    """onnxruntime execution providers for a device name: cpu, cuda, cuda:N or None (what is
    there). cuda:N selects GPU N (the provider's device_id option)."""
    available = ort.get_available_providers()
    if device is None:
        return [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]
    if device == 'cpu':
        return ['CPUExecutionProvider']
    kind, _, index = device.partition(':')
    if kind == 'cuda' and (index == '' or index.isdigit()):
        if 'CUDAExecutionProvider' not in available:
            raise ValueError('--device: %s asked for, but this onnxruntime has no CUDA provider (install '
                             'onnxruntime-gpu)' % device)
        cuda = ('CUDAExecutionProvider', {'device_id': int(index)}) if index else 'CUDAExecutionProvider'
        return [cuda, 'CPUExecutionProvider']
    raise ValueError("--device: '%s' is not a device (use cpu, cuda or cuda:N)" % device)


def provider_name(provider) -> str:
    """A provider entry's name (an entry is a name, or a (name, options) pair)."""
    return provider[0] if isinstance(provider, tuple) else provider


def open_session(path: str, entry: dict, providers: Sequence[str], threads: Optional[int]):
    """An onnxruntime session of one graph whose input and output names are the manifest's."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(path, options, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ExportError('%s: onnxruntime cannot load it (%s)'
                          % (path, lines[-1] if lines else type(e).__name__)) from None
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != entry['inputs'] or outputs != entry['outputs']:
        raise ExportError('%s: its inputs/outputs %s -> %s are not those of %s (%s -> %s)'
                          % (path, inputs, outputs, MANIFEST, entry['inputs'], entry['outputs']))
    return session


def stack_frames(frames: Sequence) -> np.ndarray:
    """A list of frames -> float32 (B, 3, H, W) in [0, 1]: uint8 frames divided by 255 (as the torch
    engine does), anything else through images.to_float."""
    if all(isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames):
        batch = np.stack(frames).astype(np.float32) / np.float32(255)  # (B, H, W, 3)
    else:
        batch = np.stack([to_float(f, 'driving frame') for f in frames])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class OnnxBackend:
    """The engine's primitives on onnxruntime (engine.driver.Backend): the three graphs of an
    export, run by onnxruntime sessions, at the export's fixed frame size."""
    fixed_batch = False

    def __init__(self, folder: str, manifest: dict, sessions: dict, device: str = 'cpu'):
        self.folder = folder
        self.manifest = manifest
        self.sessions = sessions
        self.device = device
        self.precision = manifest.get('precision', 'fp32')
        self.names = {role: manifest['graphs'][role] for role in GRAPHS}  # inputs/outputs per graph
        self.frame_shape = tuple(manifest['frame_shape'])

    def context(self):
        return no_context()

    def to_batch(self, frames, what: str) -> np.ndarray:
        batch = stack_frames(frames)
        if tuple(batch.shape[2:]) != self.frame_shape:
            raise ValueError('%s: %dx%d, but the export in %s takes %dx%d frames (fit it first: images.fit)'
                             % (what, batch.shape[3], batch.shape[2], self.folder, self.frame_shape[1],
                                self.frame_shape[0]))
        return batch

    def run(self, role: str, feeds: Dict[str, np.ndarray], outputs: Optional[List[str]] = None) -> List[np.ndarray]:
        names = self.names[role]
        return self.sessions[role].run(outputs, {name: feeds[name] for name in names['inputs']})

    def detect(self, batch: np.ndarray) -> KP:
        """kp_detector graph: (B, 3, H, W) -> {'value': (B, K, 2)[, 'jacobian': (B, K, 2, 2)]}."""
        return dict(zip(KP_NAMES, self.run('kp_detector', {'frames': batch})))

    def encode(self, source: np.ndarray) -> np.ndarray:
        (encoded,) = self.run('source', {'source': source})
        return encoded

    def generate(self, source, encoded, kp_source: KP, kp_driving: KP, extras: bool) -> Dict[str, np.ndarray]:
        """The generator graph on the cached source (batch 1) for B driving keypoint sets."""
        feeds = {'encoded': encoded, 'source': source}
        feeds.update(('kp_source_%s' % k, np.ascontiguousarray(v[:1])) for k, v in kp_source.items())
        feeds.update(('kp_driving_%s' % k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in kp_driving.items())
        outputs = self.names['generator']['outputs'] if extras else ['prediction']
        return dict(zip(outputs, self.run('generator', feeds, outputs)))

    @staticmethod
    def all_finite(prediction: np.ndarray) -> bool:
        return bool(np.isfinite(prediction).all())

    @staticmethod
    def to_uint8(prediction: np.ndarray) -> np.ndarray:
        return float_to_uint8(prediction.transpose(0, 2, 3, 1))

    @staticmethod
    def to_float(prediction: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(prediction.transpose(0, 2, 3, 1))


class OnnxEngine(Driver):
    """The driver over an OnnxBackend; `stream` yields numpy batches. Build it with
    `from_export(folder)`, which checks the manifest and the files first."""

    def __init__(self, folder: str, manifest: dict, sessions: dict, batch_size: int = 4, device: str = 'cpu'):
        config = None
        if isinstance(manifest.get('config'), dict):
            from core.config import config_from_dict
            config = config_from_dict(manifest['config'], os.path.join(folder, MANIFEST))
        super().__init__(OnnxBackend(folder, manifest, sessions, device=device), batch_size=batch_size, config=config)

    @property
    def folder(self) -> str:
        return self.backend.folder

    @property
    def manifest(self) -> dict:
        return self.backend.manifest

    @classmethod
    def from_export(cls, folder: str, providers: Optional[Sequence[str]] = None, batch_size: int = 4,
                    frame_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None,
                    device: Optional[str] = None) -> 'OnnxEngine':
        """The engine of an export folder. The manifest, each file's presence and checksum, and
        (when given) the expected frame_shape (H, W) are checked first: ExportError names the file.
        providers: onnxruntime execution providers (default: from `device`: cpu, cuda, cuda:N or
        None for what is there); threads: onnxruntime's intra-op threads (default: one per core)."""
        manifest = read_manifest(folder)
        if frame_shape is not None and list(frame_shape)[:2] != manifest['frame_shape']:
            raise ExportError('%s: frame_shape %s, but %s expected (export the model for that size)'
                              % (os.path.join(folder, MANIFEST), manifest['frame_shape'], list(frame_shape)[:2]))
        check_files(folder, manifest)
        providers = list(providers) if providers else providers_for(device)
        sessions = {role: open_session(os.path.join(folder, manifest['graphs'][role]['file']), manifest['graphs'][role],
                                       providers, threads) for role in GRAPHS}
        graph_shape = list(sessions['kp_detector'].get_inputs()[0].shape[2:])
        if graph_shape != manifest['frame_shape']:
            raise ExportError('%s: takes %s frames, but %s says frame_shape %s (export again)'
                              % (os.path.join(folder, manifest['graphs']['kp_detector']['file']), graph_shape,
                                 MANIFEST, manifest['frame_shape']))
        used = sessions['generator'].get_providers()[0]
        wanted = provider_name(providers[0])
        if wanted == 'CUDAExecutionProvider' and used != wanted:
            raise ValueError('--device: %s asked for, but onnxruntime could not start its CUDA provider (it fell '
                             'back to %s: check the CUDA and cuDNN libraries onnxruntime-gpu needs)'
                             % (device or 'cuda', used))
        on_gpu = used == 'CUDAExecutionProvider'
        return cls(folder, manifest, sessions, batch_size=batch_size, device=device if on_gpu and device else
                   ('cuda' if on_gpu else 'cpu'))
