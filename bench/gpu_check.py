"""GPU check: the paths users take on CUDA that no CPU run takes, in one script (under 10 minutes
on one GPU). Without CUDA it says so and runs the CPU half: the same steps on the CPU, where they
exist there (tests/test_gpu_check.py runs it with --quick, so the script cannot rot unseen).

    make gpu-check                                  # python bench/gpu_check.py (cuda when there)
    python bench/gpu_check.py --device cuda:1
    python bench/gpu_check.py --device cpu --quick  # the CPU half, small

Each check prints a line as it ends; one table closes the run (check, result, figure); the exit
status is 1 when a check failed. The checks:
  device           the GPU, its compute capability, what --precision auto picks (bf16 from 8.0, else fp16)
  train <p>        run.py, a few steps of tests/tiny.yaml on synthetic videos (seeded random VGG19) in
                   fp32, bf16 with the GAN loss, fp16 (CUDA only), bf16 with --compile: exit 0, a
                   checkpoint, finite logged losses, no 'lr_scheduler.step() before optimizer.step()'
                   warning; the fp16 checkpoint holds its GradScaler
  resume fp32>bf16 the fp32 run's checkpoint resumed into a bf16 run (channels-last, fused Adam); on
                   CUDA its Adam moments are in the default layout (on the CPU, fp32 is channels-last
                   too: tests/test_gpu_paths.py covers the mismatch there)
  ddp x2           2 processes on the one device (gloo), --sync_bn on CUDA: the weights (with
                   --sync_bn the BatchNorm statistics too) equal across ranks after the steps
  torchrun <mode>  run.py --mode reconstruction / animate under torchrun --nproc_per_node 1 (NCCL on
                   CUDA, gloo on the CPU): exit 0 and the report / videos written
  engine <p>       the embedded model (config/shapes-64.yaml, checkpoints/shapes-64.pth.tar) on the
                   device against the CPU fp32 engine; fp32 (TF32 convolutions where the GPU has
                   them: torch's default), fp32 IEEE (TF32 off), bf16, fp16 (CUDA): mean |difference|
                   within tolerance(p) (engine_tolerance below: derived from the unit roundoff)
  memory           peak CUDA memory over 200 streamed batches equals the peak after the first 10
  vox-256 fps      256x256 frames/s of the vox-256 networks (random weights), auto precision and fp32
  export <p>       export.py's graphs of the embedded model, fp32 and fp16, checked by onnxruntime on
                   its CPU provider and, with onnxruntime-gpu, on CUDA (fp16 in export.py itself);
                   the CUDA session's first provider must be CUDA, its frames within tolerance
"""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.runtime import resolve_device, resolve_precision  # noqa: E402

SHAPES_CONFIG = str(ROOT / 'config' / 'shapes-64.yaml')
SHAPES_CHECKPOINT = str(ROOT / 'checkpoints' / 'shapes-64.pth.tar')
TINY = ROOT / 'tests' / 'tiny.yaml'
SCHEDULER_WARNING = 'lr_scheduler.step()'
# unit roundoff of each arithmetic: bf16 keeps 8 significand bits, fp16 and TF32 11, fp32 24
UNIT_ROUNDOFF = {'bf16': 2.0 ** -8, 'fp16': 2.0 ** -11, 'tf32': 2.0 ** -11, 'fp32': 2.0 ** -24}
# the compatibility contract's absolute tolerance between float32 implementations (DESIGN.md)
FP32_FLOOR = 2e-4
BUDGETS = {
    'full': dict(train_steps=5, compile=True, engine_frames=48, memory_batches=200, fps_frames=256, fps_batch=16,
                 exports=('fp32', 'fp16'), modes=('reconstruction', 'animate'), fps_precisions=('auto', 'fp32'),
                 timeout=420),
    'quick': dict(train_steps=2, compile=False, engine_frames=8, memory_batches=12, fps_frames=1, fps_batch=1,
                  exports=('fp16',), modes=('reconstruction',), fps_precisions=('auto',), timeout=300),
}


