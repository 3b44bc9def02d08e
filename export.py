"""Export a model to ONNX, for the torch-free runtime (engine/onnx_engine.py) or any ONNX runtime.

    python export.py --config config/vox-256.yaml --checkpoint vox-cpk.pth.tar --out export/vox-256
    python demo.py --backend onnx --onnx_dir export/vox-256 --source_image photo.jpg --driving_video drive.mp4

Writes into --out three graphs and a manifest (tensor names and shapes: engine/onnx_engine.py):
  kp_detector.onnx  frames -> keypoints and Jacobians          (dynamic batch)
  source.onnx       source image -> the generator's encoding   (computed once per source)
  generator.onnx    encoding, source, source and driving keypoints -> prediction [+ occlusion map]
                    (dynamic batch of driving keypoints; the source side is batch 1)
  manifest.json     config, frame size, opset, precision, tensor names, sha256 of each file
The networks are exported as the torch engine runs them (modules.fused: BatchNorm folded into
the convolutions, each upsampling convolution as four 2x2 ones: 2.25x fewer multiply-adds there,
for 16/9 of its weights): fewer nodes, faster, the same function.
The frame size is fixed (the config's frame_shape). After writing, each graph runs in onnxruntime
on random inputs and its largest difference to the torch networks is printed; beyond --tolerance
nothing is written. A checkpoint written by this project carries its config (--config optional).

Outputs never replace an input, nor files this tool did not write (unless --overwrite).
Needs: pip install -r requirements-onnx.txt (onnx, onnxruntime).
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from core.cli import HelpFormatter, one_line_warnings
from engine.onnx_engine import FORMAT_VERSION, GRAPHS, KP_NAMES, MANIFEST, graph_names, sha256
from media.outputs import MARK, OutputError, check_outputs, clean_stale_temps, commit, temp_path
from modules.fused import fuse_for_inference

PROG = 'export.py'
EXPORTERS = ('torchscript', 'dynamo')
MIN_OPSET = {'torchscript': 16, 'dynamo': 18}  # GridSample is opset 16; the dynamo exporter writes >= 18
DEFAULT_OPSET = 17
TOLERANCE = {'fp32': 1e-4, 'fp16': 5e-2}
FILES = {role: role + '.onnx' for role in GRAPHS}


class ExportFailed(RuntimeError):
    """A graph that does not export or does not match torch: one line naming the graph."""


# ------------------------------------------------------------------------------ the graphs
class KeypointGraph(nn.Module):
    """frames (B, 3, H, W) -> kp_value (B, K, 2)[, kp_jacobian (B, K, 2, 2)]."""

    def __init__(self, kp_detector: nn.Module):
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, frames):
        kp = self.kp_detector(frames)
        return tuple(kp[k] for k in KP_NAMES if k in kp)


class SourceGraph(nn.Module):
    """source (B, 3, H, W) -> the generator's encoding (B, C', h, w)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, source):
        return self.generator.encode(source)


class GeneratorGraph(nn.Module):
    """(encoded (1, C', h, w), source (1, 3, H, W), source keypoints (1, K, ...), driving
    keypoints (B, K, ...)) -> prediction (B, 3, H, W)[, occlusion_map (B, 1, h', w')]: the
    generator's warp (Eq. 8) and decoder, as the torch engine runs them on a cached source."""

    def __init__(self, generator: nn.Module, jacobian: bool, occlusion_map: bool):
        super().__init__()
        self.generator = generator
        self.kp_names = KP_NAMES if jacobian else KP_NAMES[:1]
        self.occlusion_map = occlusion_map

    def forward(self, encoded, source, *keypoints):
        n = len(self.kp_names)
        kp_driving = dict(zip(self.kp_names, keypoints[n:]))
        batch = kp_driving['value'].shape[0]
        kp_source = {k: v.expand(batch, *v.shape[1:]) for k, v in zip(self.kp_names, keypoints[:n])}
        # extras only for the occlusion map; the exporter drops the other extras, which nothing uses
        features, result = self.generator.warp(source.expand(batch, -1, -1, -1), encoded.expand(batch, -1, -1, -1),
                                               kp_driving=kp_driving, kp_source=kp_source, extras=self.occlusion_map)
        prediction = self.generator.decode(features)
        return (prediction, result['occlusion_map']) if self.occlusion_map else prediction


