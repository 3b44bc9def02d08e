"""Command line: train, reconstruct the test set, or animate test pairs, from one YAML config.

    python run.py --config config/vox-256.yaml                      # train
    python run.py --config config/vox-256.yaml --checkpoint CKPT    # resume training
    python run.py --config ... --mode reconstruction --checkpoint CKPT
    python run.py --config ... --mode animate --checkpoint CKPT
    torchrun --nproc_per_node 4 run.py --config ...                  # several GPUs (DDP)
"""
import argparse
import os
import sys
import time

MODES = ('train', 'reconstruction', 'animate')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--config', required=True, help='path to a YAML config (see config/)')
    p.add_argument('--mode', default='train', choices=MODES, help='what to run')
    p.add_argument('--log_dir', default='log', help='parent folder of run folders <config-name>_<timestamp>')
    p.add_argument('--checkpoint', default=None,
                   help='checkpoint to resume training from, or to run reconstruction/animate with')
    p.add_argument('--device', default=None, help='cpu, cuda or cuda:N; default: cuda when available, else cpu')
    p.add_argument('--device_ids', default=None,
                   help='legacy: comma-separated GPU ids, e.g. 0,1; several ids start one DDP process per GPU '
                        '(the same as torchrun --nproc_per_node)')
    p.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                   help='autocast precision; auto: bf16 on CUDA and on CPUs with native bf16 for inference, '
                        'fp32 for training on CPU')
    p.add_argument('--seed', type=int, default=0, help='random seed (per process: seed + rank)')
    p.add_argument('--num_workers', type=int, default=None,
                   help='DataLoader workers; default: train_params.num_workers, else chosen from the machine')
    p.add_argument('--sync_bn', action='store_true', help='synchronise BatchNorm statistics across DDP processes')
    p.add_argument('--vgg_weights', default=None,
                   help="override train_params.vgg_weights: 'imagenet', 'seeded' (fixed random weights) or a path")
    p.add_argument('--max_steps', type=int, default=None, help='train: stop after this many steps in total')
    p.add_argument('--max_minutes', type=float, default=None, help='train: stop after this many minutes')
    p.add_argument('--batch_size', type=int, default=16, help='reconstruction/animate: driving frames per batch')
    p.add_argument('--visualize', action='store_true', help='animate: also write side-by-side videos with keypoints')
    p.add_argument('--verbose', action='store_true', help='print per-epoch losses')
    return p


def run_dir_for(args, config_path: str) -> str:
    """Resuming from <run>/checkpoints/X keeps writing into <run>; otherwise a new timestamped run."""
    from config import config_name
    from logger import run_dir_name
    if args.checkpoint is not None:
        folder = os.path.dirname(os.path.abspath(args.checkpoint))
        if os.path.basename(folder) == 'checkpoints' and os.path.isfile(
                os.path.join(os.path.dirname(folder), 'config.yaml')):
            return os.path.dirname(folder)
    return os.path.join(args.log_dir, run_dir_name(config_name(config_path)))


def relaunch_with_torchrun(args, argv) -> None:
    """--device_ids 0,1: start one process per id with torchrun (this process becomes the launcher)."""
    ids = [i.strip() for i in args.device_ids.split(',') if i.strip()]
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == '--device_ids':
            skip = True
            continue
        if a.startswith('--device_ids='):
            continue
        rest.append(a)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=','.join(ids))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(len(ids)),
           os.path.abspath(__file__)] + rest
    os.execvpe(cmd[0], cmd, env)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)

    import torch
    import torch.distributed as dist

    from checkpoint import CheckpointError
    from config import ConfigError, load_config
    from frames_dataset import DatasetError
    from logger import write_config
    from modules.model import VGGWeightsError, build_networks
    from runtime import resolve_device, resolve_precision
    from train import TrainingStopped, ddp_info
    user_errors = (ConfigError, DatasetError, CheckpointError, VGGWeightsError, TrainingStopped, ValueError,
                   FileNotFoundError, PermissionError)
    try:
        from video_io import MediaError
        user_errors += (MediaError,)
    except ImportError:
        pass

    is_ddp, rank, local_rank, world = ddp_info()
    try:
        if args.device_ids and not is_ddp:
            ids = [i for i in args.device_ids.split(',') if i.strip()]
            if len(ids) > 1:
                relaunch_with_torchrun(args, argv)
            if args.device is None:
                args.device = 'cuda:%s' % ids[0].strip()
        if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
            raise FileNotFoundError('--checkpoint: file not found: %s' % args.checkpoint)
        if args.mode != 'train' and args.checkpoint is None:
            raise ValueError('--checkpoint: --mode %s needs a trained checkpoint' % args.mode)
        config = load_config(args.config)
        if args.vgg_weights is not None:
            config.train_params.vgg_weights = args.vgg_weights
        if is_ddp:
            if torch.cuda.is_available() and (args.device is None or args.device.startswith('cuda')):
                torch.cuda.set_device(local_rank)
                device = torch.device('cuda', local_rank)
            else:
                device = torch.device('cpu')
            dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
        else:
            device = resolve_device(args.device)
        if args.mode == 'train':
            # autocast training on CPU only when asked: 'auto' trains in fp32 there
            precision = args.precision
            if precision == 'auto':
                precision = resolve_precision('auto', device) if device.type == 'cuda' else 'fp32'
            else:
                precision = resolve_precision(precision, device)
        else:
            precision = resolve_precision(args.precision, device)

        torch.manual_seed(args.seed + rank)
        import numpy as np
        np.random.seed((args.seed + rank) % 2 ** 32)

        cfg = config.to_dict()
        generator, kp_detector, discriminator = build_networks(cfg['model_params'])
        from frames_dataset import FramesDataset, PairedDataset
        dataset = FramesDataset(is_train=args.mode == 'train', random_seed=args.seed, **cfg['dataset_params'])
        if args.mode == 'animate':
            dataset = PairedDataset(initial_dataset=dataset, number_of_pairs=config.animate_params.num_pairs,
                                    seed=args.seed)
        log_dir = run_dir_for(args, args.config)
        if rank == 0:
            os.makedirs(log_dir, exist_ok=True)
            if not os.path.exists(os.path.join(log_dir, 'config.yaml')):
                write_config(cfg, os.path.join(log_dir, 'config.yaml'))
        if args.verbose and rank == 0:
            print('run folder: %s; device %s; precision %s' % (log_dir, device, precision))

        if args.mode == 'train':
            from train import train
            train(config, generator, discriminator, kp_detector, args.checkpoint, log_dir, dataset, device,
                  precision=precision, num_workers=args.num_workers, sync_bn=args.sync_bn,
                  verbose=args.verbose, max_steps=args.max_steps, max_minutes=args.max_minutes)
        elif args.mode == 'reconstruction':
            from reconstruction import reconstruction
            reconstruction(config, generator, kp_detector, args.checkpoint, log_dir, dataset, device=device,
                           precision=precision, batch_size=args.batch_size)
        else:
            from animate import animate
            animate(config, generator, kp_detector, args.checkpoint, log_dir, dataset, device=device,
                    precision=precision, batch_size=args.batch_size, visualize=args.visualize)
        if rank == 0:
            print(log_dir)
        return 0
    except user_errors as exc:
        lines = [l for l in str(exc).strip().splitlines() if l.strip()]
        # an error raised in a DataLoader worker comes back with the worker's traceback: keep its last line
        msg = (lines[-1] if lines[0].startswith('Caught ') else lines[0]) if lines else type(exc).__name__
        print('error: %s' % msg, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    finally:
        if is_ddp and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
