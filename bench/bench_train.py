"""Benchmark: the training step, per phase (data, forward, backward, optimizer), variants compared.

    python bench/bench_train.py                                    # vox-256 at 64x64 (bench/vox-256-at-64.yaml), CPU
    python bench/bench_train.py --original ../first-order-model    # also the original code's step
    python bench/bench_train.py --variants fp32,bf16 --steps 50    # loss parity of bf16 over 50 steps
    python bench/bench_train.py --device cuda --batch_size 16

Every variant starts from the same weights and runs on the same batches, with the same random
equivariance transforms, in interleaved rounds (each round fetches one batch, then runs every
variant on it, in an order that alternates), so that a machine shared with other jobs loads all
of them alike. Prints, per variant: samples/s of each phase and of the whole step, the ratio to
the first variant (the baseline), the process CPU seconds per step (on a shared CPU, with
--threads 1, the steadier figure), and each loss's mean over the timed steps next to the
baseline's. The data phase is the wait for the DataLoader (the workers run.py would use) plus
the copy to the device; it is shared by the variants of a round.

Variants (`--variants`, comma separated; the first is the baseline):
  default           what `run.py --mode train` does for --device/--precision (fused Adam where
                    torch has it, channels-last on CPU and for bf16/fp16 on CUDA)
  plain             this project's step with every speed option off: fp32, NCHW, for-loop Adam
  fp32, bf16, fp16  the default at that precision
  no-channels-last, no-fused-adam   the default without that option
  batch-keypoints   the default with one keypoint-detector call per step (changes BatchNorm statistics)
  compile           the default with torch.compile (compilation happens in the warm-up step)
  original          the original code's step (needs --original: a checkout of
                    AliaksandrSiarohin/first-order-model; its torchvision VGG19 is served by this
                    project's Vgg19 with the same weights, so it needs no torchvision)
On CUDA the device is synchronised at every phase boundary (the timers need it).
"""
import argparse
import os
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_animate import describe_machine  # noqa: E402
from core.config import keywords, load_config  # noqa: E402
from modules.model import Vgg19  # noqa: E402
from modules.networks import build_networks  # noqa: E402
from core.runtime import resolve_device, resolve_precision  # noqa: E402
from train import (StepOptions, make_optimizers, place_networks, prepare_step, step_options, to_device,  # noqa: E402
                   train_step)

PHASES = ('data', 'forward', 'backward', 'optimizer')
DEFAULT_CONFIG = ROOT / 'bench' / 'vox-256-at-64.yaml'


# ------------------------------------------------------------------------------ timing
class PhaseClock:
    """Seconds per phase of one step; `mark(phase)` closes the phase that ends there (the device
    is synchronised first, so queued GPU work is counted where it was queued)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.cpu = 0.0

    def start(self):
        self._sync()
        self._t, self._c = time.perf_counter(), time.process_time()

    def mark(self, phase: str):
        self._sync()
        t, c = time.perf_counter(), time.process_time()
        self.seconds[phase] += t - self._t
        self.cpu += c - self._c
        self._t, self._c = t, c

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------ variants
def variant_options(name: str, device: torch.device, precision: str) -> StepOptions:
    """The StepOptions a variant name stands for (see the module docstring)."""
    if name == 'plain':
        return StepOptions(precision='fp32', channels_last=False, fused_adam=False)
    if name in ('fp32', 'bf16', 'fp16'):
        return step_options(device, name)
    base = step_options(device, precision)
    changes = {'default': {}, 'no-channels-last': {'channels_last': False}, 'no-fused-adam': {'fused_adam': False},
               'batch-keypoints': {'batch_keypoints': True}, 'compile': {'compile': True}}
    if name not in changes:
        raise ValueError('--variants: unknown variant %r' % name)
    return StepOptions(**{**base.__dict__, **changes[name]})


class ProjectVariant:
    """This project's training step (train.py) with the given options."""

    def __init__(self, name, config, state, device, options: StepOptions):
        self.name, self.device, self.options = name, device, options
        generator, kp_detector, discriminator = build_networks(config.model_params)
        for net, key in ((generator, 'generator'), (kp_detector, 'kp_detector'), (discriminator, 'discriminator')):
            net.load_state_dict(state[key])
        place_networks([generator, discriminator, kp_detector], device, options)
        self.optimizers, _ = make_optimizers(generator, discriminator, kp_detector, config.train_params,
                                             fused=options.fused_adam)
        self.gan = config.train_params.loss_weights.generator_gan != 0
        self.full, self.disc_full, self.scaler = prepare_step(config, generator, discriminator, kp_detector,
                                                              device, options)

    def describe(self) -> str:
        o = self.options
        return '%s, %s, %s Adam%s%s' % (o.precision, 'NHWC' if o.channels_last else 'NCHW',
                                        'fused' if o.fused_adam else 'for-loop', ', compiled' if o.compile else '',
                                        ', batched keypoints' if o.batch_keypoints else '')

    def step(self, x, clock: PhaseClock) -> dict:
        x = to_device(x, self.device, self.options)
        clock.mark('data')
        losses, _ = train_step(x, self.full, self.disc_full, self.optimizers, self.scaler, self.device,
                               self.options.precision, self.gan, mark=clock.mark)
        return losses