def model_facts(generator: nn.Module, kp_detector: nn.Module) -> tuple:
    """(has Jacobians, has an occlusion map)."""
    jacobian = getattr(kp_detector, 'jacobian', None) is not None
    dense = getattr(generator, 'dense_motion_network', None)
    return jacobian, dense is not None and dense.occlusion is not None


def build_graphs(generator: nn.Module, kp_detector: nn.Module, fuse: bool = True) -> dict:
    """{role: module} of the three graphs, over fused copies of the networks
    (modules.fused.fuse_for_inference) or, without `fuse`, the networks as they are."""
    jacobian, occlusion = model_facts(generator, kp_detector)
    if fuse:
        generator, kp_detector = fuse_for_inference(generator.eval()), fuse_for_inference(kp_detector.eval())
    return {'kp_detector': KeypointGraph(kp_detector).eval(), 'source': SourceGraph(generator).eval(),
            'generator': GeneratorGraph(generator, jacobian, occlusion).eval()}


@torch.no_grad()
def example_inputs(graphs: dict, frame_shape: Sequence[int], num_kp: int, jacobian: bool, batch: int,
                   seed: int = 0) -> dict:
    """{role: tuple of tensors}: random frames and source, the source's encoding by the `source`
    graph, random keypoints (values in [-0.8, 0.8], Jacobians near the identity) for `batch`
    driving frames. Random keypoints rather than detected ones: at 256x256 the detector costs
    seconds a frame, and the generator graph takes any keypoints."""
    h, w = frame_shape
    gen = torch.Generator().manual_seed(seed)

    def keypoints(n):
        kp = (torch.rand(n, num_kp, 2, generator=gen) * 1.6 - 0.8,)
        if jacobian:
            kp += (torch.eye(2).expand(n, num_kp, 2, 2) + 0.2 * torch.randn(n, num_kp, 2, 2, generator=gen),)
        return kp

    source = torch.rand(1, 3, h, w, generator=gen)
    frames = torch.rand(batch, 3, h, w, generator=gen)
    encoded = graphs['source'](source)
    return {'kp_detector': (frames,), 'source': (source,),
            'generator': (encoded, source) + keypoints(1) + keypoints(batch)}