def engine_tolerance(arithmetic: str, bf16_error: float) -> float:
    """Largest accepted mean |frame - CPU fp32 frame| for an engine computing in `arithmetic`.

    Rounding errors scale with the unit roundoff u of the arithmetic. `bf16_error` is the same
    measure for the CPU's own bf16 engine in this run (its rounding through this very network and
    these frames): an arithmetic with roundoff u gets 4 * (u / u_bf16) * bf16_error (4: another
    device's accumulation order, and the ops each device's autocast lowers), and never less than
    the contract's float32 tolerance (2e-4), which covers IEEE fp32 on another device."""
    return max(FP32_FLOOR, 4 * UNIT_ROUNDOFF[arithmetic] / UNIT_ROUNDOFF['bf16'] * bf16_error)


class Checks:
    """Runs the checks on one device, collecting (check, result, figure) rows."""

    def __init__(self, device: torch.device, budget: dict, work: Path):
        self.device, self.budget, self.work = device, budget, work
        self.cuda = device.type == 'cuda'
        self.rows = []
        self.env = dict(os.environ)
        self.python = sys.executable
        self.checkpoints = {}  # run name -> checkpoint path
        self.last = time.perf_counter()

    # ----------------------------------------------------------------------------- reporting
    def row(self, check: str, result: str, figure: str) -> None:
        self.rows.append((check, result, figure))
        now = time.perf_counter()
        print('[%5.1f s] %-24s %-5s %s' % (now - self.last, check, result, figure), flush=True)
        self.last = now

    def run(self, check: str, fn, *args) -> None:
        """fn(*args) -> (result, figure); an exception is that check's failure, not the run's."""
        try:
            result, figure = fn(*args)
        except Exception as e:  # a check that crashed is a failed check; the others still run
            result, figure = 'FAIL', '%s: %s' % (type(e).__name__, first_line(str(e)))
        self.row(check, result, figure)

    def skip(self, check: str, why: str) -> None:
        self.row(check, 'skip', why)

    # ------------------------------------------------------------------------------ helpers
    def command(self, args, timeout=None) -> tuple:
        """(exit status, stdout, stderr, seconds) of a command in the repository root."""
        t0 = time.perf_counter()
        res = subprocess.run(args, capture_output=True, text=True, cwd=str(ROOT), env=self.env,
                             timeout=timeout or self.budget['timeout'])
        return res.returncode, res.stdout, res.stderr, time.perf_counter() - t0

    def torchrun(self, nproc: int) -> list:
        return [self.python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)]

    def tiny_config(self, gan: bool) -> str:
        """tests/tiny.yaml over this run's synthetic videos; 20 steps an epoch, GAN on or off."""
        path = self.work / ('tiny-gan.yaml' if gan else 'tiny.yaml')
        if not path.exists():
            cfg = yaml.safe_load(TINY.read_text())
            cfg['dataset_params']['root_dir'] = str(self.work / 'shapes')
            cfg['train_params']['num_repeats'] = 10
            cfg['train_params']['loss_weights']['generator_gan'] = 1 if gan else 0
            path.write_text(yaml.safe_dump(cfg))
        return str(path)

    # -------------------------------------------------------------------------------- checks
    def device_facts(self) -> tuple:
        auto = resolve_precision('auto', self.device)
        if not self.cuda:
            return 'info', 'no CUDA: the CPU half runs; auto precision on this CPU: %s' % auto
        major, minor = torch.cuda.get_device_capability(self.device)
        return 'info', ('%s, compute capability %d.%d, auto precision %s (training and inference), CUDA %s, '
                        'cuDNN %s, TF32 convolutions %s' % (torch.cuda.get_device_name(self.device), major, minor,
                                                           auto, torch.version.cuda, torch.backends.cudnn.version(),
                                                           'on' if torch.backends.cudnn.allow_tf32 else 'off'))

    def train(self, name: str, precision: str, gan: bool = False, compile: bool = False,
              checkpoint: str = None) -> tuple:
        """run.py training for budget['train_steps'] steps; the checks of the module docstring."""
        steps = self.budget['train_steps']
        args = [self.python, 'run.py', '--config', self.tiny_config(gan), '--log_dir', str(self.work / name),
                '--device', str(self.device), '--precision', precision, '--max_steps', str(steps),
                '--num_workers', '0', '--seed', '0'] + (['--compile'] if compile else [])
        if checkpoint:
            args += ['--checkpoint', checkpoint]
        rc, out, err, seconds = self.command(args, timeout=self.budget['timeout'] + (120 if compile else 0))
        if rc:
            return 'FAIL', 'exit %d: %s' % (rc, last_error(err))
        run_dir = Path(out.strip().splitlines()[-1])
        saved = sorted(glob.glob(str(run_dir / 'checkpoints' / '*-checkpoint.pth.tar')))
        if not saved:
            return 'FAIL', 'no checkpoint in %s' % run_dir
        state = torch.load(saved[-1], map_location='cpu', weights_only=True)
        losses = logged_losses(run_dir / 'log.txt')
        problems = []
        if not losses or not all(math.isfinite(v) for v in losses.values()):
            problems.append('logged losses %s' % losses)
        if SCHEDULER_WARNING in err:
            problems.append('the scheduler warning')
        if precision == 'fp16' and not state.get('grad_scaler'):
            problems.append('no grad_scaler in the checkpoint')
        adam_steps = int(max(float(s['step']) for s in state['optimizer_generator']['state'].values()))
        expected_steps = steps * (2 if checkpoint else 1)
        # fp16: the GradScaler skips the updates whose gradients overflowed (it starts at a scale of 2^16)
        if not (1 <= adam_steps <= expected_steps if precision == 'fp16' else adam_steps == expected_steps):
            problems.append('Adam step count %d, expected %d' % (adam_steps, expected_steps))
        self.checkpoints[name] = saved[-1]
        figure = '%d steps, %.1f s with start-up; perceptual %.3f' % (steps, seconds, losses.get('perceptual', math.nan))
        if precision == 'fp16':
            figure += '; %d updates applied, loss scale %s' % (adam_steps, (state.get('grad_scaler') or {}).get('scale'))
        return ('FAIL', '; '.join(problems)) if problems else ('pass', figure)

    def resume(self) -> tuple:
        source = self.checkpoints.get('train-fp32')
        if source is None:
            return 'FAIL', 'no fp32 checkpoint to resume (train fp32 failed)'
        state = torch.load(source, map_location='cpu', weights_only=True)
        contiguous = all(s['exp_avg'].is_contiguous() for s in state['optimizer_generator']['state'].values())
        result, figure = self.train('train-fp32', 'bf16', checkpoint=source)
        return result, '%s; saved moments in the default layout: %s' % (figure, 'yes' if contiguous else 'no')

    def ddp(self) -> tuple:
        out = self.work / 'ddp'
        out.mkdir(exist_ok=True)
        args = self.torchrun(2) + [str(Path(__file__).resolve()), '--ddp_worker', str(out), '--config',
                                   self.tiny_config(gan=True), '--device', str(self.device)]
        rc, _, err, seconds = self.command(args)
        if rc:
            return 'FAIL', 'exit %d: %s' % (rc, last_error(err))
        ranks = [torch.load(out / ('rank%d.pt' % r), weights_only=True) for r in (0, 1)]
        compared, worst = 0, 0.0
        for net, state in ranks[0].items():
            for key, value in state.items():
                per_rank = 'weight_u' in key or 'weight_v' in key  # spectral-norm vectors
                if not self.cuda and ('running_' in key or 'num_batches' in key):
                    per_rank = True  # BatchNorm statistics, per process without --sync_bn
                if per_rank or not value.is_floating_point():
                    continue
                worst = max(worst, float((value - ranks[1][net][key]).abs().max()))
                compared += 1
        figure = '%d tensors compared%s, max difference %.1e, %.1f s' % (
            compared, ' (BatchNorm statistics included: --sync_bn)' if self.cuda else '', worst, seconds)
        return ('pass' if worst <= 1e-6 else 'FAIL'), figure

    def torchrun_mode(self, mode: str) -> tuple:
        checkpoint = self.checkpoints.get('train-fp32')
        if checkpoint is None:
            return 'FAIL', 'no checkpoint (train fp32 failed)'
        log_dir = self.work / ('torchrun-' + mode)
        args = self.torchrun(1) + ['run.py', '--config', self.tiny_config(gan=False), '--mode', mode, '--checkpoint',
                                   checkpoint, '--log_dir', str(log_dir), '--device', str(self.device),
                                   '--batch_size', '4']
        rc, out, err, seconds = self.command(args)
        if rc:
            return 'FAIL', 'exit %d: %s' % (rc, last_error(err))
        folder = Path(out.strip().splitlines()[-1])  # run.py prints the evaluation's own folder
        videos = sorted(folder.glob('*.mp4'))
        if mode == 'reconstruction':
            report = json.loads((folder / 'metrics.json').read_text())
            return 'pass', '%d videos, L1 %.4f, %.1f s' % (len(videos), report['mean']['l1'], seconds)
        return ('pass' if videos else 'FAIL'), '%d videos, %.1f s' % (len(videos), seconds)

    # --------------------------------------------------------------------------------- engine
    def engine_frames(self, device, precision: str, source, frames, batch_size: int = 8) -> np.ndarray:
        from engine.torch_engine import AnimationEngine
        engine = AnimationEngine.from_checkpoint(SHAPES_CONFIG, SHAPES_CHECKPOINT, device=device, precision=precision,
                                                 batch_size=batch_size)
        engine.set_source(source)
        return np.stack(list(engine.animate(frames, output='float')))

    def engine_inputs(self) -> tuple:
        from media.images import read_image
        from media.video_io import open_video
        source = read_image(str(ROOT / 'assets' / 'shapes-source.png'))
        video = open_video(str(ROOT / 'assets' / 'shapes-driving.mp4'))
        return source, list(video.read(range(min(self.budget['engine_frames'], len(video)))))

    def engines(self) -> None:
        source, frames = self.engine_inputs()
        cpu = torch.device('cpu')
        reference = self.engine_frames(cpu, 'fp32', source, frames)
        bf16_error = float(np.abs(self.engine_frames(cpu, 'bf16', source, frames) - reference).mean())
        self.row('engine cpu bf16', 'info', 'mean |bf16 - fp32| on the CPU: %.2e (the tolerances scale from it)'
                 % bf16_error)
        variants = [('fp32', 'fp32', 'tf32' if self.cuda else 'fp32'), ('fp32 ieee', 'fp32', 'fp32'),
                    ('bf16', 'bf16', 'bf16'), ('fp16', 'fp16', 'fp16')]
        for name, precision, arithmetic in variants:
            check = 'engine ' + name
            if not self.cuda and name in ('fp32 ieee', 'fp16'):
                self.skip(check, 'CUDA only' + (' (no TF32 on a CPU: fp32 is IEEE)' if name == 'fp32 ieee' else ''))
                continue
            self.run(check, self.engine_variant, source, frames, reference, precision,
                     engine_tolerance(arithmetic, bf16_error), name == 'fp32 ieee')

    def engine_variant(self, source, frames, reference, precision, tolerance, ieee: bool) -> tuple:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = not ieee and saved
        try:
            got = self.engine_frames(self.device, precision, source, frames)
        finally:
            torch.backends.cudnn.allow_tf32 = saved
        diff = np.abs(got - reference)
        figure = 'mean |diff| %.2e (tolerance %.2e), max %.2e, %d frames' % (diff.mean(), tolerance, diff.max(),
                                                                             len(frames))
        return ('pass' if diff.mean() <= tolerance else 'FAIL'), figure

    def memory(self) -> tuple:
        from engine.torch_engine import AnimationEngine
        source, frames = self.engine_inputs()
        engine = AnimationEngine.from_checkpoint(SHAPES_CONFIG, SHAPES_CHECKPOINT, device=self.device,
                                                 precision='auto', batch_size=len(frames))
        engine.set_source(source)
        batches, first = self.budget['memory_batches'], 10
        stream = engine.animate((f for _ in range(batches) for f in frames), output='batch')
        for i, _ in enumerate(stream):
            if i + 1 == first and self.cuda:
                torch.cuda.synchronize(self.device)
                early = torch.cuda.max_memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
        if not self.cuda:
            return 'skip', '%d batches of %d frames streamed; peak memory is measured with CUDA\'s allocator only' % (
                batches, len(frames))
        torch.cuda.synchronize(self.device)
        late = torch.cuda.max_memory_allocated(self.device)
        figure = 'peak %.1f MiB over batches 1-%d, %.1f MiB over %d-%d' % (early / 2 ** 20, first, late / 2 ** 20,
                                                                          first + 1, batches)
        # flat: what the later batches need fits in the first ones' peak (1 MiB for allocator rounding;
        # keeping each batch's output, 48 frames of 64x64 in float32, would add 2.25 MiB a batch)
        return ('pass' if late <= early + 2 ** 20 else 'FAIL'), figure

    def fps(self) -> tuple:
        from bench_animate import driving_frames, texture
        from engine.torch_engine import AnimationEngine, load_networks
        count, batch = self.budget['fps_frames'], self.budget['fps_batch']
        frames = list(driving_frames(count, 256))
        source = texture(256, 0)
        figures = []
        for precision in self.budget['fps_precisions']:
            torch.manual_seed(0)
            generator, kp_detector, _ = load_networks(str(ROOT / 'config' / 'vox-256.yaml'))
            engine = AnimationEngine(generator, kp_detector, device=self.device, precision=precision,
                                     batch_size=batch)
            engine.set_source(source)
            list(engine.animate(frames[:batch], output='batch'))  # warm-up: cuDNN picks its kernels
            sync(self.device)
            t0 = time.perf_counter()
            for _ in engine.animate(frames, output='batch'):
                pass
            sync(self.device)
            figures.append('%s %.1f frames/s' % (engine.precision, count / (time.perf_counter() - t0)))
        return 'info', '%s (batch %d, %d frames, random weights)' % (', '.join(figures), batch, count)

    # --------------------------------------------------------------------------------- export
    def export(self, precision: str) -> tuple:
        import onnxruntime as ort

        import export
        from engine.onnx_engine import OnnxEngine
        from engine.torch_engine import load_networks
        generator, kp_detector, config = load_networks(SHAPES_CONFIG, SHAPES_CHECKPOINT)
        folder = self.work / ('export-' + precision)
        manifest = export.export_model(generator, kp_detector, config, str(folder), fp16=precision == 'fp16',
                                       checkpoint=SHAPES_CHECKPOINT)
        diff = max(manifest['check']['max_abs_diff'].values())
        figure = 'graphs vs torch on %s: max %.1e' % ('+'.join(p.replace('ExecutionProvider', '')
                                                              for p in manifest['check']['providers']), diff)
        if not self.cuda or 'CUDAExecutionProvider' not in ort.get_available_providers():
            return 'pass', figure + ('; no onnxruntime-gpu: CPU provider only' if self.cuda else '')
        engine = OnnxEngine.from_export(str(folder), device='cuda', batch_size=8)
        first = {role: session.get_providers()[0] for role, session in engine.sessions.items()}
        if set(first.values()) != {'CUDAExecutionProvider'}:
            return 'FAIL', 'onnxruntime-gpu sessions start with %s, not CUDA' % first
        source, frames = self.engine_inputs()
        engine.set_source(source)
        got = np.stack(list(engine.animate(frames, output='float')))
        reference = self.engine_frames(torch.device('cpu'), 'fp32', source, frames)
        bf16_error = float(np.abs(self.engine_frames(torch.device('cpu'), 'bf16', source, frames) - reference).mean())
        # onnxruntime's CUDA provider runs float32 convolutions in TF32 by default (use_tf32)
        tolerance = engine_tolerance('fp16' if precision == 'fp16' else 'tf32', bf16_error)
        error = float(np.abs(got - reference).mean())
        figure += '; onnxruntime-gpu frames vs torch CPU fp32: mean %.2e (tolerance %.2e)' % (error, tolerance)
        return ('pass' if error <= tolerance else 'FAIL'), figure

    # ------------------------------------------------------------------------------ all of it
    def all(self) -> None:
        from media.synthetic import write_dataset
        write_dataset(str(self.work / 'shapes'), size=64, num_train=4, num_test=2, frames=8, seed=0, progress=False)
        self.run('device', self.device_facts)
        self.run('train fp32', self.train, 'train-fp32', 'fp32')
        self.run('train bf16 gan', self.train, 'train-bf16-gan', 'bf16', True)
        if self.cuda:
            self.run('train fp16', self.train, 'train-fp16', 'fp16')
        else:
            self.skip('train fp16', 'CUDA only (run.py refuses fp16 on a CPU)')
        if self.budget['compile']:
            self.run('train bf16 compile', self.train, 'train-bf16-compile', 'bf16', False, True)
        else:
            self.skip('train bf16 compile', 'not in the quick budget (compiling takes minutes on a CPU)')
        self.run('resume fp32>bf16', self.resume)
        self.run('ddp x2' + (' sync_bn' if self.cuda else ''), self.ddp)
        for mode in ('reconstruction', 'animate'):
            if mode in self.budget['modes']:
                self.run('torchrun ' + mode, self.torchrun_mode, mode)
            else:
                self.skip('torchrun ' + mode, 'not in the quick budget (the same process-group path as reconstruction)')
        try:
            self.engines()
        except Exception as e:
            self.row('engine', 'FAIL', '%s: %s' % (type(e).__name__, first_line(str(e))))
        self.run('memory', self.memory)
        self.run('vox-256 fps', self.fps)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self.skip('export', 'onnxruntime not installed (pip install -r requirements-onnx.txt)')
        else:
            for precision in self.budget['exports']:
                self.run('export ' + precision, self.export, precision)

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows)
        lines = ['%-*s  %-6s %s' % (width, 'check', 'result', 'figure'), '-' * (width + 30)]
        lines += ['%-*s  %-6s %s' % (width, c, r, f) for c, r, f in self.rows]
        return '\n'.join(lines)


