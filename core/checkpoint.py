"""Checkpoint files: the original's layout, loaded safely, saved atomically.

Layout (as the published `*-cpk.pth.tar`): {'generator', 'kp_detector', 'discriminator',
'optimizer_generator', 'optimizer_kp_detector', 'optimizer_discriminator', 'epoch'}; this project
adds 'config' (the resolved config dict), 'scheduler_*' states, 'format_version' and, from fp16
runs, 'grad_scaler' (the loss scale and its growth tracker). Files
without discriminator or optimizers load for inference. A checkpoint is untrusted input: it is
always read with `weights_only=True`, so a pickle carrying code is refused, never executed.

    read_checkpoint(path)            -> the dict; one-line errors tell apart a file that is not a
                                        checkpoint, a truncated one, and one that holds code
    load_checkpoint(path, generator=..., kp_detector=..., optimizer_generator=..., grad_scaler=..., ...) -> epoch
    load_state(module, state, name, path)   shape-checked load (names the first mismatch);
                                        `assign=True` adopts the file's tensors (meta-built nets)
    save_atomic(obj, path)           temp file in the same folder + fsync + rename
    slim(src, dst, half)             an inference-only copy (`python -m core.checkpoint SRC DST --half`)
"""
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional

import torch

from core.runtime import unwrap
from media.outputs import temp_path

FORMAT_VERSION = 1
MODEL_KEYS = ('generator', 'kp_detector', 'discriminator')
OPTIMIZER_KEYS = ('optimizer_generator', 'optimizer_kp_detector', 'optimizer_discriminator')
# torch.save's legacy (non-zip) format starts with a pickled magic number
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_container(path: str) -> None:
    """Tell a file that is no checkpoint at all, or a cut one, before torch.load guesses."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError('%s: empty file, not a checkpoint' % path)
    with open(path, 'rb') as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(b'PK\x03\x04'):
        if not zipfile.is_zipfile(path):
            raise CheckpointError('%s: truncated checkpoint (the zip archive has no end; an interrupted '
                                  'download or copy?)' % path)
    elif not head.startswith(_LEGACY_MAGIC):
        raise CheckpointError('%s: not a PyTorch checkpoint (neither torch.save\'s zip format nor its legacy '
                              'format)' % path)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """torch.load with weights_only=True (zip and legacy formats), with one-line errors."""
    if not os.path.isfile(path):
        raise CheckpointError('checkpoint not found: %s' % path)
    _check_container(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if 'Unsupported global' in text or 'GLOBAL' in text or 'Unsupported operand' in text:
            raise CheckpointError('%s: refused: the file holds pickled objects other than tensors and containers '
                                  '(it may carry code); it was not loaded and nothing in it was run (%s)'
                                  % (path, _first_line(exc))) from None
        raise CheckpointError('%s: corrupt checkpoint (%s)' % (path, _first_line(exc))) from None
    except (EOFError, RuntimeError, struct.error) as exc:  # struct: a legacy file cut mid-record
        if isinstance(exc, (EOFError, struct.error)) or 'EOF' in str(exc) or 'central directory' in str(exc):
            raise CheckpointError('%s: truncated checkpoint (%s)' % (path, _first_line(exc))) from None
        raise CheckpointError('%s: corrupt checkpoint (%s)' % (path, _first_line(exc))) from None
    except Exception as exc:  # other damage inside an archive that looked whole
        raise CheckpointError('%s: corrupt checkpoint (%s: %s)' % (path, type(exc).__name__, _first_line(exc))) from None
    if not isinstance(state, dict):
        raise CheckpointError('%s: expected a dict of state dicts, found %s' % (path, type(state).__name__))
    return state


def check_state_dict(module: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, path: str) -> None:
    """Raise naming the first missing/unexpected tensor or shape mismatch."""
    own = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError('%s: %s is not a state dict' % (path, name))
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


def load_state(module: torch.nn.Module, state: Dict[str, torch.Tensor], name: str, path: str,
               assign: bool = False) -> None:
    """Shape-checked load_state_dict. With `assign` the module adopts the file's tensors (cast to
    the module's float dtype): a network built on the meta device needs no random initialisation."""
    module = unwrap(module)
    check_state_dict(module, state, name, path)
    if assign:
        own = module.state_dict()
        state = {k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
                 for k, v in state.items()}
    module.load_state_dict(state, assign=assign)


def load_checkpoint(path: str, generator=None, kp_detector=None, discriminator=None, optimizer_generator=None,
                    optimizer_kp_detector=None, optimizer_discriminator=None, schedulers: Optional[dict] = None,
                    verbose: bool = True, assign: bool = False, state: Optional[dict] = None,
                    grad_scaler=None) -> int:
    """Load what is given from a checkpoint (weights_only=True); returns its epoch.

    The generator and keypoint detector must be in the file; a missing discriminator or optimizer
    is reported (verbose) and left as it is. `grad_scaler`: an fp16 run's torch.amp.GradScaler,
    restored where the file has its state (a file without, or a disabled scaler: left as it is).
    `state`: the already read dict (to read once)."""
    checkpoint = read_checkpoint(path) if state is None else state
    for name, module in (('generator', generator), ('kp_detector', kp_detector)):
        if module is not None:
            if name not in checkpoint:
                raise CheckpointError('%s: holds no %s' % (path, name))
            load_state(module, checkpoint[name], name, path, assign=assign)
    if discriminator is not None:
        if 'discriminator' in checkpoint:
            load_state(discriminator, checkpoint['discriminator'], 'discriminator', path, assign=assign)
        elif verbose:
            print('%s: no discriminator in the checkpoint; it stays randomly initialised' % path)
    for name, opt in zip(OPTIMIZER_KEYS, (optimizer_generator, optimizer_kp_detector, optimizer_discriminator)):
        if opt is not None:
            if name in checkpoint:
                opt.load_state_dict(checkpoint[name])
            elif verbose:
                print('%s: no %s in the checkpoint; it starts fresh' % (path, name))
    for name, sched in (schedulers or {}).items():
        if name in checkpoint:
            sched.load_state_dict(checkpoint[name])
    if grad_scaler is not None and grad_scaler.is_enabled():
        if checkpoint.get('grad_scaler'):
            grad_scaler.load_state_dict(checkpoint['grad_scaler'])
        elif verbose:
            print('%s: no grad_scaler in the checkpoint; the fp16 loss scale starts fresh' % path)
    return checkpoint.get('epoch', 0)


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`: an interrupted
    save leaves the previous file intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path, '.tmp')
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def checkpoint_config(state: Dict[str, Any]) -> Optional[dict]:
    """The resolved config a checkpoint of this project carries, or None (published files)."""
    config = state.get('config')
    return config if isinstance(config, dict) else None


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
    if os.path.exists(args.dst) and os.path.samefile(args.src, args.dst):
        print('error: dst: %s is the source checkpoint itself' % args.dst, file=sys.stderr)
        return 1
    try:
        slim(args.src, args.dst, args.half)
    except CheckpointError as exc:
        print('error: %s' % exc, file=sys.stderr)
        return 1
    print('%s: %.1f MB' % (args.dst, os.path.getsize(args.dst) / 2 ** 20))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