class OriginalVariant:
    """The original code's step: its GeneratorFullModel / DiscriminatorFullModel, its Adam, and its
    train.py loop body (DataParallel is a pass-through on one device), a host copy of every loss
    each step as its logger took."""

    def __init__(self, original: dict, config, state, device, vgg_weights: str):
        self.name, self.device = 'original', device
        m = original['modules.model']
        mp, common = config.model_params, keywords(config.model_params.common_params)
        generator = original['modules.generator'].OcclusionAwareGenerator(**keywords(mp.generator_params), **common)
        kp_detector = original['modules.keypoint_detector'].KPDetector(**keywords(mp.kp_detector_params), **common)
        discriminator = original['modules.discriminator'].MultiScaleDiscriminator(
            **keywords(mp.discriminator_params), **common)
        for net, key in ((generator, 'generator'), (kp_detector, 'kp_detector'), (discriminator, 'discriminator')):
            net.load_state_dict(state[key])
            net.to(device)
        tp = keywords(config.train_params)  # the original's modules take the dict layout
        self.train_params = tp
        self.full = m.GeneratorFullModel(kp_detector, generator, discriminator, tp).to(device)
        self.disc_full = m.DiscriminatorFullModel(kp_detector, generator, discriminator, tp).to(device)
        adam = lambda net, lr: torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))  # noqa: E731
        self.opt_g, self.opt_kp = adam(generator, tp['lr_generator']), adam(kp_detector, tp['lr_kp_detector'])
        self.opt_d = adam(discriminator, tp['lr_discriminator'])

    def describe(self) -> str:
        return 'the original code, fp32, NCHW, its Adam'

    def step(self, x, clock: PhaseClock) -> dict:
        x = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in x.items()}
        clock.mark('data')
        losses, generated = self.full(x)
        loss = sum(v.mean() for v in losses.values())
        clock.mark('forward')
        loss.backward()
        clock.mark('backward')
        self.opt_g.step()
        self.opt_g.zero_grad()
        self.opt_kp.step()
        self.opt_kp.zero_grad()
        clock.mark('optimizer')
        if self.train_params['loss_weights']['generator_gan'] != 0:
            self.opt_d.zero_grad()
            disc = self.disc_full(x, generated)
            disc_loss = sum(v.mean() for v in disc.values())
            clock.mark('forward')
            disc_loss.backward()
            clock.mark('backward')
            self.opt_d.step()
            self.opt_d.zero_grad()
            losses.update(disc)
        host = {k: v.mean().detach().cpu().numpy() for k, v in losses.items()}  # the original's logging
        clock.mark('optimizer')
        return {k: torch.as_tensor(v) for k, v in host.items()}


