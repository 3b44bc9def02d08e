"""Run directory, log.txt, checkpoints and training visualisations.

`Logger.load_cpk(path, generator=..., ...) -> epoch` keeps the original's signature. Run folders
are `log/<config-name>_<timestamp>` holding the resolved `config.yaml`, `log.txt` (per-epoch mean
losses), `checkpoints/<epoch>-checkpoint.pth.tar` and `train-vis/<epoch>-rec.png`.
"""
import colorsys
import itertools
import json
import os
import re
import shutil
import socket
import time
from typing import Dict, List, Optional

import imageio.v2 as imageio
import numpy as np
import torch
import yaml
from skimage.draw import disk

from core.checkpoint import FORMAT_VERSION, load_checkpoint, save_atomic
from core.runtime import unwrap
from media.outputs import alive_here, clean_stale_temps, writer_id


def run_dir_name(config_name: str, when: Optional[float] = None) -> str:
    """'<config-name>_<YYYYmmdd-HHMMSS>', no spaces."""
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(when))
    return '%s_%s' % (config_name.replace(' ', '_'), stamp)


def claim_folder(path: str) -> str:
    """Create the folder `path`, or else `path-2`, `path-3`, ...: the first that does not exist yet,
    atomically (os.mkdir fails for all but the first process to create a name), so two runs
    started in the same second get a folder each. Returns the folder claimed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for n in itertools.count(1):
        candidate = path if n == 1 else '%s-%d' % (path, n)
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue


def release_if_empty(folder: str) -> bool:
    """Remove a folder claimed for a run that failed before writing anything (it holds no file,
    only empty folders); returns whether it was removed."""
    for _, _, files in os.walk(folder):
        if files:
            return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


LOCK_NAME = '.fomm-training'


class RunBusyError(ValueError):
    """The run folder is being trained by another process; the message says by whom and what to do."""


class RunLock:
    """`<run>/.fomm-training`, created exclusively while a process trains in the run folder, so a
    second training of the same run (resuming a run that is still training) is refused instead of
    interleaving log.txt and overwriting checkpoints. The lock of a process that died on this
    machine is taken over; one left by another machine or container (its pid means nothing here)
    must be removed by hand, and the message says so."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def __enter__(self) -> 'RunLock':
        mine = {'writer': writer_id(), 'host': socket.gethostname(), 'pid': os.getpid(),
                'since': time.strftime('%Y-%m-%d %H:%M:%S')}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get('writer') == mine['writer'] and not alive_here(int(holder.get('pid', -1))):
                    os.remove(self.path)  # a training on this machine that was killed: take over
                    continue
                raise RunBusyError('--checkpoint: the run %s is being trained now by pid %s on %s (since %s): wait for '
                                   'it to end, or add --fork to continue in a new run folder; if no such process runs '
                                   'any more, remove %s' % (os.path.dirname(self.path), holder.get('pid', '?'),
                                                            holder.get('host', '?'), holder.get('since', '?'), self.path))
            with os.fdopen(fd, 'w') as f:
                json.dump(mine, f)
            self.held = True
            return self
        raise RunBusyError('%s: could not take the run lock' % self.path)

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except OSError:
                pass
            self.held = False


