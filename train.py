"""The training loop: one file, top to bottom (Sec. 3.4 of the paper for the losses).

Each step: keypoints of source and driving, generator reconstructs the driving frame, the
generator-side losses (perceptual, GAN + feature matching, equivariance) update generator and
keypoint detector; then, when the GAN weight is non-zero, the discriminator is updated. Adam
(betas 0.5, 0.999) per network, MultiStepLR at `epoch_milestones` (gamma 0.1).

Several processes: launched by `torchrun`, each network is wrapped in DistributedDataParallel
(nccl on GPU, gloo on CPU), the data is split by a DistributedSampler, and only rank 0 logs and
saves. Mixed precision with `torch.autocast` (bf16, or fp16 with a GradScaler).
Resume restores epoch, models, optimizers, schedulers (and fp16's GradScaler). SIGINT/SIGTERM
save a checkpoint and stop cleanly; a non-finite loss stops training and keeps the last good
checkpoint. Under torchrun every rank makes these decisions together (_Consensus): a signal, the
time budget or a non-finite loss on any one rank stops all of them after the same step.
"""
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.checkpoint import load_checkpoint
from core.config import keywords
from core.runtime import autocast, ddp_info
from frames_dataset import DatasetRepeater, default_num_workers, worker_init_fn
from logger import Logger
from modules.networks import build_full_models

ADAM_BETAS = (0.5, 0.999)


class TrainingStopped(RuntimeError):
    """Training could not go on (non-finite loss); the message says why and what was kept."""


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and leaves at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: leave at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Budget:
    """--max_steps / --max_minutes: training stops after that many steps / minutes in total."""

    def __init__(self, max_steps: Optional[int], max_minutes: Optional[float]):
        self.max_steps = max_steps
        self.deadline = time.time() + 60 * max_minutes if max_minutes else None
        self.steps = 0

    def spent(self) -> bool:
        return bool((self.max_steps and self.steps >= self.max_steps) or (self.deadline and time.time() >= self.deadline))


