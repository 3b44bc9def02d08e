"""Checkpoint files: the original's layout, loaded safely, saved atomically.

Layout (as the published `*-cpk.pth.tar`): {'generator', 'kp_detector', 'discriminator',
'optimizer_generator', 'optimizer_kp_detector', 'optimizer_discriminator', 'epoch'}; this project
adds 'config' (the resolved config dict), 'scheduler_*' states and 'format_version'. Files
without discriminator or optimizers load for inference. A checkpoint is untrusted input: it is
always read with `weights_only=True`, so a pickle carrying code is refused, never executed.
"""
import os
import pickle
import tempfile
from typing import Any, Dict, Optional

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def read_checkpoint(path: str) -> Dict[str, Any]:
    """torch.load with weights_only=True (zip and legacy formats), with one-line errors."""
    if not os.path.isfile(path):
        raise CheckpointError('checkpoint not found: %s' % path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError('%s: refused: the file holds pickled objects other than tensors and containers '
                              '(possibly code); it was not loaded and nothing in it was run (%s)'
                              % (path, first[:200])) from None
    except Exception as exc:  # truncated, not a torch file, ...
        raise CheckpointError('%s: not a readable checkpoint (%s: %s)'
                              % (path, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else '')) from None
    if not isinstance(state, dict):
        raise CheckpointError('%s: expected a dict of state dicts, found %s' % (path, type(state).__name__))
    return state


def check_state_dict(module: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, path: str) -> None:
    """Raise naming the first missing/unexpected tensor or shape mismatch."""
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError('%s: %s.%s is missing from the checkpoint (does the config match it?)'
                                  % (path, name, key))
        got = tuple(state[key].shape) if torch.is_tensor(state[key]) else None
        if got != tuple(value.shape):
            raise CheckpointError('%s: %s.%s has shape %s, the config expects %s'
                                  % (path, name, key, list(got) if got is not None else got, list(value.shape)))
    for key in state:
        if key not in own:
            raise CheckpointError('%s: %s.%s is in the checkpoint but not in the model built from the config'
                                  % (path, name, key))


def load_into(module: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, path: str) -> None:
    check_state_dict(module, state, name, path)
    module.load_state_dict(state)


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`: an interrupted
    save leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def unwrap(module: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """The bare module under DDP / DataParallel wrappers."""
    while module is not None and hasattr(module, 'module') and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module


def slim(src: str, dst: str, half: bool = False) -> Dict[str, Any]:
    """An inference-only copy: generator, kp_detector, epoch and config (no optimizers/discriminator)."""
    state = read_checkpoint(src)
    out = {k: state[k] for k in ('generator', 'kp_detector', 'epoch', 'config') if k in state}
    if half:  # float16 storage halves the file; loading casts back to the model's float32
        for k in ('generator', 'kp_detector'):
            out[k] = {n: (t.half() if t.is_floating_point() else t) for n, t in out[k].items()}
    out['format_version'] = FORMAT_VERSION
    save_atomic(out, dst)
    return out


def main(argv=None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(description='Write an inference-only copy of a checkpoint '
                                            '(generator + keypoint detector + config).',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('src', help='training checkpoint (.pth.tar)')
    p.add_argument('dst', help='where to write the slim checkpoint')
    p.add_argument('--half', action='store_true', help='store weights as float16 (half the size)')
    args = p.parse_args(argv)
    try:
        slim(args.src, args.dst, args.half)
    except CheckpointError as exc:
        print('error: %s' % exc, file=sys.stderr)
        return 1
    print('%s: %.1f MB' % (args.dst, os.path.getsize(args.dst) / 2 ** 20))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
