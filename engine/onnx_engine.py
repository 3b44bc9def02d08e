"""The torch-free inference engine: the networks exported by export.py, run by onnxruntime.

Same API as the torch engine (inference.AnimationEngine), same frames within float rounding:

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
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from engine.api import animate_outputs
from media.images import float_to_uint8, to_float
from modules.keypoints import normalize_kp

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


def providers_for(device: Optional[str]) -> List[str]:
    """onnxruntime execution providers for a device name: cpu, cuda[:N] or None (what is there)."""
    available = ort.get_available_providers()
    if device is None:
        return [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]
    if device == 'cpu':
        return ['CPUExecutionProvider']
    if device.split(':')[0] == 'cuda':
        if 'CUDAExecutionProvider' not in available:
            raise ValueError('--device: %s asked for, but this onnxruntime has no CUDA provider (install '
                             'onnxruntime-gpu)' % device)
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    raise ValueError("--device: '%s' is not a device (use cpu, cuda or cuda:N)" % device)


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


def _take(kp: KP, index: slice) -> KP:
    return {k: v[index] for k, v in kp.items()}


class OnnxEngine:
    """The three graphs of an export, run by onnxruntime sessions; the torch engine's API.

    Build it with `from_export(folder)`, which checks the manifest and the files first."""

    def __init__(self, folder: str, manifest: dict, sessions: dict, batch_size: int = 4, device: str = 'cpu'):
        if int(batch_size) < 1:
            raise ValueError('--batch_size: must be >= 1, got %r' % batch_size)
        self.folder = folder
        self.manifest = manifest
        self.sessions = sessions
        self.batch_size = int(batch_size)
        self.device = device
        self.precision = manifest.get('precision', 'fp32')
        self.names = {role: manifest['graphs'][role] for role in GRAPHS}  # inputs/outputs per graph
        self.source: Optional[np.ndarray] = None  # (1, 3, H, W)
        self.kp_source: Optional[KP] = None  # (1, K, 2), (1, K, 2, 2)
        self.encoded: Optional[np.ndarray] = None  # (1, C', h, w)
        self.kp_reference: Optional[KP] = None  # the driving frame relative motion starts from (live use)
        self.config = None
        if isinstance(manifest.get('config'), dict):
            from core.config import config_from_dict
            self.config = config_from_dict(manifest['config'], os.path.join(folder, MANIFEST))

    @classmethod
    def from_export(cls, folder: str, providers: Optional[Sequence[str]] = None, batch_size: int = 4,
                    frame_shape: Optional[Sequence[int]] = None, threads: Optional[int] = None,
                    device: Optional[str] = None) -> 'OnnxEngine':
        """The engine of an export folder. The manifest, each file's presence and checksum, and
        (when given) the expected frame_shape (H, W) are checked first: ExportError names the file.
        providers: onnxruntime execution providers (default: from `device`, cpu/cuda/None);
        threads: onnxruntime's intra-op threads (default: its own choice, one per core)."""
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
        on_gpu = sessions['generator'].get_providers()[0] == 'CUDAExecutionProvider'
        return cls(folder, manifest, sessions, batch_size=batch_size, device='cuda' if on_gpu else 'cpu')

    @property
    def frame_shape(self) -> tuple:
        """(H, W): the only frame size the exported graphs take."""
        return tuple(self.manifest['frame_shape'])

    def _check_size(self, batch: np.ndarray, what: str) -> None:
        if tuple(batch.shape[2:]) != self.frame_shape:
            raise ValueError('%s: %dx%d, but the export in %s takes %dx%d frames (fit it first: images.fit)'
                             % (what, batch.shape[3], batch.shape[2], self.folder, self.frame_shape[1],
                                self.frame_shape[0]))

    def _run(self, role: str, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        names = self.names[role]
        return self.sessions[role].run(None, {name: feeds[name] for name in names['inputs']})

    def _detect(self, frames: np.ndarray) -> KP:
        """kp_detector graph: (B, 3, H, W) -> {'value': (B, K, 2)[, 'jacobian': (B, K, 2, 2)]}."""
        return dict(zip(KP_NAMES, self._run('kp_detector', {'frames': frames})))

    # ----------------------------------------------------------------------------- source
    def to_array(self, image, what: str = 'image') -> np.ndarray:
        """One image -> float32 (1, 3, H, W), of the export's frame size."""
        batch = stack_frames([image])
        self._check_size(batch, what)
        return batch

    def set_source(self, image) -> None:
        """Compute the source's keypoints and the generator's encoding of it once.

        image: (H, W, C) numpy (uint8, uint16 or float in [0, 1]; gray and RGBA accepted) of the
        export's frame size."""
        source = self.to_array(image, 'source image')
        self.kp_source = self._detect(source)
        (self.encoded,) = self._run('source', {'source': source})
        self.source = source

    def keypoints(self, image) -> KP:
        """Keypoints of one image: {'value': (1, K, 2), 'jacobian': (1, K, 2, 2)}."""
        return self._detect(self.to_array(image))

    def set_reference(self, frame) -> None:
        """The driving frame that relative motion is measured from in `animate_frame` (None: the
        next frame given becomes the reference)."""
        self.kp_reference = self.keypoints(frame) if frame is not None else None

    # ---------------------------------------------------------------------------- driving
    def _batches(self, frames: Iterable) -> Iterator[tuple]:
        chunk = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == self.batch_size:
                yield chunk, stack_frames(chunk)
                chunk = []
        if chunk:
            yield chunk, stack_frames(chunk)

    def _generate(self, kp_norm: KP, outputs: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
        """The generator graph on the cached source: the keypoints (B of them) -> its outputs."""
        feeds = {'encoded': self.encoded, 'source': self.source}
        feeds.update(('kp_source_%s' % k, v) for k, v in self.kp_source.items())
        feeds.update(('kp_driving_%s' % k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in kp_norm.items())
        names = self.names['generator']
        outputs = outputs or names['outputs']
        values = self.sessions['generator'].run(outputs, {name: feeds[name] for name in names['inputs']})
        return dict(zip(outputs, values))

    def _normalize(self, kp_driving: KP, kp_initial: KP, relative: bool, adapt_scale: bool,
                   relative_jacobian: bool) -> KP:
        return normalize_kp(kp_source=self.kp_source, kp_driving=kp_driving, kp_driving_initial=kp_initial,
                            adapt_movement_scale=adapt_scale, use_relative_movement=relative,
                            use_relative_jacobian=relative and relative_jacobian)

    def stream(self, driving_frames: Iterable, relative: bool = True, adapt_scale: bool = False,
               relative_jacobian: bool = True, initial_frame=None, extras: bool = False) -> Iterator[Dict[str, object]]:
        """Per batch of driving frames: {'prediction': float32 (B, 3, H, W), 'frames': the driving
        frames as given (a list), 'kp_driving', 'kp_norm', 'kp_source', 'driving': (B, 3, H, W)}
        (+ 'occlusion_map' (B, 1, h, w) with `extras`, when the export has it). Arguments as the
        torch engine's stream (inference.AnimationEngine.stream)."""
        if self.source is None:
            raise RuntimeError('OnnxEngine: call set_source(image) before animating')
        kp_initial = self.keypoints(initial_frame) if initial_frame is not None else None
        wanted = None if extras else ['prediction']
        for frames, driving in self._batches(driving_frames):
            self._check_size(driving, 'driving frame')
            kp_driving = self._detect(driving)
            if kp_initial is None:
                kp_initial = _take(kp_driving, slice(0, 1))  # computed once, with the first batch
            kp_norm = self._normalize(kp_driving, kp_initial, relative, adapt_scale, relative_jacobian)
            result = self._generate(kp_norm, wanted)
            result.update(kp_driving=kp_driving, kp_norm=kp_norm, driving=driving, frames=frames,
                          kp_source={k: np.broadcast_to(v, (len(frames),) + v.shape[1:])
                                     for k, v in self.kp_source.items()})
            yield result

    def animate(self, driving_frames: Iterable, relative: bool = True, adapt_scale: bool = False,
                relative_jacobian: bool = True, initial_frame=None, output: str = 'uint8',
                with_inputs: bool = False) -> Iterator:
        """Animate the source by `driving_frames` (an iterable, consumed lazily).

        output: 'uint8' -> (H, W, 3) uint8 frames; 'float' -> (H, W, 3) float32 frames in [0, 1];
        'batch' -> float32 (B, 3, H, W) arrays, one per batch. with_inputs: yield (driving frame
        as given, output frame) pairs instead (not with 'batch')."""
        results = self.stream(driving_frames, relative=relative, adapt_scale=adapt_scale,
                              relative_jacobian=relative_jacobian, initial_frame=initial_frame)
        return animate_outputs(results, output, with_inputs, lambda batch: float_to_uint8(batch.transpose(0, 2, 3, 1)),
                               lambda batch: np.ascontiguousarray(batch.transpose(0, 2, 3, 1)))

    def animate_frame(self, frame, relative: bool = True, adapt_scale: bool = False,
                      relative_jacobian: bool = True) -> np.ndarray:
        """One driving frame -> one uint8 (H, W, 3) frame, at batch 1, for live use: relative
        motion is measured from the reference frame (`set_reference`; the first frame given when
        none is set), whose keypoints are kept between calls."""
        if self.source is None:
            raise RuntimeError('OnnxEngine: call set_source(image) before animating')
        kp_driving = self.keypoints(frame)
        if self.kp_reference is None:
            self.kp_reference = kp_driving
        kp_norm = self._normalize(kp_driving, self.kp_reference, relative, adapt_scale, relative_jacobian)
        prediction = self._generate(kp_norm, ['prediction'])['prediction']
        return float_to_uint8(prediction.transpose(0, 2, 3, 1))[0]
