"""Command line: train, reconstruct the test set, or animate test pairs, from one YAML config.

    python run.py --config config/vox-256.yaml                      # train
    python run.py --config config/vox-256.yaml --checkpoint CKPT    # resume training
    python run.py --config ... --mode reconstruction --checkpoint CKPT
    python run.py --config ... --mode animate --checkpoint CKPT
    torchrun --nproc_per_node 4 run.py --config ...                  # several GPUs (DDP)
    torchrun --nproc_per_node 2 run.py --config ... --mode reconstruction --checkpoint CKPT   # test videos split

Resuming continues in the checkpoint's own run folder when it is that run's newest state;
resuming from an older checkpoint of a run that went further needs --fork (a new run folder),
so no later checkpoint or log line is ever rewritten.
"""
import argparse
import contextlib
import datetime
import os
import sys
import time

MODES = ('train', 'reconstruction', 'animate')
# reconstruction/animate under torchrun: how long a rank may wait for the others at the final gather
# (NCCL's default is 10 minutes; one rank's share of long test videos can take far longer)
EVALUATION_TIMEOUT = datetime.timedelta(hours=3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--config', required=True, help='path to a YAML config (see config/)')
    p.add_argument('--mode', default='train', choices=MODES, help='what to run')
    p.add_argument('--log_dir', default='log', help='parent folder of run folders <config-name>_<timestamp>')
    p.add_argument('--checkpoint', default=None,
                   help='checkpoint to resume training from, or to run reconstruction/animate with')
    p.add_argument('--fork', action='store_true',
                   help='train: resume from a checkpoint that is not the newest of its run, in a new run folder')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N; default: cuda when available, else cpu')
    p.add_argument('--device_ids', default=None,
                   help='legacy: comma-separated GPU ids, e.g. 0,1; several ids start one DDP process per GPU '
                        '(the same as torchrun --nproc_per_node)')
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                   help='autocast precision; auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), '
                        'else fp32')
    p.add_argument('--seed', type=int, default=0, help='random seed (per process: seed + rank)')
    p.add_argument('--num_workers', type=int, default=None,
                   help='DataLoader workers; default: train_params.num_workers, else chosen from the machine')
    p.add_argument('--sync_bn', action='store_true',
                   help='synchronise BatchNorm statistics across DDP processes (CUDA only)')
    p.add_argument('--vgg_weights', default=None,
                   help="override train_params.vgg_weights: 'imagenet', 'seeded' (fixed random weights) or a path")
    p.add_argument('--max_steps', type=int, default=None, help='train: stop after this many steps in total')
    p.add_argument('--max_minutes', type=float, default=None, help='train: stop after this many minutes')
    p.add_argument('--batch_size', type=int, default=16, help='reconstruction/animate: driving frames per batch')
    p.add_argument('--visualize', action='store_true', help='animate: also write side-by-side videos with keypoints')
    p.add_argument('--compile', action='store_true',
                   help='train: torch.compile the networks (same numbers up to float rounding; compiling takes '
                        'minutes before the first step; see bench/bench_train.py)')
    p.add_argument('--verbose', action='store_true', help='print per-epoch losses')
    p.add_argument('--allow_damaged', action='store_true',
                   help='use the frames that decode of a video that holds or decodes fewer frames than its container '
                        'lists (a warning), instead of refusing it (training) or skipping it (evaluation)')
    return p


def torchrun_command(device_ids: str, argv) -> tuple:
    """--device_ids 0,1: (command, environment) that starts one process per id with torchrun, the
    other arguments passed on unchanged."""
    ids = [i.strip() for i in device_ids.split(',') if i.strip()]
    rest, skip = [], False
    for a in argv:
        if skip or a == '--device_ids':
            skip = not skip
            continue
        if not a.startswith('--device_ids='):
            rest.append(a)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=','.join(ids))
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(len(ids)),
            os.path.abspath(__file__)] + rest, env