def load_original(path: str, vgg_weights: str) -> dict:
    """The original code's `modules.*` from a checkout at `path`, imported under their own names
    and then set aside, so that this project's `modules` package stays in place. Its VGG19 comes
    from `torchvision.models.vgg19(pretrained=True)`: a stand-in torchvision serves this project's
    Vgg19 features with `vgg_weights` while it is imported (the same weights as our variants)."""
    if not os.path.isfile(os.path.join(path, 'modules', 'model.py')):
        raise SystemExit('--original: %s is not a checkout of the original code (no modules/model.py)' % path)

    def vgg19(pretrained=True):
        return types.SimpleNamespace(features=Vgg19(weights=vgg_weights).features)

    ours = lambda name: name.split('.')[0] in ('modules', 'sync_batchnorm', 'torchvision')  # noqa: E731
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    stand_in = types.ModuleType('torchvision')
    stand_in.models = types.SimpleNamespace(vgg19=vgg19)
    sys.modules['torchvision'] = stand_in
    sys.path.insert(0, os.path.abspath(path))
    try:
        import importlib
        for name in ('modules.model', 'modules.generator', 'modules.keypoint_detector', 'modules.discriminator'):
            importlib.import_module(name)
        return {name: sys.modules[name] for name in list(sys.modules) if ours(name)}
    finally:
        sys.path.remove(os.path.abspath(path))
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


# ------------------------------------------------------------------------------ data
def batches(config, args, device: torch.device):
    """An endless iterator of training batches: the config's dataset through the DataLoader that
    run.py would build (`--data real`), or uniform noise frames (`--data random`)."""
    tp = config.train_params
    if args.data == 'random':
        h, w = config.dataset_params.frame_shape[:2]
        g = torch.Generator().manual_seed(args.seed)
        while True:
            yield {'source': torch.rand(tp.batch_size, 3, h, w, generator=g),
                   'driving': torch.rand(tp.batch_size, 3, h, w, generator=g)}
    from frames_dataset import FramesDataset
    from train import make_loader
    params = keywords(config.dataset_params)
    if not os.path.isdir(params['root_dir']) and (ROOT / params['root_dir']).is_dir():
        params['root_dir'] = str(ROOT / params['root_dir'])  # a path relative to the project root
    torch.manual_seed(args.seed)
    dataset = FramesDataset(is_train=True, random_seed=args.seed, **params)
    loader, _ = make_loader(dataset, tp, 1, False, args.num_workers, device)
    while True:
        yield from loader


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ' (default: %(default)s)'
    p.add_argument('--config', default=str(DEFAULT_CONFIG), help='training config (default: bench/vox-256-at-64.yaml)')
    p.add_argument('--batch_size', type=int, default=None, help="samples per step (default: the config's)")
    p.add_argument('--steps', type=int, default=4, help='timed steps per variant' + d)
    p.add_argument('--warmup', type=int, default=1, help='untimed first steps per variant' + d)
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                   help="the default variant's precision, resolved as run.py does for training" + d)
    p.add_argument('--variants', default=None,
                   help='comma-separated variants, the first is the baseline (default: original,default with '
                        '--original, else plain,default)')
    p.add_argument('--original', default=None, help='a checkout of AliaksandrSiarohin/first-order-model')
    p.add_argument('--data', choices=('real', 'random'), default='real',
                   help="real: the config's dataset through run.py's DataLoader; random: noise frames" + d)
    p.add_argument('--num_workers', type=int, default=None, help='DataLoader workers (default: as run.py)')
    p.add_argument('--vgg_weights', default=None, help="override train_params.vgg_weights (e.g. 'seeded')")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0, help='weights, batches and transforms' + d)
    p.add_argument('--verbose', action='store_true', help='print every step')
    return p


def make_variants(args, config, device, precision):
    names = (args.variants or ('original,default' if args.original else 'plain,default')).split(',')
    torch.manual_seed(args.seed)
    generator, kp_detector, discriminator = build_networks(config.model_params)
    state = {'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(),
             'discriminator': discriminator.state_dict()}
    original = None
    if 'original' in names:
        if not args.original:
            raise SystemExit('--variants: original needs --original (a checkout of the original code)')
        original = load_original(args.original, config.train_params.vgg_weights)
    variants = []
    for name in names:
        if name == 'original':
            variants.append(OriginalVariant(original, config, state, device, config.train_params.vgg_weights))
        else:
            variants.append(ProjectVariant(name, config, state, device, variant_options(name, device, precision)))
    return variants


