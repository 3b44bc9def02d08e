"""Device, precision and process facts shared by training and inference: which device, which
autocast precision, how many CPUs, which DDP rank, the bare module under a DDP wrapper, and how
evaluation work is shared over torchrun processes."""
import contextlib
import os
import warnings
from typing import Optional

import torch
import torch.distributed as dist

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def resolve_device(name: Optional[str] = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (cuda when available, else cpu); errors name --device.

    'cuda:N' also makes GPU N the current CUDA device of this thread (torch.cuda.set_device):
    what runs without naming a device (cuDNN/cuBLAS handles, NCCL, torch.compile's kernels,
    torch.cuda.synchronize() and the memory statistics) then goes to the GPU the user named."""
    if not name:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError("--device: '%s' is not a device (use cpu, cuda or cuda:N)" % name) from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device: %s asked for, but CUDA is not available on this machine' % name)
    if device.type == 'cuda' and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError('--device: %s asked for, but only %d CUDA device(s) exist'
                             % (name, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU runs bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; below (T4 7.5, V100 7.0) bf16 is emulated
FP16_MIN_CAPABILITY = (7, 0)  # Volta: fp16 tensor cores; Pascal's GTX 10xx/P40 (6.1) run fp16 at 1/64 speed


def cuda_capability(device: torch.device) -> tuple:
    """(major, minor) compute capability of a CUDA device (index-less: the current one)."""
    return tuple(torch.cuda.get_device_capability(device))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> on CUDA bf16 from compute capability 8.0 (Ampere) on, fp16 from 7.0 (Volta,
    Turing; training adds a GradScaler), fp32 below (no tensor cores); on a CPU bf16 where it is
    native (AVX512-BF16/AMX), else fp32. The same for training and inference (on such a CPU the
    vox-256 training step at 64x64 ran 1.9x faster in bf16 with losses within 1% of fp32 over 50
    steps, bench/bench_train.py).

    The capability is that of `device` itself, not of the current GPU, and not
    torch.cuda.is_bf16_supported(), which says True on a T4 or V100 where bf16 is emulated.
    An explicit bf16 there is kept, with a warning."""
    if precision not in PRECISIONS:
        raise ValueError('--precision: %r is not one of %s' % (precision, ', '.join(PRECISIONS)))
    if precision != 'auto':
        if precision == 'fp16' and device.type == 'cpu':
            raise ValueError('--precision: fp16 is for CUDA; on CPU use bf16 or fp32')
        if precision == 'bf16' and device.type == 'cuda' and cuda_capability(device) < BF16_MIN_CAPABILITY:
            warnings.warn('--precision: bf16 on %s (compute capability %d.%d) is emulated and slow; --precision auto '
                          'picks %s there' % ((device,) + cuda_capability(device) + (resolve_precision('auto', device),)))
        return precision
    if device.type == 'cuda':
        capability = cuda_capability(device)
        return ('bf16' if capability >= BF16_MIN_CAPABILITY else
                'fp16' if capability >= FP16_MIN_CAPABILITY else 'fp32')
    if device.type == 'cpu' and cpu_has_native_bf16():
        return 'bf16'
    return 'fp32'


def autocast_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision ('fp32', 'bf16', 'fp16')."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str):
    """A torch.autocast context for the resolved precision (a no-op for fp32)."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ddp_info():
    """(is_ddp, rank, local_rank, world_size) from torchrun's environment."""
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 0, 1
    return True, int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', 0)), int(os.environ['WORLD_SIZE'])


def share_work(items, distributed: bool) -> tuple:
    """(this process's share of `items`, rank, world size). Under torchrun (process group
    initialised) rank r of W takes items r, r+W, ..., once every process has got here (each checks
    all outputs first, so they all stop alike or none does); otherwise all items, 0, 1."""
    items = list(items)
    if not distributed:
        return items, 0, 1
    dist.barrier()
    rank, world = dist.get_rank(), dist.get_world_size()
    return items[rank::world], rank, world


def merge_shares(results: list, distributed: bool, everywhere: bool = True) -> Optional[list]:
    """The results of share_work's shares, one per item, back in the items' order: on every
    process (`everywhere`), or on rank 0 only (the others get None)."""
    if not distributed:
        return results
    world = dist.get_world_size()
    parts = [None] * world
    if everywhere:
        dist.all_gather_object(parts, results)
    else:
        rank0 = dist.get_rank() == 0
        dist.gather_object(results, parts if rank0 else None, dst=0)
        if not rank0:
            return None
    return [parts[k % world][k // world] for k in range(sum(len(part) for part in parts))]


def unwrap(module: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """The bare module under DDP / DataParallel / torch.compile wrappers."""
    while module is not None:
        inner = getattr(module, 'module', None) or getattr(module, '_orig_mod', None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner
    return module