def check_args(args) -> None:
    """Flags that need no config: one line naming the flag."""
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise FileNotFoundError('--checkpoint: file not found: %s' % args.checkpoint)
    if args.mode != 'train' and args.checkpoint is None:
        raise ValueError('--checkpoint: --mode %s needs a trained checkpoint' % args.mode)
    for flag in ('max_steps', 'batch_size', 'num_workers'):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == 'num_workers' else 1):
            raise ValueError('--%s: must be >= %d, got %d' % (flag, 0 if flag == 'num_workers' else 1, value))
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError('--max_minutes: must be > 0, got %g' % args.max_minutes)


def run_dir_for(args, config_path: str) -> tuple:
    """(folder, fresh). Training from scratch, evaluating a checkpoint that is not in a run folder,
    or --fork: a new timestamped run folder, still to be claimed (fresh); resuming from a run's
    newest checkpoint, or evaluating a run's checkpoint: that run's folder (an older checkpoint's
    resume without --fork is refused)."""
    from core.config import config_name
    from logger import resume_conflict, run_dir_name, run_folder_of

    fresh = os.path.join(args.log_dir, run_dir_name(config_name(config_path)))
    if args.checkpoint is None or run_folder_of(args.checkpoint) is None:
        return fresh, True
    if args.mode != 'train':
        return run_folder_of(args.checkpoint), False
    conflict = resume_conflict(args.checkpoint)
    if conflict and not args.fork:
        raise ValueError('--checkpoint: %s is not the newest state of its run (%s); resuming there would rewrite '
                         'later checkpoints and log lines: add --fork to continue from it in a new run folder'
                         % (args.checkpoint, conflict))
    if conflict:
        return fresh, True
    return run_folder_of(args.checkpoint), False


def claim_folders(args, config_path: str, rank: int) -> tuple:
    """(run folder, the mode's output folder or None for training, claimed): the folders this run
    writes into, created exclusively where they are new (claim_folder: a second run started in the
    same second gets its own), the same on every torchrun rank (rank 0 claims and tells the
    others). An evaluation writes into `<run>/<mode>/` of a run folder it created, or into a new
    `<run>/<mode>_<timestamp>/` of the checkpoint's run, so evaluations never share a folder.
    `claimed` lists the folders created here (removed again if the run fails before writing)."""
    import torch.distributed as dist

    from logger import claim_folder

    log_dir, fresh = run_dir_for(args, config_path)  # every rank checks, so all fail alike
    shared = [None, None, []]
    if rank == 0:
        claimed = [claim_folder(log_dir)] if fresh else []
        log_dir = claimed[0] if fresh else log_dir
        out_dir = None
        if args.mode != 'train':
            name = MODE_FOLDERS[args.mode]
            out_dir = os.path.join(log_dir, name) if fresh else claim_folder(
                os.path.join(log_dir, '%s_%s' % (name, time.strftime('%Y%m%d-%H%M%S'))))
            claimed += [] if fresh else [out_dir]
        if fresh and args.mode == 'train' and args.checkpoint is not None:
            print('--fork: resuming from %s in a new run folder %s' % (args.checkpoint, log_dir), file=sys.stderr)
        shared = [log_dir, out_dir, claimed]
    if dist.is_initialized():
        dist.broadcast_object_list(shared, src=0)
    return tuple(shared)


MODE_FOLDERS = {'reconstruction': 'reconstruction', 'animate': 'animation'}


def setup_device(args, is_ddp: bool, local_rank: int):
    """The torch device; under torchrun also the process group (nccl on GPU, gloo on CPU)."""
    import torch
    import torch.distributed as dist

    from core.runtime import resolve_device
    if not is_ddp:
        return resolve_device(args.device)
    if torch.cuda.is_available() and (args.device is None or args.device.startswith('cuda')):
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
    if args.sync_bn and device.type != 'cuda':
        raise ValueError('--sync_bn: synchronised BatchNorm needs CUDA devices (these processes run on the CPU); '
                         'drop --sync_bn')
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if args.mode == 'train':  # every step syncs the ranks: torch's default timeout reports a hang sooner
        dist.init_process_group(backend=backend)
    else:  # a rank done with its share waits for the others' (uneven video lengths) in one gather
        dist.init_process_group(backend=backend, timeout=EVALUATION_TIMEOUT)
    return device


