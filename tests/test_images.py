"""media.images.read_image against Pillow as the independent reference: the EXIF orientation applied
exactly once in every format (phone photos carry 6 or 8), and the colour modes a user's files come in."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from media.images import read_image

H, W = 40, 60  # not square, so a missed or doubled quarter turn changes the shape


def picture() -> np.ndarray:
    """A picture no flip or turn maps onto itself: gradients plus a red block near one corner."""
    y, x = np.mgrid[0:H, 0:W]
    a = np.stack([x * 4, y * 6, (x + y) * 2], -1).astype(np.uint8)
    a[2:10, 2:20] = [255, 0, 0]
    return a


def pillow_reference(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert('RGB')).astype(int)


@pytest.mark.parametrize('suffix', ['.jpg', '.png', '.webp', '.tif'])
@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_applied_once(tmp_path, suffix, orientation):
    im = Image.fromarray(picture())
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / ('photo' + suffix)
    im.save(path, exif=exif.tobytes(), **({'quality': 95} if suffix == '.jpg' else {}))
    expected = pillow_reference(path)
    got = read_image(path).astype(int)
    assert got.shape == expected.shape == ((W, H, 3) if orientation >= 5 else (H, W, 3))
    # JPEG: two libjpeg builds may round the inverse DCT differently by a level or so; a wrong
    # flip or turn moves the mean by ~100 levels
    assert np.abs(got - expected).mean() < (1.5 if suffix == '.jpg' else 1e-9)


def test_gray_photo_with_orientation(tmp_path):
    im = Image.fromarray(picture()[:, :, 1])
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / 'gray.png', exif=exif.tobytes())
    got = read_image(tmp_path / 'gray.png')
    assert got.shape == (W, H, 3)
    np.testing.assert_array_equal(got.astype(int), pillow_reference(tmp_path / 'gray.png'))


@pytest.mark.parametrize('mode, suffix', [('CMYK', '.jpg'), ('P', '.png'), ('LA', '.png'), ('RGBA', '.png'),
                                          ('I;16', '.png'), ('1', '.png')])
def test_colour_modes(tmp_path, mode, suffix):
    rgb = Image.fromarray(picture())
    if mode == 'LA':
        im = Image.merge('LA', (rgb.convert('L'), Image.new('L', rgb.size, 255)))
    elif mode == 'I;16':
        im = Image.fromarray(picture()[:, :, 1].astype(np.uint16) * 257)
    else:
        im = rgb.convert(mode)
    path = tmp_path / ('image' + suffix)
    im.save(path, **({'quality': 95} if suffix == '.jpg' else {}))
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    with Image.open(path) as ref:
        ref = ref.convert('RGBA').convert('RGB') if mode != 'I;16' else None
    if ref is None:  # 16-bit gray: the high byte, on three channels
        np.testing.assert_array_equal(got, np.repeat(picture()[:, :, 1:2], 3, axis=2))
    else:
        tolerance = 3 if mode == 'CMYK' else 0  # CMYK JPEG: two decoders' colour conversions
        assert np.abs(got.astype(int) - np.asarray(ref).astype(int)).max() <= tolerance, mode
