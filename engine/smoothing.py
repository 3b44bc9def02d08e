"""Steady keypoints: a One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) on the driving keypoints.

Detected keypoints tremble by a fraction of a pixel from frame to frame even on a still face, and
the generator turns that into a shimmering output. A fixed low-pass filter would steady them but
make fast motion lag; the One-Euro filter adapts its cut-off to the speed of each coordinate:

    dx      = (x_t - x^_{t-1}) / dt                          raw speed
    dx^_t   = a(d_cutoff) dx + (1 - a(d_cutoff)) dx^_{t-1}   smoothed speed (first frame: 0)
    fc      = min_cutoff + beta |dx^_t|                       cut-off frequency, Hz
    x^_t    = a(fc) x_t + (1 - a(fc)) x^_{t-1}               the output (first frame: x_0 itself)
    a(f)    = 1 / (1 + 1 / (2 pi f dt))                       the smoothing factor for a period dt (seconds)

Each number (every keypoint coordinate and Jacobian entry) is filtered on its own. Still, `fc`
stays near `min_cutoff` (strong smoothing); moving, `beta` raises it (little lag). The defaults
were chosen on keypoints in the models' [-1, 1] coordinates at 25 frames/s: per-frame noise of
0.004 is steadied ~4.7x while a motion of 0.2 amplitude and 2 s period lags by less than a frame
(tests/test_smoothing.py measures both on a model's output). The browser page (web/) runs the
same formulas with the same defaults.

Works on numpy arrays and torch tensors alike (only arithmetic operators), so every backend of
the engine shares it.
"""
import math
from typing import Dict, Optional

from modules.keypoints import array_namespace

DEFAULT_MIN_CUTOFF = 1.0  # Hz: the cut-off when still; lower steadies more, lags more on slow motion
DEFAULT_BETA = 20.0  # how fast the cut-off rises with speed (per unit of keypoint coordinate per second)
DEFAULT_D_CUTOFF = 1.0  # Hz: the cut-off of the speed estimate


def smoothing_factor(cutoff, dt: float):
    """a(f) = 1 / (1 + 1 / (2 pi f dt)) for a cut-off `cutoff` (Hz; a number or an array) and a period dt (s)."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt))


class OneEuroFilter:
    """The One-Euro filter of one stream of arrays (numpy or torch, any shape, fixed between calls).

    filter(x, dt): the filtered x for a sample `dt` seconds after the previous one (the first
    sample passes unchanged). reset(): forget the past (a new shot, a new reference)."""

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF):
        if not min_cutoff > 0 or not d_cutoff > 0 or not beta >= 0:
            raise ValueError('smoothing: min_cutoff and d_cutoff must be > 0 and beta >= 0, got %r, %r, %r'
                             % (min_cutoff, d_cutoff, beta))
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        self.value = None  # x^ of the previous sample
        self.speed = None  # dx^ of the previous sample

    def filter(self, x, dt: float):
        if not dt > 0:
            raise ValueError('smoothing: the time step must be > 0 seconds, got %r' % dt)
        if self.value is None:
            self.value, self.speed = x, x * 0
            return x
        speed = (x - self.value) / dt
        a_d = smoothing_factor(self.d_cutoff, dt)
        self.speed = a_d * speed + (1 - a_d) * self.speed
        a = smoothing_factor(self.min_cutoff + self.beta * abs(self.speed), dt)
        self.value = a * x + (1 - a) * self.value
        return self.value


class KeypointSmoother:
    """One-Euro filters over keypoint dicts ({'value': (B, K, 2)[, 'jacobian': (B, K, 2, 2)]}),
    frame after frame along the batch axis.

    fps: frames per second of the stream when no times are given (a video's own rate)."""

    def __init__(self, fps: float = 25.0, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF):
        if not fps > 0:
            raise ValueError('smoothing: fps must be > 0, got %r' % fps)
        self.fps = float(fps)
        self.options = dict(min_cutoff=min_cutoff, beta=beta, d_cutoff=d_cutoff)
        OneEuroFilter(**self.options)  # checks the values now, not at the first frame
        self.filters: Dict[str, OneEuroFilter] = {}

    def reset(self) -> None:
        self.filters = {}

    def __call__(self, kp: dict, dt: Optional[float] = None) -> dict:
        """The keypoints of B consecutive frames, each filtered after the one before it (and after
        the last frame of the previous call); dt: seconds between frames (default 1 / fps)."""
        dt = 1.0 / self.fps if dt is None else dt
        out = {}
        for key, batch in kp.items():
            flt = self.filters.setdefault(key, OneEuroFilter(**self.options))
            frames = [flt.filter(batch[i:i + 1], dt) for i in range(batch.shape[0])]
            out[key] = frames[0] if len(frames) == 1 else array_namespace(batch).concatenate(frames)
        return out


# ------------------------------------------------------------------------ command lines
def add_smoothing_flags(parser) -> None:
    """--smooth, --smooth_cutoff, --smooth_beta: the same flags for demo.py and live.py."""
    parser.add_argument('--smooth', action='store_true',
                        help='steady the driving keypoints (One-Euro filter): less trembling when still, '
                             'no lag when moving')
    parser.add_argument('--smooth_cutoff', type=float, default=DEFAULT_MIN_CUTOFF,
                        help='--smooth: cut-off frequency when still, Hz (lower: steadier, slower on slow motion)')
    parser.add_argument('--smooth_beta', type=float, default=DEFAULT_BETA,
                        help='--smooth: how fast the cut-off rises with speed (higher: less lag on fast motion)')


def smoother_from_flags(args, fps: Optional[float]) -> Optional[KeypointSmoother]:
    """The filter the flags ask for (None without --smooth), for a stream of `fps` frames per
    second (None or 0: 25). ValueError names the flag of a value out of range."""
    if not args.smooth:
        return None
    if not args.smooth_cutoff > 0:
        raise ValueError('--smooth_cutoff: must be > 0 Hz, got %g' % args.smooth_cutoff)
    if not args.smooth_beta >= 0:
        raise ValueError('--smooth_beta: must be >= 0, got %g' % args.smooth_beta)
    return KeypointSmoother(fps or 25.0, min_cutoff=args.smooth_cutoff, beta=args.smooth_beta)