# ------------------------------------------------------------------------------ exporting
@contextlib.contextmanager
def quiet_stdout():
    """Silence file descriptor 1 for a while: torch 2.13's TorchScript exporter leaves its C++ log
    switched on (utils.setup_onnx_logging tests the function object, not its result) and dumps the
    whole graph there when an operator fails; the failure is reported in one line instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_graph(module: nn.Module, args: tuple, path: str, names: tuple, dynamic: Sequence[str], opset: int,
                 exporter: str = 'torchscript', what: str = 'graph') -> None:
    """torch.onnx.export of one graph with axis 0 of the `dynamic` tensors named 'batch'.

    The TorchScript exporter is the default: on torch 2.13 export.py ran 3x faster with it on the
    embedded model (9 s vs 27 s) and it writes the opset asked for (the dynamo one writes >= 18)."""
    inputs, outputs = names
    try:
        with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
            warnings.simplefilter('ignore')  # tracer and deprecation chatter; failures raise
            if exporter == 'torchscript':
                torch.onnx.export(module, args, path, input_names=inputs, output_names=outputs, opset_version=opset,
                                  dynamo=False, dynamic_axes={n: {0: 'batch'} for n in dynamic},
                                  do_constant_folding=True)
            else:
                logging.getLogger('torch.onnx').setLevel(logging.ERROR)  # 'torchvision is not installed' x4
                batch = torch.export.Dim('batch', min=1, max=4096)
                shapes = [{0: batch} if n in dynamic else None for n in inputs]
                if isinstance(module, GeneratorGraph):  # forward(encoded, source, *keypoints)
                    shapes = {'encoded': shapes[0], 'source': shapes[1], 'keypoints': tuple(shapes[2:])}
                else:
                    shapes = tuple(shapes)
                program = torch.onnx.export(module, args, input_names=inputs, output_names=outputs, opset_version=opset,
                                            dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)
                program.save(path, external_data=False)
    except Exception as e:  # the exporters raise many types (UnsupportedOperatorError, OnnxExporterError, ...)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ExportFailed('the %s graph does not export to ONNX opset %d: %s'
                           % (what, opset, lines[0] if lines else type(e).__name__)) from None


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def declare_output_shapes(path: str, shapes: Dict[str, tuple], dynamic: Sequence[str]) -> None:
    """Write the outputs' fixed sizes into the graph's declared shapes (the exporter leaves
    names like 'Castprediction_dim_2' where an upsampling reshape hides them), axis 0 'batch'
    for the dynamic ones: what a C++ or mobile user reads from the graph."""
    import onnx
    model = onnx.load(path)
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for axis, size in enumerate(shapes[output.name]):
            dims[axis].Clear()
            if axis == 0 and output.name in dynamic:
                dims[axis].dim_param = 'batch'
            else:
                dims[axis].dim_value = size
    onnx.save(model, path)


def convert_to_fp16(path: str) -> None:
    """Rewrite a float32 graph to compute in float16 with float32 inputs and outputs: float
    initializers, constants and casts become float16, a Cast follows each input and precedes each
    output. The sizes that Resize takes stay float32, as the ONNX spec wants. (Tracing a float16
    copy of the networks instead would run torch's float16 convolutions on the CPU: minutes.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def half(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)

    model = onnx.load(path)
    graph = model.graph
    keep = {n.input[2] for n in graph.node if n.op_type == 'Resize' and len(n.input) > 2 and n.input[2]}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(half(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == 'Cast' and attr.name == 'to' and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT \
                    and node.output[0] not in keep:
                attr.t.CopyFrom(half(attr.t))
    renamed = {v.name: v.name + '_fp16' for v in list(graph.input) + list(graph.output)
               if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    inputs = [helper.make_node('Cast', [v.name], [renamed[v.name]], to=TensorProto.FLOAT16)
              for v in graph.input if v.name in renamed]
    outputs = [helper.make_node('Cast', [renamed[v.name]], [v.name], to=TensorProto.FLOAT)
               for v in graph.output if v.name in renamed]
    nodes = inputs + list(graph.node) + outputs
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the element types inferred for float32 no longer hold
    onnx.save(model, path)


CUDA_PROVIDER = 'CUDAExecutionProvider'


def check_providers(fp16: bool) -> list:
    """The onnxruntime providers the written graphs are checked on: the CPU's always; for float16
    graphs, which are meant for GPU runtimes, also CUDA's where this onnxruntime has it
    (onnxruntime-gpu)."""
    import onnxruntime as ort
    providers = ['CPUExecutionProvider']
    if fp16 and CUDA_PROVIDER in ort.get_available_providers():
        providers.append(CUDA_PROVIDER)
    return providers


def run_graph(path: str, names: tuple, args: tuple, threads: int = 0, provider: str = 'CPUExecutionProvider',
              what: str = 'graph') -> list:
    """Run a graph in onnxruntime on `provider` (with the CPU's as fallback for nodes it lacks).
    ExportFailed when the session's first provider is another one: onnxruntime falls back to the
    CPU silently where the CUDA provider cannot load (e.g. no cuDNN), which would check nothing."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = [provider] + (['CPUExecutionProvider'] if provider != 'CPUExecutionProvider' else [])
    session = ort.InferenceSession(path, options, providers=providers)
    if session.get_providers()[0] != provider:
        raise ExportFailed('the %s graph: onnxruntime\'s %s did not load (the session runs on %s); install the '
                           'CUDA and cuDNN libraries onnxruntime-gpu needs, or check on the CPU only with '
                           'onnxruntime instead of onnxruntime-gpu' % (what, provider, session.get_providers()[0]))
    return session.run(None, {n: a.numpy() for n, a in zip(names[0], args)})


@torch.no_grad()
def check_graphs(paths: Dict[str, str], generator: nn.Module, kp_detector: nn.Module, names: dict, inputs: dict,
                 threads: int = 0, providers: Sequence[str] = ('CPUExecutionProvider',)) -> tuple:
    """({role: max abs difference}, {role: output shapes}) between onnxruntime running each
    written graph and the torch networks as they are (not fused, float32), on the same inputs;
    the difference is the largest over `providers`."""
    reference = build_graphs(generator, kp_detector, fuse=False)
    diffs, shapes = {}, {}
    for role in GRAPHS:
        expected = _as_tuple(reference[role](*inputs[role]))
        diffs[role] = 0.0
        for provider in providers:
            got = run_graph(paths[role], names[role], inputs[role], threads, provider, role)
            diffs[role] = max([diffs[role]] + [float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)])
            shapes[role] = dict(zip(names[role][1], (tuple(g.shape) for g in got)))
    return diffs, shapes


def export_model(generator: nn.Module, kp_detector: nn.Module, config, out: str, opset: int = DEFAULT_OPSET,
                 fp16: bool = False, exporter: str = 'torchscript', tolerance: Optional[float] = None,
                 checkpoint: Optional[str] = None, batch: int = 2, threads: int = 0, log=None) -> dict:
    """Write the graphs and manifest.json of `generator` and `kp_detector` (eval mode, CPU) into
    `out` (the caller has checked the paths: outputs.check_outputs). Each graph goes to a temporary
    name and is run by onnxruntime against torch on random inputs at another batch size than the
    traced one (ExportFailed beyond `tolerance`; default 1e-4 for fp32, 5e-2 for fp16), float16
    graphs on CUDA too where onnxruntime-gpu is installed (check_providers); all are renamed when
    all pass, the manifest last. Returns the manifest."""
    log = log or (lambda message: None)
    precision = 'fp16' if fp16 else 'fp32'
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    frame_shape = [int(v) for v in config.dataset_params.frame_shape[:2]]
    num_kp = int(config.model_params.common_params.num_kp)
    jacobian, occlusion = model_facts(generator, kp_detector)
    names = graph_names(jacobian, occlusion)
    dynamic = {'kp_detector': names['kp_detector'][0] + names['kp_detector'][1], 'source': ['source', 'encoded'],
               'generator': [n for n in names['generator'][0] if n.startswith('kp_driving')] + names['generator'][1]}
    graphs = build_graphs(generator, kp_detector)
    os.makedirs(out, exist_ok=True)
    clean_stale_temps(out)
    temps = {role: temp_path(os.path.join(out, FILES[role]), '.onnx') for role in GRAPHS}
    try:
        inputs = example_inputs(graphs, frame_shape, num_kp, jacobian, batch)
        for role in GRAPHS:
            log('exporting the %s graph' % role)
            export_graph(graphs[role], inputs[role], temps[role], names[role], dynamic[role], opset, exporter, role)
            if fp16:
                convert_to_fp16(temps[role])
        check_inputs = example_inputs(graphs, frame_shape, num_kp, jacobian, 1 if batch != 1 else 2, seed=1)
        providers = check_providers(fp16)
        diffs, shapes = check_graphs(temps, generator, kp_detector, names, check_inputs, threads, providers)
        for role in GRAPHS:
            log('%-12s max abs difference to torch (%s, random inputs, %s): %.2e'
                % (role, precision, ' and '.join(p.replace('ExecutionProvider', '') for p in providers), diffs[role]))
            if not diffs[role] <= tolerance:  # NaN fails too
                raise ExportFailed('the %s graph differs from torch by %.3g > --tolerance %g; nothing written'
                                   % (role, diffs[role], tolerance))
            declare_output_shapes(temps[role], shapes[role], dynamic[role])
        graphs_entry = {role: {'file': FILES[role], 'sha256': sha256(temps[role]),
                               'bytes': os.path.getsize(temps[role]), 'inputs': names[role][0],
                               'outputs': names[role][1], 'batch_axis': dynamic[role]} for role in GRAPHS}
        for role in GRAPHS:
            commit(temps[role], os.path.join(out, FILES[role]))
    finally:
        for path in temps.values():
            if os.path.exists(path):
                os.remove(path)
    manifest = {'written_by': MARK, 'format': FORMAT_VERSION, 'frame_shape': frame_shape, 'num_kp': num_kp,
                'jacobian': jacobian, 'occlusion_map': occlusion, 'opset': opset, 'precision': precision,
                'exporter': exporter, 'torch': torch.__version__,
                'checkpoint': os.path.basename(checkpoint) if checkpoint else None,
                'check': {'max_abs_diff': diffs, 'tolerance': tolerance, 'providers': providers},
                'graphs': graphs_entry,
                'config': config.to_dict()}
    write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


def write_json(path: str, data: dict) -> None:
    tmp = temp_path(path)
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
        f.write('\n')
    commit(tmp, path)


# ----------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--config', default=None,
                   help='model config (YAML); default: the config stored in the checkpoint')
    p.add_argument('--checkpoint', required=True, help='weights (.pth.tar) that fit the config')
    p.add_argument('--out', required=True, help='folder to write the graphs and manifest.json into')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                   help='ONNX opset (>= 16: GridSample; >= 18 with --exporter dynamo)')
    p.add_argument('--fp16', action='store_true',
                   help='float16 weights and arithmetic inside the graphs (inputs and outputs stay float32): half '
                        'the size, for GPU and mobile runtimes; onnxruntime\'s CPU provider gains no speed from it. '
                        'Checked on the CPU provider and, with onnxruntime-gpu installed, on CUDA too')
    p.add_argument('--exporter', choices=EXPORTERS, default='torchscript',
                   help='torch.onnx exporter: torchscript (fast, any opset >= 16) or dynamo (torch.export)')
    p.add_argument('--tolerance', type=float, default=None,
                   help='largest accepted difference to torch on random inputs (default: 1e-4 fp32, 5e-2 fp16)')
    p.add_argument('--batch', type=int, default=2, help='example batch size to trace with (the axis stays dynamic)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace files in --out that this tool did not write')
    return p


def check_args(args: argparse.Namespace) -> None:
    for flag in ('--checkpoint', '--config'):
        path = getattr(args, flag[2:])
        if path is not None and not os.path.isfile(path):
            raise OutputError('%s: file not found: %s' % (flag, path))
    if args.opset < MIN_OPSET[args.exporter]:
        raise ValueError('--opset: %d is too old (GridSample needs >= 16; the dynamo exporter writes >= 18): use >= %d'
                         % (args.opset, MIN_OPSET[args.exporter]))
    if args.batch < 1:
        raise ValueError('--batch: must be >= 1, got %d' % args.batch)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise OutputError('--out: %s exists and is not a folder' % args.out)
    outputs = {'--out (%s)' % name: os.path.join(args.out, name) for name in list(FILES.values()) + [MANIFEST]}
    check_outputs(outputs, {'--checkpoint': args.checkpoint, '--config': args.config}, overwrite=args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from core.checkpoint import CheckpointError
    from core.config import ConfigError

    def log(message):
        print('%s: %s' % (PROG, message), file=sys.stderr)

    try:
        check_args(args)
        import onnxruntime  # noqa: F401  (the check after writing needs it: fail before the work)

        from engine.torch_engine import load_networks
        generator, kp_detector, config = load_networks(args.config, args.checkpoint)
        export_model(generator, kp_detector, config, args.out, opset=args.opset, fp16=args.fp16,
                     exporter=args.exporter, tolerance=args.tolerance, checkpoint=args.checkpoint, batch=args.batch,
                     log=log)
    except ImportError as e:
        log('error: %s: install the ONNX tools with pip install -r requirements-onnx.txt' % e)
        return 1
    except (ExportFailed, ConfigError, CheckpointError, OutputError, ValueError, OSError) as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        log('error: %s' % (lines[0] if lines else type(e).__name__))
        return 1
    log('wrote %s (%s)' % (args.out, ', '.join(list(FILES.values()) + [MANIFEST])))
    return 0


if __name__ == '__main__':
    one_line_warnings('export.py')
    sys.exit(main())