def run_rounds(variants, data, args, device) -> dict:
    """{name: {'seconds': {phase: total}, 'cpu': total, 'losses': [per step]}} over the timed steps."""
    results = {v.name: {'seconds': dict.fromkeys(PHASES, 0.0), 'cpu': 0.0, 'losses': []} for v in variants}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        x = next(data)
        wait = time.perf_counter() - t0
        order = variants if step % 2 == 0 else variants[::-1]
        for v in order:
            clock = PhaseClock(device)
            torch.manual_seed(args.seed + 1000 + step)  # the same random transform for every variant
            started = time.perf_counter()
            clock.start()
            losses = v.step(x, clock)
            if args.verbose:
                print('  step %d %-16s %6.2f s  %s' % (step, v.name, time.perf_counter() - started,
                                                       ' '.join('%s %.4f' % (k, float(l)) for k, l in losses.items())),
                      flush=True)
            if step < args.warmup:
                continue
            r = results[v.name]
            clock.seconds['data'] += wait
            for phase in PHASES:
                r['seconds'][phase] += clock.seconds[phase]
            r['cpu'] += clock.cpu
            r['losses'].append({k: float(l) for k, l in losses.items()})
    return results


def report(variants, results, batch: int, steps: int) -> None:
    """Samples/s per phase and per step, ratios to the baseline, CPU time, and the losses."""
    base = results[variants[0].name]
    base_total = sum(base['seconds'].values())
    print('samples/s per phase (batch %d, mean of %d steps), the first variant is the baseline:' % (batch, steps))
    print('  %-18s %9s %9s %9s %9s | %9s %8s %9s %9s' % ('variant', *PHASES, 'step', 's/step', 'cpu s/st', 'vs base'))
    for v in variants:
        r = results[v.name]
        total = sum(r['seconds'].values())
        per_phase = ['%9.2f' % (batch * steps / r['seconds'][p]) if r['seconds'][p] > 0 else '%9s' % '-'
                     for p in PHASES]
        print('  %-18s %s | %9.2f %8.2f %9.2f %8.2fx' % (v.name, ' '.join(per_phase), batch * steps / total,
                                                          total / steps, r['cpu'] / steps, base_total / total))
    print('phase ratios to the baseline (its seconds / the variant seconds):')
    for v in variants[1:]:
        r = results[v.name]
        print('  %-18s %s' % (v.name, '  '.join('%s %.2fx' % (p, base['seconds'][p] / r['seconds'][p])
                                              for p in PHASES if r['seconds'][p] > 0)))
    print('losses, mean over the timed steps (the same batches and transforms; weights drift apart as '
          'the variants train):')
    for v in variants:
        mean = {k: sum(step[k] for step in results[v.name]['losses']) / steps for k in results[v.name]['losses'][0]}
        line = '  %-18s %s' % (v.name, '  '.join('%s %.4f' % kv for kv in mean.items()))
        if v is not variants[0]:
            rel = [abs(s[k] - b[k]) / max(abs(b[k]), 1e-12) for s, b in zip(results[v.name]['losses'], base['losses'])
                   for k in b if k in s]
            line += '  | mean |rel. diff| per step %.2f%%' % (100 * sum(rel) / len(rel))
        print(line)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    config = load_config(args.config, mode='train')
    if args.batch_size:
        config.train_params.batch_size = args.batch_size
    if args.vgg_weights:
        config.train_params.vgg_weights = args.vgg_weights
    print(describe_machine(device))
    print('config: %s, batch %d, frames %s, data %s, VGG19 weights %s'
          % (args.config, config.train_params.batch_size, 'x'.join(map(str, config.dataset_params.frame_shape[:2])),
             args.data, config.train_params.vgg_weights))
    variants = make_variants(args, config, device, precision)
    for v in variants:
        print('  %-18s %s' % (v.name, v.describe()))
    data = batches(config, args, device)
    results = run_rounds(variants, data, args, device)
    report(variants, results, config.train_params.batch_size, args.steps)
    return 0


if __name__ == '__main__':
    sys.exit(main())