def execute(args, config, device, precision: str, rank: int) -> str:
    """Build networks and data, claim the run's folders, run the mode; returns the folder written
    (the run folder for training, the evaluation's own folder for reconstruction / animate)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from core.config import keywords
    from frames_dataset import FramesDataset, PairedDataset
    from modules.networks import build_networks

    torch.manual_seed(args.seed + rank)
    np.random.seed((args.seed + rank) % 2 ** 32)
    generator, kp_detector, discriminator = build_networks(config.model_params, discriminator=args.mode == 'train')
    dataset = FramesDataset(is_train=args.mode == 'train', random_seed=args.seed, allow_damaged=args.allow_damaged,
                            **keywords(config.dataset_params))
    log_dir, out_dir, claimed = claim_folders(args, args.config, rank)
    if args.verbose and rank == 0:
        print('run folder: %s; device %s; precision %s' % (log_dir, device, precision))
    options = dict(device=device, precision=precision, batch_size=args.batch_size)
    try:
        if args.mode == 'train':
            from logger import RunLock
            from train import train
            with RunLock(log_dir) if rank == 0 else contextlib.nullcontext():
                train(config, generator, discriminator, kp_detector, args.checkpoint, log_dir, dataset, device,
                      precision=precision, num_workers=args.num_workers, sync_bn=args.sync_bn, verbose=args.verbose,
                      max_steps=args.max_steps, max_minutes=args.max_minutes, compile=args.compile)
        elif args.mode == 'reconstruction':
            from reconstruction import reconstruction
            reconstruction(config, generator, kp_detector, args.checkpoint, log_dir, dataset, out_dir=out_dir,
                           distributed=dist.is_initialized(), **options)
        else:
            from animate import animate
            pairs = PairedDataset(initial_dataset=dataset, number_of_pairs=config.animate_params.num_pairs,
                                  seed=args.seed)
            animate(config, generator, kp_detector, args.checkpoint, log_dir, pairs, out_dir=out_dir,
                    visualize=args.visualize, distributed=dist.is_initialized(), **options)
    except BaseException:
        if rank == 0:  # a run that failed before writing anything leaves no folder behind
            from logger import release_if_empty
            for folder in reversed(claimed):
                release_if_empty(folder)
        raise
    return out_dir or log_dir
    return log_dir


def user_errors() -> tuple:
    """The exceptions that are the user's mistakes: one line, exit 1."""
    from core.checkpoint import CheckpointError
    from core.config import ConfigError
    from frames_dataset import DatasetError
    from media.images import MediaError
    from media.outputs import OutputError
    from modules.model import VGGWeightsError
    from train import TrainingStopped
    return (ConfigError, DatasetError, CheckpointError, VGGWeightsError, TrainingStopped, MediaError, OutputError,
            ValueError, FileNotFoundError, PermissionError)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    import torch.distributed as dist

    from core.config import load_config
    from core.runtime import ddp_info, resolve_precision
    from media.outputs import exit_on_sigterm
    exit_on_sigterm()  # evaluation: writers discard their temporaries (training saves a checkpoint instead)
    is_ddp, rank, local_rank, _ = ddp_info()
    errors = user_errors()
    try:
        if args.device_ids and not is_ddp:
            ids = [i for i in args.device_ids.split(',') if i.strip()]
            if len(ids) > 1:
                command, env = torchrun_command(args.device_ids, argv)
                os.execvpe(command[0], command, env)  # this process becomes the launcher
            args.device = args.device or 'cuda:%s' % ids[0].strip()
        check_args(args)
        config = load_config(args.config, mode=args.mode)
        if args.vgg_weights is not None:
            config.train_params.vgg_weights = args.vgg_weights
        device = setup_device(args, is_ddp, local_rank)
        precision = resolve_precision(args.precision, device)
        log_dir = execute(args, config, device, precision, rank)
        if rank == 0:
            print(log_dir)
        return 0
    except errors as exc:
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        # an error raised in a DataLoader worker comes back with the worker's traceback: keep its last line
        msg = (lines[-1] if lines[0].startswith('Caught ') else lines[0]) if lines else type(exc).__name__
        print('error: %s' % msg, file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as e:
        print('interrupted', file=sys.stderr)
        return e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
    finally:
        if is_ddp and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    from core.cli import one_line_warnings
    one_line_warnings('run.py')
    sys.exit(main())