class Logger:
    """Collects losses, writes log.txt, visualisations and checkpoints for one training run."""

    def __init__(self, log_dir, checkpoint_freq=100, visualizer_params=None, zfill_num=8, log_file_name='log.txt',
                 config: Optional[dict] = None, tensorboard: bool = True):
        self.log_dir = log_dir
        self.cpk_dir = os.path.join(log_dir, 'checkpoints')
        self.visualizations_dir = os.path.join(log_dir, 'train-vis')
        for d in (self.cpk_dir, self.visualizations_dir):
            os.makedirs(d, exist_ok=True)
        clean_stale_temps(self.cpk_dir)  # left by a run killed while saving
        if config is not None and not os.path.exists(os.path.join(log_dir, 'config.yaml')):
            write_config(config, os.path.join(log_dir, 'config.yaml'))
        self.log_file = open(os.path.join(log_dir, log_file_name), 'a')
        self.zfill_num = zfill_num
        self.visualizer = Visualizer(**(visualizer_params or {}))
        self.checkpoint_freq = checkpoint_freq
        self.config = config
        self.epoch = -1
        self.saved_epoch = None  # the last epoch written as a numbered checkpoint
        self.models: Dict[str, object] = {}
        self.loss_sums: Dict[str, float] = {}
        self.loss_count = 0
        self.names: Optional[List[str]] = None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=os.path.join(log_dir, 'tensorboard'))
            except Exception:  # tensorboard is optional
                self.tb = None

    # ----------------------------------------------------------------------------- losses
    def log_iter(self, losses: Dict[str, float], count: int = 1) -> None:
        """Add losses (already summed over `count` steps) to the running epoch totals."""
        for k, v in losses.items():
            self.loss_sums[k] = self.loss_sums.get(k, 0.0) + float(v)
        self.loss_count += count

    def epoch_means(self) -> Dict[str, float]:
        return {k: v / max(self.loss_count, 1) for k, v in self.loss_sums.items()}

    def log_scores(self) -> Dict[str, float]:
        means = self.epoch_means()
        text = '; '.join('%s - %.5f' % (k, v) for k, v in means.items())
        self.log_file.write('%s) %s\n' % (str(self.epoch).zfill(self.zfill_num), text))
        self.log_file.flush()
        if self.tb is not None:
            for k, v in means.items():
                self.tb.add_scalar('loss/' + k, v, self.epoch)
            self.tb.flush()
        self.loss_sums, self.loss_count = {}, 0
        return means

    def log_epoch(self, epoch, models, inp=None, out=None) -> Dict[str, float]:
        """End of epoch `epoch` (0-based): scores, a checkpoint every `checkpoint_freq`, a picture."""
        self.epoch = epoch
        self.models = models
        if (epoch + 1) % self.checkpoint_freq == 0:
            self.save_cpk()
        means = self.log_scores()
        if inp is not None and out is not None:
            self.visualize_rec(inp, out)
        return means

    def visualize_rec(self, inp, out) -> str:
        image = self.visualizer.visualize(inp['driving'], inp['source'], out)
        path = os.path.join(self.visualizations_dir, '%s-rec.png' % str(self.epoch).zfill(self.zfill_num))
        imageio.imwrite(path, image)
        return path

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        state = {}
        for k, v in self.models.items():
            v = unwrap(v)
            if v is not None:
                state[k] = v.state_dict()
        state['epoch'] = self.epoch
        state['format_version'] = FORMAT_VERSION
        if self.config is not None:
            state['config'] = self.config
        return state

    def save_cpk(self, emergent=False) -> str:
        """Write `<epoch>-checkpoint.pth.tar` (temp file + rename). An emergent save (interrupt)
        writes `checkpoint.pth.tar` and never replaces a regular checkpoint."""
        name = 'checkpoint.pth.tar' if emergent else '%s-checkpoint.pth.tar' % str(self.epoch).zfill(self.zfill_num)
        path = os.path.join(self.cpk_dir, name)
        save_atomic(self.checkpoint_state(), path)
        if not emergent:
            self.saved_epoch = self.epoch
        return path

    def save_last(self) -> Optional[str]:
        """At the end of training (all epochs, or a step/time budget): the last complete epoch as a
        numbered checkpoint, unless log_epoch already wrote it."""
        if self.epoch < 0 or self.saved_epoch == self.epoch:
            return None
        return self.save_cpk()

    def save_interrupted(self, last_complete_epoch: int, models: dict) -> str:
        """Ctrl-C / SIGTERM mid-epoch: `checkpoint.pth.tar` holding the current weights, labelled
        with the last complete epoch (resuming repeats the interrupted one)."""
        self.epoch, self.models = last_complete_epoch, models
        return self.save_cpk(emergent=True)

    @staticmethod
    def load_cpk(checkpoint_path, generator=None, discriminator=None, kp_detector=None, optimizer_generator=None,
                 optimizer_discriminator=None, optimizer_kp_detector=None, schedulers: Optional[dict] = None,
                 verbose: bool = True):
        """The original's signature: load what is given (weights_only=True); returns the epoch.
        See checkpoint.load_checkpoint."""
        return load_checkpoint(checkpoint_path, generator=generator, kp_detector=kp_detector,
                               discriminator=discriminator, optimizer_generator=optimizer_generator,
                               optimizer_kp_detector=optimizer_kp_detector,
                               optimizer_discriminator=optimizer_discriminator, schedulers=schedulers,
                               verbose=verbose)

    def close(self):
        self.log_file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.close()


CHECKPOINT_NAME = re.compile(r'^(\d+)-checkpoint\.pth\.tar$')
LOG_LINE = re.compile(r'^(\d+)\)')