# ------------------------------------------------------------------------------------ helpers
def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ''


def last_error(stderr: str) -> str:
    """The line of a child's stderr that says what went wrong (its last non-progress line)."""
    lines = [line.strip() for line in stderr.replace('\r', '\n').splitlines()
             if line.strip() and not re.search(r'\d+it/s|s/it|epoch \d+/\d+', line)]
    return lines[-1][:300] if lines else '(no message)'


def logged_losses(log_file: Path) -> dict:
    """The last line of a run's log.txt ('00000000) perceptual - 1.23; ...') as {name: value}."""
    lines = log_file.read_text().strip().splitlines() if log_file.exists() else []
    if not lines:
        return {}
    return {k: float(v) for k, v in re.findall(r'(\w+) - ([-+\w.]+)', lines[-1])}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def ddp_worker(out: str, config_path: str, device_name: str) -> None:
    """Under torchrun (2 processes): gloo, both on `device_name`, --sync_bn on CUDA; a few steps,
    then each rank writes its networks' state dicts (rank<r>.pt)."""
    import torch.distributed as dist

    from core.config import keywords, load_config
    from frames_dataset import FramesDataset
    from modules.networks import build_networks
    from train import train
    device = resolve_device(device_name)
    dist.init_process_group('gloo')  # two processes on one GPU: NCCL refuses that, gloo takes CUDA tensors
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    config = load_config(config_path)
    generator, kp_detector, discriminator = build_networks(config.model_params)
    dataset = FramesDataset(is_train=True, random_seed=0, **keywords(config.dataset_params))
    train(config, generator, discriminator, kp_detector, None, os.path.join(out, 'run'), dataset, device,
          precision=resolve_precision('auto', device), num_workers=0, sync_bn=device.type == 'cuda', max_steps=3)
    torch.save({name: {k: v.detach().cpu() for k, v in net.state_dict().items()}
                for name, net in (('generator', generator), ('kp_detector', kp_detector),
                                  ('discriminator', discriminator))}, os.path.join(out, 'rank%d.pt' % rank))
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default=None, help='cuda, cuda:N or cpu (default: cuda when available, else cpu)')
    p.add_argument('--quick', action='store_true', help='the small budget (fewer steps, frames and batches; no '
                                                        '--compile run, no torchrun animate, fp16 export only): '
                                                        'what tests/test_gpu_check.py runs')
    p.add_argument('--keep', default=None, help='a folder to keep the runs in (default: a temporary one, removed)')
    p.add_argument('--ddp_worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--config', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.config, args.device)
        return 0
    device = resolve_device(args.device)
    if device.type == 'cuda' and device.index is None:  # the child processes get the same GPU by name
        device = torch.device('cuda', torch.cuda.current_device())
    budget = BUDGETS['quick' if args.quick else 'full']
    print('gpu_check: torch %s, device %s%s, budget %s' % (torch.__version__, device,
                                                           '' if device.type == 'cuda' else ' (no CUDA: the CPU half)',
                                                           'quick' if args.quick else 'full'), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checks = Checks(device, budget, work)
        checks.all()
    print('\n' + checks.table())
    failed = [c for c, r, _ in checks.rows if r == 'FAIL']
    print('\n%d checks, %d failed, %.0f s' % (len(checks.rows), len(failed), time.perf_counter() - t0))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
