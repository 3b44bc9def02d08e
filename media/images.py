"""The one image rule: pixel conversion, the one resize/fit rule, and image files read safely.

Every part of the project that turns a decoded image into model input, or a model output into
pixels, goes through here, so a frame is converted and resized the same way in training,
reconstruction, the demo, the face crop and the web page.

    to_uint8(image)           any image -> uint8 (H, W, 3): gray -> RGB, alpha dropped, 16-bit and
                              float [0, 1] scaled with rounding to nearest
    to_float(image)           any image -> float32 (H, W, 3) in [0, 1]
    frames_to_float(frames)   uint8 (..., 3) -> float32 in [0, 1] (no copy of the shape logic)
    resize(image, h, w)       area averaging when shrinking in both directions, bilinear otherwise
    fit(image, (h, w), mode)  'resize' (stretch, as the original demo), 'crop' (centre crop to the
                              aspect ratio, then resize), 'none' (must already have the size)
    read_image(path)          a file -> uint8 (H, W, 3), decoded completely: a truncated or corrupt
                              file is refused, EXIF orientation applied, a pixel limit enforced

Errors on user data raise MediaError (a ValueError) with one line naming the file.
"""
import os
import sys
import tempfile
import threading
from typing import Sequence, Tuple

import numpy as np

from media.formats import IMAGE_INPUTS

FITS = ('resize', 'crop', 'none')
IMAGE_EXTENSIONS = IMAGE_INPUTS  # media/formats.py: the one table of formats
MAX_PIXELS_ENV = 'FOMM_MAX_PIXELS'
DEFAULT_MAX_PIXELS = 64_000_000  # a 48 MP phone photo and an 8K frame pass; ~200 MB as uint8


class MediaError(ValueError):
    """A media file that cannot be read or written; the message names the file."""


def one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (decoders print causes last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# ------------------------------------------------------------------------------- conversion
def _as_array(image) -> np.ndarray:
    """numpy (H, W[, C]) as it is; a torch tensor (C, H, W) is moved to (H, W, C)."""
    if hasattr(image, 'detach'):  # a torch tensor, without importing torch here
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3:
            image = np.transpose(image, (1, 2, 0))
    return np.asarray(image)


def _channels(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise MediaError('%s: expected an (H, W) or (H, W, C) image with 1-4 channels, got shape %s'
                         % (name, tuple(a.shape)))
    return a


def _rgb(a: np.ndarray) -> np.ndarray:
    """(H, W, 1-4) -> (H, W, 3): gray (+ alpha) repeated, the alpha of RGBA dropped (as the original)."""
    if a.shape[2] in (1, 2):
        return np.repeat(a[:, :, :1], 3, axis=2)
    return a[:, :, :3]


def to_float(image, name: str = 'image') -> np.ndarray:
    """Any decoded image -> float32 (H, W, 3) in [0, 1]. uint8 / 255, uint16 / 65535, bool as 0/1,
    other integers as 16-bit, floats as they are (taken to be in [0, 1])."""
    a = _channels(_as_array(image), name)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) * np.float32(1 / 255)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) * np.float32(1 / 65535)
    elif a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):  # int32 from some TIFF readers: 16-bit range
        a = np.clip(a, 0, 65535).astype(np.float32) * np.float32(1 / 65535)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
    else:
        raise MediaError('%s: unsupported pixel type %s' % (name, a.dtype))
    return np.ascontiguousarray(_rgb(a))