def run_folder_of(checkpoint_path: str) -> Optional[str]:
    """The run folder a checkpoint sits in (<run>/checkpoints/<file> with <run>/config.yaml), or None."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    run = os.path.dirname(folder)
    if os.path.basename(folder) == 'checkpoints' and os.path.isfile(os.path.join(run, 'config.yaml')):
        return run
    return None


def checkpoint_epoch(checkpoint_path: str) -> int:
    """A checkpoint's epoch: from a numbered name, else read from the file (memory-mapped)."""
    match = CHECKPOINT_NAME.match(os.path.basename(checkpoint_path))
    if match:
        return int(match.group(1))
    try:
        state = torch.load(checkpoint_path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError:  # the legacy format cannot be memory-mapped
        state = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
    return int(state.get('epoch', 0)) if isinstance(state, dict) else 0


def resume_conflict(checkpoint_path: str) -> Optional[str]:
    """Why resuming from `checkpoint_path` inside its own run folder would rewrite that run's
    history (a later numbered checkpoint, or log.txt lines of later epochs), or None."""
    run = run_folder_of(checkpoint_path)
    if run is None:
        return None
    epoch = checkpoint_epoch(checkpoint_path)
    later = sorted(int(m.group(1)) for m in map(CHECKPOINT_NAME.match, os.listdir(os.path.join(run, 'checkpoints')))
                   if m and int(m.group(1)) > epoch)
    if later:
        return 'the run %s holds a later checkpoint (epoch %d)' % (run, later[-1])
    log = os.path.join(run, 'log.txt')
    if os.path.isfile(log):
        with open(log) as f:
            logged = [int(m.group(1)) for m in map(LOG_LINE.match, f) if m]
        if logged and max(logged) > epoch:
            return 'the log of %s goes on to epoch %d' % (run, max(logged))
    return None


def write_config(config: dict, path: str) -> None:
    with open(path, 'w') as f:
        yaml.safe_dump(config, f, sort_keys=False)


def kp_colors(num_kp: int) -> np.ndarray:
    """Evenly spaced rainbow colours (red to magenta, like gist_rainbow), (K, 3) in [0, 1]."""
    return np.array([colorsys.hsv_to_rgb(0.83 * i / max(num_kp - 1, 1), 1.0, 1.0) for i in range(num_kp)])


class Visualizer:
    """Draw keypoints and stack source / driving / deformed / occlusion / prediction into one image."""

    def __init__(self, kp_size=5, draw_border=False, colormap='gist_rainbow'):
        self.kp_size = kp_size
        self.draw_border = draw_border
        self.colormap = colormap  # kept for config compatibility; colours come from kp_colors

    def draw_image_with_kp(self, image: np.ndarray, kp_array: np.ndarray) -> np.ndarray:
        """image (H, W, 3) float in [0, 1], keypoints (K, 2) in [-1, 1] -> image with dots."""
        image = np.copy(image)
        spatial_size = np.array(image.shape[:2][::-1])[np.newaxis]
        kp_array = spatial_size * (kp_array + 1) / 2
        colors = kp_colors(kp_array.shape[0])
        for kp_ind, kp in enumerate(kp_array):
            rr, cc = disk((kp[1], kp[0]), self.kp_size, shape=image.shape[:2])
            image[rr, cc] = colors[kp_ind]
        return image

    def create_image_column_with_kp(self, images, kp):
        return self.create_image_column(np.array([self.draw_image_with_kp(v, k) for v, k in zip(images, kp)]))

    def create_image_column(self, images):
        if self.draw_border:
            images = np.copy(images)
            images[:, :, [0, -1]] = (1, 1, 1)
            images[:, [0, -1], :] = (1, 1, 1)
        return np.concatenate(list(images), axis=0)

    def create_image_grid(self, *args):
        out = []
        for arg in args:
            if isinstance(arg, tuple):
                out.append(self.create_image_column_with_kp(arg[0], arg[1]))
            else:
                out.append(self.create_image_column(arg))
        return np.concatenate(out, axis=1)

    def visualize(self, driving, source, out) -> np.ndarray:
        """uint8 grid, one row per batch item: source + its keypoints, driving + its keypoints,
        deformed source, occlusion map, then the prediction with the keypoints it was made from
        (`kp_norm`, when animating) and without. Tensors (B, C, H, W); a source of batch 1 is
        shown on every row; a driving frame of another size is resized to the source's."""
        def np_img(t):
            return np.transpose(t.detach().float().cpu().numpy(), [0, 2, 3, 1])

        def kp(name):
            return out[name]['value'].detach().float().cpu().numpy()

        size = source.shape[2:]
        batch = out['prediction'].shape[0]
        if driving.shape[2:] != size:
            driving = torch.nn.functional.interpolate(driving.float(), size=size, mode='bilinear',
                                                      align_corners=False)
        images = [(np_img(source.expand(batch, -1, -1, -1)), np.broadcast_to(kp('kp_source'), (batch,) + kp('kp_source').shape[1:])),
                  (np_img(driving), kp('kp_driving'))]
        if 'deformed' in out:
            images.append(np_img(out['deformed']))
        if 'occlusion_map' in out:
            occ = torch.nn.functional.interpolate(out['occlusion_map'].detach().float(), size=size)
            images.append(np_img(occ.repeat(1, 3, 1, 1)))
        prediction = np_img(out['prediction'])
        if 'kp_norm' in out:
            images.append((prediction, kp('kp_norm')))
        images.append(prediction)
        image = self.create_image_grid(*images)
        return (255 * np.clip(image, 0, 1)).astype(np.uint8)