class _Consensus:
    """What the ranks of a torchrun job must decide alike. Each process alone sees its own signal,
    its own clock and its own losses; one that left the loop while the others went on would leave
    them waiting in a collective (DDP's gradient all-reduce): a hang, and rank 0, the only one
    that saves, would never write the last checkpoint. So the stop flags are all-reduced (max) at
    every step, and the summed losses at every log interval, where a non-finite value on any rank
    becomes non-finite on all. Under DDP this costs one two-number all-reduce per step (waiting
    for the step's GPU work, as reading any result does); a single process decides alone."""

    def __init__(self, distributed: bool, device: torch.device):
        self.distributed = distributed
        self.device = device  # NCCL reduces CUDA tensors, gloo CPU ones

    def stop(self, interrupted: bool, spent: bool) -> tuple:
        """(interrupted, budget spent) on any rank -> the same pair on every rank."""
        if not self.distributed:
            return interrupted, spent
        flags = torch.tensor([float(interrupted), float(spent)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in flags.tolist())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor of loss sums (NaN/inf on one rank: on all)."""
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / dist.get_world_size()


@dataclass
class StepOptions:
    """How a training step runs. The defaults (step_options) give the original's numbers up to
    float rounding; batch_keypoints does not (see GeneratorFullModel) and is opt-in."""
    precision: str = 'fp32'  # autocast: fp32, bf16 or fp16 (with a GradScaler)
    channels_last: bool = False  # NHWC networks and inputs
    fused_adam: bool = False  # Adam as one fused kernel per step (where this torch has it)
    compile: bool = False  # torch.compile the keypoint detector and the generator
    batch_keypoints: bool = False  # one keypoint-detector call for source, driving and transformed frames

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def step_options(device: torch.device, precision: str, compile: bool = False, batch_keypoints: bool = False,
                 channels_last: Optional[bool] = None, fused_adam: Optional[bool] = None) -> StepOptions:
    """The step's defaults for a device (measured in bench/bench_train.py): channels-last on CPU
    (oneDNN) and for bf16/fp16 on CUDA (tensor cores), fused Adam wherever torch has it."""
    if channels_last is None:
        channels_last = device.type == 'cpu' or precision != 'fp32'
    if fused_adam is None:
        fused_adam = fused_adam_available(device)
    return StepOptions(precision, bool(channels_last), bool(fused_adam), bool(compile), bool(batch_keypoints))


def fused_adam_available(device: torch.device) -> bool:
    """Whether this torch has a fused Adam for `device` (CUDA; CPU since torch 2.4)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def make_optimizers(generator, discriminator, kp_detector, tp, fused: bool = False):
    """Adam per network and a MultiStepLR per optimizer, keyed as in checkpoints; `fused`: one
    kernel per step for all of a network's tensors (same update up to float rounding)."""
    adam = lambda module, lr: torch.optim.Adam(module.parameters(), lr=lr, betas=ADAM_BETAS,  # noqa: E731
                                               fused=True if fused else None)
    optimizers = {
        'optimizer_generator': adam(generator, tp.lr_generator),
        'optimizer_discriminator': adam(discriminator, tp.lr_discriminator),
        'optimizer_kp_detector': adam(kp_detector, tp.lr_kp_detector),
    }
    schedulers = {name.replace('optimizer', 'scheduler'): MultiStepLR(opt, tp.epoch_milestones, gamma=0.1)
                  for name, opt in optimizers.items()}
    return optimizers, schedulers


def keep_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """After loading a saved state: Adam takes the `fused` flag from the file (an original
    checkpoint has none, one written with fused Adam has True), so set it back to this run's
    choice, with the step counts where that implementation keeps them (fused: float32 on the
    parameter's device)."""
    for group in optimizer.param_groups:
        group['fused'] = True if fused else None
        for p in group['params']:
            state = optimizer.state.get(p)
            if state and 'step' in state:
                state['step'] = torch.as_tensor(state['step'], dtype=torch.float32).to(p.device if fused else 'cpu')


def match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """After loading a saved state: give every state tensor shaped like its parameter (Adam's
    exp_avg, exp_avg_sq) the parameter's memory layout. Published checkpoints, and fp32 runs,
    hold them in the default layout, while a channels-last run's parameters are NHWC; the fused
    Adam kernel walks all of a parameter's tensors as one flat array, so mismatched layouts pair
    each weight with another weight's moments (silently wrong on CPU; refused on CUDA)."""
    for group in optimizer.param_groups:
        for p in group['params']:
            state = optimizer.state.get(p) or {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)  # p's strides


def place_networks(networks, device: torch.device, options: StepOptions) -> None:
    """Move the networks to the device, in the options' memory layout (in place)."""
    for net in networks:
        if net is not None:
            net.to(device, memory_format=options.memory_format)


def to_device(x: dict, device: torch.device, options: StepOptions) -> dict:
    """A batch from the loader on the device (asynchronously from pinned memory), images in the
    options' layout."""
    out = {}
    for key, value in x.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if value.dim() == 4:  # (B, C, H, W)
                value = value.contiguous(memory_format=options.memory_format)
        out[key] = value
    return out


def compile_networks(networks) -> None:
    """torch.compile each network in place (state-dict names unchanged); the loss code around them
    (random transform, autograd Jacobian) stays eager, so its random stream is the original's."""
    for net in networks:
        if net is not None:
            net.compile(dynamic=False)


def resume(checkpoint: str, generator, discriminator, kp_detector, optimizers, schedulers, milestones,
           verbose: bool, grad_scaler: Optional[torch.amp.GradScaler] = None) -> int:
    """Load a checkpoint into the networks, optimizers and schedulers (and an enabled fp16
    GradScaler, where the file has its state); returns the first epoch to run (the saved epoch is
    complete), on the schedule of the config resumed with. Optimizer states take this run's fused
    choice and its parameters' memory layout, whatever the file's."""
    config_lrs = {name: sched.base_lrs[0] for name, sched in schedulers.items()}  # the config's rates
    fused = {name: bool(opt.param_groups[0].get('fused')) for name, opt in optimizers.items()}
    last = load_checkpoint(checkpoint, generator=generator, kp_detector=kp_detector, discriminator=discriminator,
                           schedulers=schedulers, verbose=verbose, grad_scaler=grad_scaler, **optimizers)
    for name, opt in optimizers.items():
        keep_fused(opt, fused[name])
        match_param_layouts(opt)
    for name, sched in schedulers.items():
        follow_config_schedule(sched, config_lrs[name], milestones, last + 1)
    return last + 1


def follow_config_schedule(sched: MultiStepLR, base_lr: float, milestones, epoch: int) -> None:
    """Put a resumed run on the schedule of the config it is resumed with: the rate for `epoch`
    is base_lr * gamma ** (milestones passed), whatever the checkpoint's scheduler held (an original
    checkpoint has none, and its optimizer may hold an already lowered rate; a milestone edited in
    the config takes effect, as it does in the original code, which rebuilds its schedulers)."""
    sched.milestones = Counter(milestones)
    sched.base_lrs = [base_lr] * len(sched.optimizer.param_groups)
    sched.last_epoch = epoch
    passed = sum(1 for m in milestones if m <= epoch)
    for group in sched.optimizer.param_groups:
        group['initial_lr'] = base_lr
        group['lr'] = base_lr * sched.gamma ** passed
    sched._last_lr = [group['lr'] for group in sched.optimizer.param_groups]


def make_loader(dataset, tp, world: int, is_ddp: bool, num_workers: Optional[int], device: torch.device):
    """(DataLoader, DistributedSampler or None) over `num_repeats` passes of the dataset."""
    if tp.num_repeats > 1:
        dataset = DatasetRepeater(dataset, tp.num_repeats)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True) if is_ddp else None
    workers = num_workers if num_workers is not None else (
        tp.num_workers if tp.num_workers is not None else default_num_workers())
    if len(dataset) // world < tp.batch_size:
        raise ValueError('train_params.batch_size: %d is larger than the %d samples per process of one epoch; '
                         'lower it or raise train_params.num_repeats' % (tp.batch_size, len(dataset) // world))
    loader = DataLoader(dataset, batch_size=tp.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=workers, drop_last=True, worker_init_fn=worker_init_fn,
                        pin_memory=device.type == 'cuda', persistent_workers=workers > 0)
    return loader, sampler


def wrap_ddp(generator, discriminator, kp_detector, gan: bool, sync_bn: bool, device: torch.device, local_rank: int):
    """DistributedDataParallel wrappers (and SyncBatchNorm with `sync_bn`) under torchrun."""
    if sync_bn:
        generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        kp_detector = torch.nn.SyncBatchNorm.convert_sync_batchnorm(kp_detector)
    # the device's own index (run.py gives cuda:LOCAL_RANK; two processes may share one GPU)
    ids = [device.index if device.index is not None else local_rank] if device.type == 'cuda' else None
    wrap = lambda m: torch.nn.parallel.DistributedDataParallel(m, device_ids=ids)  # noqa: E731
    return wrap(generator), (wrap(discriminator) if gan else discriminator), wrap(kp_detector)


def train_step(x, generator_full, discriminator_full, optimizers, scaler, device, precision, gan: bool,
               mark: Optional[Callable[[str], None]] = None):
    """One optimisation step of generator + keypoint detector (and the discriminator with a GAN
    weight); returns (losses as device tensors, the generator's outputs). `mark(phase)` is called
    at the end of each phase ('forward', 'backward', 'optimizer'; bench/bench_train.py times them)."""
    mark = mark or (lambda phase: None)
    with autocast(device, precision):
        losses_generator, generated = generator_full(x)
    loss = sum(v.mean() for v in losses_generator.values())
    mark('forward')
    scaler.scale(loss).backward()
    mark('backward')
    scaler.step(optimizers['optimizer_generator'])
    scaler.step(optimizers['optimizer_kp_detector'])
    scaler.update()
    optimizers['optimizer_generator'].zero_grad(set_to_none=True)
    optimizers['optimizer_kp_detector'].zero_grad(set_to_none=True)
    mark('optimizer')
    losses = {k: v.detach().mean() for k, v in losses_generator.items()}
    if gan:
        optimizers['optimizer_discriminator'].zero_grad(set_to_none=True)
        with autocast(device, precision):
            losses_discriminator = discriminator_full(x, generated)
        disc_loss = sum(v.mean() for v in losses_discriminator.values())
        mark('forward')
        scaler.scale(disc_loss).backward()
        mark('backward')
        scaler.step(optimizers['optimizer_discriminator'])
        scaler.update()
        optimizers['optimizer_discriminator'].zero_grad(set_to_none=True)
        mark('optimizer')
        losses.update({k: v.detach().mean() for k, v in losses_discriminator.items()})
    return losses, generated


def make_grad_scaler(device: torch.device, options: StepOptions) -> torch.amp.GradScaler:
    """The loss scaler of fp16 training (disabled, a pass-through, for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type, enabled=options.precision == 'fp16')


def prepare_step(config, generator, discriminator, kp_detector, device: torch.device, options: StepOptions,
                 scaler: Optional[torch.amp.GradScaler] = None):
    """(generator_full, discriminator_full, GradScaler) over networks already placed (and wrapped);
    compiles the networks with options.compile. `scaler`: one already made (and resumed)."""
    generator_full, discriminator_full = build_full_models(kp_detector, generator, discriminator, config.train_params,
                                                           batch_keypoints=options.batch_keypoints)
    place_networks([generator_full, discriminator_full], device, options)
    if options.compile:
        # not the discriminator: under compilation, its spectral norm's in-place power iteration
        # (two calls per step) clashes with the saved tensors of the first call's backward; not
        # VGG19 (frozen convolutions and ReLUs, run from a copy cast once under autocast)
        compile_networks([kp_detector, generator])
    scaler = scaler if scaler is not None else make_grad_scaler(device, options)
    return generator_full, discriminator_full, scaler


def train(config, generator, discriminator, kp_detector, checkpoint: Optional[str], log_dir: str, dataset,
          device: torch.device, precision: str = 'fp32', num_workers: Optional[int] = None, sync_bn: bool = False,
          log_freq: int = 10, verbose: bool = False, max_steps: Optional[int] = None,
          max_minutes: Optional[float] = None, compile: bool = False, batch_keypoints: bool = False):
    """Train on `dataset` (a FramesDataset in training mode); `config` is a config.Config.

    `max_steps` / `max_minutes` stop after that many steps / minutes of training in total (a budget
    for smoke tests and the learning check), saving a checkpoint as at the end of an epoch. The run
    folder is created only once everything is set up (a bad checkpoint leaves none behind).
    `compile`: torch.compile the networks; `batch_keypoints`: see GeneratorFullModel (opt-in: it
    changes the BatchNorm statistics)."""
    tp = config.train_params
    is_ddp, rank, local_rank, world = ddp_info()
    options = step_options(device, precision, compile=compile, batch_keypoints=batch_keypoints)
    place_networks([generator, discriminator, kp_detector], device, options)
    optimizers, schedulers = make_optimizers(generator, discriminator, kp_detector, tp, fused=options.fused_adam)
    scaler = make_grad_scaler(device, options)
    start_epoch = 0 if checkpoint is None else resume(checkpoint, generator, discriminator, kp_detector, optimizers,
                                                      schedulers, tp.epoch_milestones, verbose=rank == 0,
                                                      grad_scaler=scaler)
    gan = tp.loss_weights.generator_gan != 0
    if is_ddp:
        generator, discriminator, kp_detector = wrap_ddp(generator, discriminator, kp_detector, gan, sync_bn,
                                                         device, local_rank)
    generator_full, discriminator_full, scaler = prepare_step(config, generator, discriminator, kp_detector, device,
                                                              options, scaler)
    loader, sampler = make_loader(dataset, tp, world, is_ddp, num_workers, device)
    models = {'generator': generator, 'discriminator': discriminator, 'kp_detector': kp_detector,
              **optimizers, **schedulers, **({'grad_scaler': scaler} if scaler.is_enabled() else {})}
    logger = Logger(log_dir, checkpoint_freq=tp.checkpoint_freq, visualizer_params=keywords(config.visualizer_params),
                    config=config.to_dict(), tensorboard=True) if rank == 0 else None
    budget, stopped_early = _Budget(max_steps, max_minutes), False
    consensus = _Consensus(is_ddp, device)

    def step(x):
        x = to_device(x, device, options)
        return (x,) + tuple(train_step(x, generator_full, discriminator_full, optimizers, scaler, device, precision,
                                       gan))

    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, tp.num_epochs):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                bar = tqdm(loader, desc='epoch %d/%d' % (epoch + 1, tp.num_epochs), disable=rank != 0,
                           leave=verbose, dynamic_ncols=True)
                x, generated, (interrupted, spent) = _run_epoch(bar, step, logger, epoch, log_freq, stop, budget,
                                                                consensus)
                if interrupted:
                    stopped_early = True
                    if logger is not None:
                        path = logger.save_interrupted(epoch - 1, models)  # the current epoch is incomplete
                        tqdm.write('interrupted: saved %s (resume with --checkpoint %s)' % (path, path))
                    break
                for name, sched in schedulers.items():
                    if name == 'scheduler_discriminator' and not gan:
                        # without the GAN loss its optimizer never steps, and stepping its scheduler is
                        # what torch warns about ('lr_scheduler.step() before optimizer.step()'): its
                        # rate follows the schedule directly, so a run resumed with the GAN on starts right
                        follow_config_schedule(sched, sched.base_lrs[0], tp.epoch_milestones, epoch + 1)
                    else:
                        sched.step()
                if logger is not None:
                    means = logger.log_epoch(epoch, models, x, generated)
                    if verbose:
                        tqdm.write('epoch %d: %s' % (epoch, ', '.join('%s %.4f' % kv for kv in means.items())))
                if spent or consensus.stop(False, budget.spent())[1]:
                    break
            if logger is not None and not stopped_early:
                logger.save_last()  # all epochs done, or the budget spent: the last epoch is on disk
    finally:
        if logger is not None:
            logger.close()
    return {'stopped_early': stopped_early, 'steps': budget.steps}


def _run_epoch(bar, step, logger, epoch: int, log_freq: int, stop, budget, consensus: _Consensus):
    """One pass over the loader (`bar`); `step(batch)` -> (batch on the device, losses, generated).
    Mean losses are logged every `log_freq` steps; stops early when `stop` is requested or the
    budget is spent, on any rank (`consensus`). Returns the last (batch, generated) for the epoch's
    visualisation and the agreed (interrupted, budget spent)."""
    sums, count, x, generated, halt = {}, 0, None, None, (False, False)
    for batch in bar:
        x, losses, generated = step(batch)
        for k, v in losses.items():  # device tensors: no sync here
            sums[k] = sums[k] + v.float() if k in sums else v.float()
        count, budget.steps = count + 1, budget.steps + 1
        halt = consensus.stop(stop.requested, budget.spent())
        if count % log_freq == 0 or any(halt):
            _flush(sums, count, logger, bar, epoch, consensus)
            sums, count = {}, 0
        if any(halt):
            break
    if count:
        _flush(sums, count, logger, bar, epoch, consensus)
    return x, generated, halt


def _flush(sums, count, logger, bar, epoch, consensus: _Consensus):
    """Pull the summed losses (their mean over ranks) off the device once per log interval; stop on
    a non-finite one, on every rank alike."""
    keys = list(sums)  # the same order on every rank (the same losses, made in the same order)
    values = dict(zip(keys, consensus.mean(torch.stack([sums[k] for k in keys])).tolist()))
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise TrainingStopped('non-finite loss %s at epoch %d: training stopped; the last good checkpoint '
                              'is kept unchanged (lower the learning rates or use --precision fp32)'
                              % (', '.join(bad), epoch))
    if logger is not None:
        logger.log_iter(values, count)
        bar.set_postfix({k: '%.3f' % (v / count) for k, v in values.items()}, refresh=False)