def to_uint8(image, name: str = 'image') -> np.ndarray:
    """Any decoded image -> uint8 (H, W, 3); uint8 RGB passes through without a copy. Scaling
    rounds to nearest (16-bit x -> round(x / 257)), floats are clipped to [0, 1] first."""
    a = _channels(_as_array(image), name)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(_rgb(a))
    if a.dtype == np.uint16:  # exact rounding of x / 257
        return np.ascontiguousarray(_rgb(((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)))
    return float_to_uint8(to_float(a, name))


def float_to_uint8(frames: np.ndarray) -> np.ndarray:
    """float in [0, 1] (any shape) -> uint8, clipped, rounded to nearest (ties to even, as torch.round)."""
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def frames_to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (..., 3) -> float32 in [0, 1] (as skimage's img_as_float32)."""
    return np.asarray(frames).astype(np.float32) * np.float32(1 / 255)


# ----------------------------------------------------------------------------- the one size rule
def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W[, C]) -> (height, width[, C]), keeping the dtype: area averaging (anti-aliased) when
    the image shrinks in both directions, bilinear otherwise."""
    import cv2

    h, w = image.shape[:2]
    height, width = int(height), int(width)
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if (height <= h and width <= w) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interp)
    return out.reshape(height, width, -1) if image.ndim == 3 else out


def fit(image: np.ndarray, size: Sequence[int], mode: str = 'resize') -> np.ndarray:
    """(H, W, C) image of any size -> `size` (h, w), keeping its dtype.

    'resize' stretches to the size (the original demo's behaviour), 'crop' cuts the largest
    centred region with the target's aspect ratio first (no distortion), 'none' checks the size."""
    h, w = int(size[0]), int(size[1])
    if mode not in FITS:
        raise ValueError('--fit: %r is not one of %s' % (mode, ', '.join(FITS)))
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    if mode == 'none':
        raise ValueError('image is %dx%d, the model expects %dx%d (use --fit resize or crop)' % (iw, ih, w, h))
    if mode == 'crop':
        scale = min(ih / h, iw / w)
        ch, cw = int(round(h * scale)), int(round(w * scale))
        top, left = (ih - ch) // 2, (iw - cw) // 2
        image = image[top:top + ch, left:left + cw]
    return resize(image, h, w)


# ------------------------------------------------------------------------------------ files
def max_pixels() -> int:
    """The pixel limit for decoded images: $FOMM_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise MediaError('%s: expected a number of pixels, got %r' % (MAX_PIXELS_ENV, value)) from None
    if limit <= 0:
        raise MediaError('%s: must be > 0, got %r' % (MAX_PIXELS_ENV, value))
    return limit


def check_pixels(height: int, width: int, name: str, limit: int = None) -> None:
    """Refuse an image larger than the pixel limit before it is decoded."""
    limit = max_pixels() if limit is None else int(limit)
    if height * width > limit:
        raise MediaError('%s: %dx%d is %.1f megapixels, over the limit of %.1f (downscale it, or raise the '
                         'limit with %s=N or --max_pixels N)'
                         % (name, width, height, height * width / 1e6, limit / 1e6, MAX_PIXELS_ENV))


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:
        raise MediaError('%s: not a readable image (%s)' % (path, one_line(e))) from None
    return h, w


_EXIF_ORIENTATION = 0x0112


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as cameras mean it: the stored
    picture is mirrored (2), turned 180 degrees (3), flipped upside down (4), transposed (5),
    turned 90 degrees clockwise to be seen upright (6), anti-transposed (7), or turned 90 degrees
    anticlockwise (8)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = np.swapaxes(a, 0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.swapaxes(a[::-1, ::-1], 0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _png_bit_depth(path: str) -> int:
    with open(path, 'rb') as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == b'\x89PNG\r\n\x1a\n' else 8


_STDERR_LOCK = threading.Lock()
_LIBJPEG_WARNINGS = ('corrupt jpeg data', 'premature end of jpeg', 'invalid', 'bogus')  # not a bare 'warning': some are harmless


def _decode_jpeg(path: str) -> np.ndarray:
    """A JPEG decoded by OpenCV's libjpeg, whose warnings about damaged data (which Pillow and
    OpenCV both let pass, filling the rest of the picture with grey) are errors here. libjpeg
    prints them on file descriptor 2, so that is captured around the call; anything else printed
    there meanwhile is passed on."""
    import cv2
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            # OpenCV would apply the EXIF orientation itself; read_image applies it once, for every format
            bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode('utf-8', 'replace')
    damaged = [line for line in text.splitlines() if any(w in line.lower() for w in _LIBJPEG_WARNINGS)]
    others = [line for line in text.splitlines() if line not in damaged]
    if others:
        print('\n'.join(others), file=sys.stderr)
    if damaged or bgr is None:
        raise MediaError('%s: truncated or corrupt image (JPEG decoder: %s)'
                         % (path, damaged[0].strip() if damaged else 'cannot decode'))
    return bgr[:, :, ::-1]


def read_image(path, limit: int = None) -> np.ndarray:
    """Read one image file -> uint8 (H, W, 3) RGB, decoded completely.

    A truncated or corrupt file is refused: Pillow raises on damaged PNG, GIF, BMP, TIFF, WebP
    data, and libjpeg's warnings are taken as errors for JPEG (see _decode_jpeg); so is an image
    over the pixel limit (checked from the header, before decoding). Gray, alpha and 16-bit files
    are converted by `to_uint8`; the EXIF orientation of photos is applied."""
    from PIL import Image, UnidentifiedImageError

    path = str(path)
    if not os.path.exists(path):
        raise MediaError('%s: image not found' % path)
    if os.path.isdir(path):
        raise MediaError('%s: is a folder, expected an image file' % path)
    try:
        with Image.open(path) as im:
            check_pixels(im.height, im.width, path, limit)
            if im.format == 'JPEG':
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                a = _decode_jpeg(path)  # without OpenCV's own orientation handling
            else:
                im.load()  # decodes everything: truncation and corrupt data raise here
                # read after decoding: a PNG's eXIf chunk may follow its pixels, and Pillow's TIFF
                # loader applies the orientation itself and drops the tag
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                if im.mode in ('P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV', '1'):
                    im = im.convert('RGBA' if im.mode in ('P', 'PA') else 'RGB')
                a = np.asarray(im)
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError('%s: not an image file, or a format that cannot be read (expected %s)'
                         % (path, '/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS))) from None
    except Image.DecompressionBombError as e:
        raise MediaError('%s: refused, too many pixels (%s)' % (path, one_line(e))) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError('%s: truncated or corrupt image (%s)' % (path, one_line(e))) from None
    if a.ndim == 3 and a.shape[2] in (3, 4) and _png_bit_depth(path) == 16:
        # Pillow keeps only the high byte of 16-bit colour PNGs: take exact values from OpenCV
        # (the file was just decoded in full, so it is known to be intact)
        import cv2
        deep = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if deep is not None and deep.dtype == np.uint16:
            a = deep[:, :, [2, 1, 0, 3][:deep.shape[2]]]
    return to_uint8(_orient(a, orientation) if orientation != 1 else a, path)
