"""Training augmentation: flips, colour jitter, random resize, crop and rotation.

One random draw per call is applied to every frame of the clip (both frames of a training pair
get the same flip and the same colour change). Randomness comes from an explicit
`numpy.random.Generator`, never from the global numpy state, so DataLoader workers do not repeat
each other (see `process_rng`).

Clips are numpy arrays (T, H, W, C) (or a list of (H, W, C) frames, or one frame), uint8 or float
in [0, 1]; the output has the input's type and dtype. Colour jitter follows torchvision's
ColorJitter (factors drawn uniformly in [max(0, 1 - b), 1 + b], hue shift in [-h, h], the four
adjustments in a random order), written here in a few lines because torchvision is not a dependency.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from media.images import float_to_uint8, frames_to_float

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def process_rng(seed: int = 0, stream: Optional[int] = None) -> np.random.Generator:
    """A Generator for this process: seeded from (seed, stream), stream defaulting to
    torch.initial_seed(), which in a DataLoader worker is base_seed + worker_id (base_seed drawn
    from the main process's torch generator each epoch). So workers differ from each other and
    from epoch to epoch, and a run seeded with torch.manual_seed is reproducible. The DDP rank
    ($RANK, set by torchrun) is mixed in too, so ranks seeded alike still draw differently."""
    if stream is None:
        import torch  # its seed is what differs between DataLoader workers
        stream = torch.initial_seed()
    rank = int(os.environ.get('RANK', '0') or 0)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2 ** 64 - 1),
                                                         int(stream) & (2 ** 64 - 1), rank]))


def _check_keys(section: str, given: dict, allowed: Sequence[str]) -> None:
    """ValueError naming `section.key` (and the nearest valid key) for any unknown key."""
    if given is None:
        return
    if not isinstance(given, dict):
        raise ValueError('%s: expected a mapping with keys %s, got %r' % (section, list(allowed), given))
    for key in given:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = " (did you mean '%s'?)" % near[0] if near else ' (valid: %s)' % ', '.join(allowed)
            raise ValueError("%s.%s: unknown key%s" % (section, key, hint))


def _hw(clip: np.ndarray) -> tuple:
    return tuple(clip.shape[1:3])  # (T, H, W, C)


class RandomFlip:
    """Reverse the clip in time and/or mirror it left-right, each with probability 1/2."""

    def __init__(self, time_flip: bool = False, horizontal_flip: bool = False):
        self.time_flip, self.horizontal_flip = bool(time_flip), bool(horizontal_flip)

    def __call__(self, clip, rng: np.random.Generator):
        flip_t, flip_h = rng.random() < 0.5, rng.random() < 0.5
        if self.time_flip and flip_t:
            clip = clip[::-1]
        if self.horizontal_flip and flip_h:
            clip = clip[:, :, ::-1]
        return clip


class RandomResize:
    """Scale all frames by one factor drawn uniformly in `ratio`."""

    def __init__(self, ratio: Sequence[float] = (3 / 4, 4 / 3)):
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def __call__(self, clip, rng: np.random.Generator):
        scale = rng.uniform(*self.ratio)
        h, w = _hw(clip)
        nh, nw = max(1, int(scale * h)), max(1, int(scale * w))
        if (nh, nw) == (h, w):
            return clip
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return np.stack([cv2.resize(np.ascontiguousarray(f), (nw, nh), interpolation=interp)
                         .reshape(nh, nw, -1) for f in clip])


class RandomCrop:
    """Crop one random (h, w) window from all frames; frames smaller than that are first padded
    (edge values, centred) up to it."""

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1])) if not isinstance(size, int) else (size, size)

    def __call__(self, clip, rng: np.random.Generator):
        h, w = self.size
        ih, iw = _hw(clip)
        ph, pw = max(0, h - ih), max(0, w - iw)
        if ph or pw:
            pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
            clip = np.pad(clip, ((0, 0), pads[:2], pads[2:], (0, 0)), mode='edge')
            ih, iw = _hw(clip)
        y = int(rng.integers(0, ih - h + 1))
        x = int(rng.integers(0, iw - w + 1))
        return clip[:, y:y + h, x:x + w]


class RandomRotation:
    """Rotate all frames by one angle drawn uniformly in [-degrees, degrees] around the centre;
    uncovered corners are black, as the original's skimage rotate."""

    def __init__(self, degrees: float):
        self.degrees = float(degrees)

    def __call__(self, clip, rng: np.random.Generator):
        angle = rng.uniform(-self.degrees, self.degrees)
        h, w = _hw(clip)
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        return np.stack([cv2.warpAffine(np.ascontiguousarray(f), m, (w, h), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                         .reshape(h, w, -1) for f in clip])


# ----------------------------------------------------------------------------------------------
# Colour jitter, torchvision semantics on float images in [0, 1]
# ----------------------------------------------------------------------------------------------

def _gray(x):
    """Luma of channels-last RGB, keeping a channel axis: (..., 3) -> (..., 1)."""
    return _GRAY[0] * x[..., 0:1] + _GRAY[1] * x[..., 1:2] + _GRAY[2] * x[..., 2:3]


def _blend(a, b, f: float):
    return (f * a + (1.0 - f) * b).clip(0.0, 1.0)


def adjust_brightness(x, f: float):
    """Channels-last float clip times f."""
    return (x * f).clip(0.0, 1.0)


def adjust_contrast(x, f: float):
    """Blend each frame with the mean of its grayscale."""
    g = _gray(x)
    m = g.mean(axis=(-3, -2, -1), keepdims=True)
    return _blend(x, m, f)


def adjust_saturation(x, f: float):
    """Blend each pixel with its grayscale."""
    return _blend(x, _gray(x), f)


def adjust_hue(x, f: float):
    """Rotate hue by f turns (f in [-0.5, 0.5])."""
    shape = x.shape
    flat = np.ascontiguousarray(x.reshape(-1, shape[-2], 3), dtype=np.float32)  # cv2: one 2-D image
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * f, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(shape).clip(0.0, 1.0)


class ColorJitter:
    """torchvision.transforms.ColorJitter on whole clips, with an explicit random generator."""

    def __init__(self, brightness: Any = 0, contrast: Any = 0, saturation: Any = 0, hue: Any = 0):
        self.brightness = self._range('brightness', brightness, 1.0, (0.0, float('inf')))
        self.contrast = self._range('contrast', contrast, 1.0, (0.0, float('inf')))
        self.saturation = self._range('saturation', saturation, 1.0, (0.0, float('inf')))
        self.hue = self._range('hue', hue, 0.0, (-0.5, 0.5))

    @staticmethod
    def _range(name: str, value: Any, center: float, bound: tuple) -> Optional[tuple]:
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError('augmentation_params.jitter_param.%s: must be >= 0, got %r' % (name, value))
            lo, hi = center - value, center + value
            if center == 1.0:
                lo = max(lo, 0.0)
        else:
            lo, hi = float(value[0]), float(value[1])
        if not bound[0] <= lo <= hi <= bound[1]:
            raise ValueError('augmentation_params.jitter_param.%s: range [%g, %g] outside [%g, %g]' % (name, lo, hi, *bound))
        return None if lo == hi == center else (lo, hi)

    def draw(self, rng: np.random.Generator) -> list:
        """[(name, factor)] in the random order they are applied (absent ones skipped)."""
        ops = []
        for k in rng.permutation(4):
            name = ('brightness', 'contrast', 'saturation', 'hue')[k]
            r = getattr(self, name)
            if r is not None:
                ops.append((name, float(rng.uniform(*r))))
        return ops

    def __call__(self, clip, rng: np.random.Generator):
        ops = self.draw(rng)
        if not ops:
            return clip
        for name, f in ops:
            clip = _ADJUST[name](clip, f)
        return clip


_ADJUST = {'brightness': adjust_brightness, 'contrast': adjust_contrast,
           'saturation': adjust_saturation, 'hue': adjust_hue}


class AllAugmentationTransform:
    """The original's augmentation chain: flip, rotation, resize, crop, colour jitter.

    Each *_param is the mapping from the config (e.g. flip_param={'horizontal_flip': True,
    'time_flip': True}), or None to skip that step. Call with a clip and an optional Generator:
    `transform(clip, rng)`; without one, a per-process generator from `process_rng` is used."""

    _KEYS = {'resize_param': ('ratio',), 'rotation_param': ('degrees',),
             'flip_param': ('horizontal_flip', 'time_flip'), 'crop_param': ('size',),
             'jitter_param': ('brightness', 'contrast', 'saturation', 'hue')}

    def __init__(self, resize_param: Optional[dict] = None, rotation_param: Optional[dict] = None,
                 flip_param: Optional[dict] = None, crop_param: Optional[dict] = None,
                 jitter_param: Optional[dict] = None):
        params = dict(resize_param=resize_param, rotation_param=rotation_param, flip_param=flip_param,
                      crop_param=crop_param, jitter_param=jitter_param)
        for name, value in params.items():
            _check_keys('augmentation_params.' + name, value, self._KEYS[name])
        self.transforms = []
        if flip_param is not None:
            self.transforms.append(RandomFlip(**flip_param))
        if rotation_param is not None:
            self.transforms.append(RandomRotation(**rotation_param))
        if resize_param is not None:
            self.transforms.append(RandomResize(**resize_param))
        if crop_param is not None:
            self.transforms.append(RandomCrop(**crop_param))
        if jitter_param is not None:
            self.transforms.append(ColorJitter(**jitter_param))
        self._rng, self._pid = None, None

    @classmethod
    def from_params(cls, augmentation_params: Optional[dict]) -> 'AllAugmentationTransform':
        """Build from the config's `augmentation_params`, naming any unknown key."""
        params = augmentation_params or {}
        _check_keys('augmentation_params', params, tuple(cls._KEYS))
        return cls(**params)

    def __call__(self, clip, rng: Optional[np.random.Generator] = None):
        if rng is None:
            if self._pid != os.getpid():
                self._rng, self._pid = process_rng(0), os.getpid()
            rng = self._rng
        is_list = isinstance(clip, (list, tuple))
        x = np.stack(clip) if is_list else np.asarray(clip)
        dtype = x.dtype
        single = x.ndim == 3  # one frame
        if single:
            x = x[None]
        if dtype == np.uint8:
            x = frames_to_float(x)
        for t in self.transforms:
            x = t(x, rng)
        x = float_to_uint8(x) if dtype == np.uint8 else np.ascontiguousarray(x, dtype=dtype)
        if single:
            x = x[0]
        return list(x) if is_list else x
