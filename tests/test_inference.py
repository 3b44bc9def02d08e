"""The inference engine against the original per-frame loop (same weights, same frames)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baseline import per_frame_animation  # noqa: E402
from media.images import fit as fit_image, to_float as to_float_image  # noqa: E402
from engine.torch_engine import AnimationEngine, load_networks  # noqa: E402
from modules.fused import cast_conv_weights, fuse_for_inference  # noqa: E402
from modules.util import AntiAliasInterpolation2d  # noqa: E402

TINY = str(ROOT / 'tests' / 'tiny.yaml')


pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_networks(seed: int = 0):
    """Tiny networks with non-trivial weights: BatchNorm statistics and Jacobian maps moved away
    from their initial values (folding and the relative Jacobian are exercised), sharper keypoint
    heatmaps (keypoints follow the image) and a steeper output layer, so that relative, absolute
    and scaled motion give outputs 10x further apart than the tolerance of the tests."""
    torch.manual_seed(seed)
    generator, kp_detector, config = load_networks(TINY, None)
    with torch.no_grad():
        for m in list(generator.modules()) + list(kp_detector.modules()):
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        kp_detector.jacobian.weight.normal_(0, 0.02)
        kp_detector.kp.weight.mul_(20)
        generator.final.weight.mul_(4)
    return generator.eval(), kp_detector.eval(), config


@pytest.fixture(scope='module')
def nets():
    return tiny_networks()


def moving_frames(count, size=64, seed=1):
    """float32 (H, W, 3) frames: a smooth texture with a bright square sliding across it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.2 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(1, 3) * y))[..., None] \
        * rng.uniform(0.3, 1, 3)
    frames = []
    for t in range(count):
        f = base.copy()
        top, left = 10 + 3 * t % 30, 8 + 2 * t % 30
        f[top:top + 16, left:left + 16] = (0.9, 0.8, 0.2)
        frames.append(f.astype(np.float32))
    return frames


def max_diff(a, b):
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize('relative,adapt_scale', [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize('batch_size', [1, 3])
def test_engine_matches_per_frame_loop(nets, relative, adapt_scale, batch_size):
    generator, kp_detector, _ = nets
    source = moving_frames(1, seed=5)[0]
    frames = moving_frames(7)  # 7 frames: batch 3 leaves a last batch of 1
    expected = per_frame_animation(source, frames, generator, kp_detector, relative=relative,
                                   adapt_movement_scale=adapt_scale)
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', batch_size)
    engine.set_source(source)
    got = list(engine.animate(frames, relative=relative, adapt_scale=adapt_scale, output='float'))
    assert len(got) == len(frames)
    assert got[0].shape == (64, 64, 3) and got[0].dtype == np.float32
    assert max_diff(got, expected) < 1e-5


def test_relative_differs_from_absolute(nets):
    """The modes must not silently coincide (else the test above proves little)."""
    generator, kp_detector, _ = nets
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 4)
    engine.set_source(moving_frames(1, seed=5)[0])
    frames = moving_frames(4)
    rel = list(engine.animate(frames, relative=True, output='float'))
    ab = list(engine.animate(frames, relative=False, output='float'))
    scaled = list(engine.animate(frames, relative=True, adapt_scale=True, output='float'))
    assert max_diff(rel, ab) > 5e-4
    assert max_diff(rel, scaled) > 5e-4


def test_unfused_and_nchw_engines_match_loop(nets):
    generator, kp_detector, _ = nets
    source, frames = moving_frames(1, seed=5)[0], moving_frames(5)
    expected = per_frame_animation(source, frames, generator, kp_detector)
    for kwargs in ({'fuse': False}, {'channels_last': False}, {'fuse': False, 'channels_last': False}):
        g, k, _ = tiny_networks()  # own copies: the engine changes the modules' layout
        engine = AnimationEngine(g, k, 'cpu', 'fp32', 2, **kwargs)
        engine.set_source(source)
        assert max_diff(list(engine.animate(frames, output='float')), expected) < 1e-5, kwargs


def test_fused_copy_matches_modules_and_leaves_them_alone(nets):
    generator, kp_detector, _ = nets
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    for subpixel, block in ((True, 'FusedUpBlock'), (False, 'FusedConvBlock')):
        fast = fuse_for_inference(generator, subpixel)
        assert type(fast.up_blocks[0]).__name__ == block
        assert type(generator.up_blocks[0]).__name__ == 'UpBlock2d'
        with torch.no_grad():
            kp = kp_detector(x)
            a = generator(x, kp, kp)['prediction']
            b = fast(x, kp, kp)['prediction']
            assert float((a - b).abs().max()) < 1e-5
            a = kp_detector(x)['jacobian']
            b = fuse_for_inference(kp_detector, subpixel)(x)['jacobian']
            assert float((a - b).abs().max()) < 1e-5
    for k, v in generator.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bf16_engine_casts_only_its_own_copies_and_gets_the_same_frames(nets):
    """A bf16 engine holds its fused copies' convolution weights in bf16 (autocast would cast them
    at every call): the same frames as uncast copies under autocast, the modules stay float32."""
    generator, kp_detector, _ = nets
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'bf16', 2)
    assert all(p.dtype == torch.float32 for p in list(generator.parameters()) + list(kp_detector.parameters()))
    convs = [m for m in engine.parts()['keypoints'].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    uncast = fuse_for_inference(kp_detector, memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = engine.parts()['keypoints'](x), uncast(x)
        assert torch.equal(a['value'], b['value']) and torch.equal(a['jacobian'], b['jacobian'])
        cast = cast_conv_weights(fuse_for_inference(generator), torch.bfloat16)
        features = torch.rand(2, 32, 16, 16)
        assert torch.equal(cast.decode(features), fuse_for_inference(generator).decode(features))


def test_networks_built_on_meta_take_their_buffers_from_the_checkpoint():
    """The anti-aliasing kernel is computed on the CPU (no meta-device maths at start-up) and put
    on the device the networks are built on; on the CPU it is the Gaussian kernel as before."""
    with torch.device('meta'):
        down = AntiAliasInterpolation2d(3, 0.25)
    assert down.weight.is_meta
    down = AntiAliasInterpolation2d(3, 0.25)
    sigma, size = 1.5, 13
    g = torch.exp(-(torch.arange(size, dtype=torch.float32) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    kernel = g.view(-1, 1) * g.view(1, -1)
    assert torch.allclose(down.weight[0, 0], kernel / kernel.sum()) and down.weight.shape == (3, 1, size, size)


def test_two_frame_video_and_uint8_output(nets):
    generator, kp_detector, _ = nets
    source = moving_frames(1, seed=5)[0]
    frames = moving_frames(2)
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 8)
    engine.set_source(source)
    out = list(engine.animate([(f * 255).round().astype(np.uint8) for f in frames]))
    assert len(out) == 2 and out[0].dtype == np.uint8 and out[0].shape == (64, 64, 3)
    expected = per_frame_animation(source, [np.round(f * 255) / 255 for f in frames], generator, kp_detector)
    assert max(np.abs(o.astype(np.float64) - np.round(e * 255)).max() for o, e in zip(out, expected)) <= 1


def test_batches_stream_lazily(nets):
    """Frames are pulled batch by batch: the first output exists before the input is exhausted."""
    generator, kp_detector, _ = nets
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 2)
    engine.set_source(moving_frames(1)[0])
    pulled = []

    def frames():
        for i, f in enumerate(moving_frames(9)):
            pulled.append(i)
            yield f

    it = engine.animate(frames(), output='batch')
    first = next(it)
    assert first.shape == (2, 3, 64, 64)
    assert len(pulled) == 2
    assert sum(b.shape[0] for b in it) == 7


def test_source_formats(nets):
    """Gray, RGBA, 16-bit and non-square sources work; the output takes the source's size."""
    generator, kp_detector, _ = nets
    rgb = (moving_frames(1, seed=3)[0] * 255).round().astype(np.uint8)
    gray = rgb[..., 1]
    frames = moving_frames(3)
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 2)
    engine.set_source(gray)
    out_gray = list(engine.animate(frames, output='float'))
    engine.set_source(np.repeat(gray[..., None], 3, axis=2))
    out_rgb3 = list(engine.animate(frames, output='float'))
    assert max_diff(out_gray, out_rgb3) < 1e-6

    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    engine.set_source(rgba)
    out_rgba = list(engine.animate(frames, output='float'))
    engine.set_source(rgb)
    assert max_diff(out_rgba, list(engine.animate(frames, output='float'))) < 1e-6

    assert np.allclose(to_float_image(rgb.astype(np.uint16) * 257), rgb / 255.0, atol=1e-6)

    wide = np.random.default_rng(0).random((64, 96, 3)).astype(np.float32)
    engine.set_source(wide)
    out = list(engine.animate(frames))
    assert out[0].shape == (64, 96, 3)
    assert fit_image(wide, (64, 64), 'crop').shape == (64, 64, 3)
    assert fit_image(wide, (64, 64), 'resize').shape == (64, 64, 3)
    assert np.allclose(fit_image(wide, (64, 64), 'crop'), wide[:, 16:80], atol=1e-6)  # same scale: a pure crop
    with pytest.raises(ValueError, match='--fit'):
        fit_image(wide, (64, 64), 'none')


def test_initial_frame_equals_forward_backward_join(nets):
    """--find_best_frame in the original animated driving[i:] and driving[:i+1][::-1] and joined
    them; one pass with frame i's keypoints as the initial ones gives the same frames."""
    generator, kp_detector, _ = nets
    source, frames, best = moving_frames(1, seed=5)[0], moving_frames(6), 3
    forward = per_frame_animation(source, frames[best:], generator, kp_detector, adapt_movement_scale=True)
    backward = per_frame_animation(source, frames[:best + 1][::-1], generator, kp_detector,
                                   adapt_movement_scale=True)
    expected = backward[::-1] + forward[1:]
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 4)
    engine.set_source(source)
    got = list(engine.animate(frames, adapt_scale=True, initial_frame=frames[best], output='float'))
    assert max_diff(got, expected) < 1e-4


def test_bf16_close_to_fp32(nets):
    generator, kp_detector, _ = tiny_networks()
    source, frames = moving_frames(1, seed=5)[0], moving_frames(4)
    ref = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 4)
    ref.set_source(source)
    expected = list(ref.animate(frames, output='float'))
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'bf16', 4)
    assert engine.channels_last  # auto: NHWC on CPU
    engine.set_source(source)
    got = list(engine.animate(frames, output='float'))
    mse = np.mean([(g.astype(np.float64) - e) ** 2 for g, e in zip(got, expected)])
    assert 10 * np.log10(1 / mse) > 55  # measured 65.4 dB here (AVX512-BF16); 10 dB margin


def test_stream_extras_and_errors(nets):
    generator, kp_detector, _ = nets
    engine = AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 2)
    with pytest.raises(RuntimeError, match='set_source'):
        next(engine.animate(moving_frames(2)))
    with pytest.raises(ValueError, match='batch_size'):
        AnimationEngine(generator, kp_detector, 'cpu', 'fp32', 0)
    engine.set_source(moving_frames(1)[0])
    result = next(engine.stream(moving_frames(3), extras=True))
    assert result['prediction'].shape == (2, 3, 64, 64)
    assert result['kp_norm']['value'].shape == (2, 4, 2)
    assert {'deformed', 'occlusion_map', 'mask', 'kp_driving', 'driving'} <= set(result)


def test_from_checkpoint(tmp_path, nets):
    generator, kp_detector, _ = nets
    path = tmp_path / 'tiny.pth.tar'
    torch.save({'generator': generator.state_dict(), 'kp_detector': kp_detector.state_dict(), 'epoch': 3}, path)
    engine = AnimationEngine.from_checkpoint(TINY, str(path), device='cpu', precision='fp32', batch_size=2)
    assert engine.frame_shape == (64, 64)
    assert not engine.generator.training
    source, frames = moving_frames(1, seed=5)[0], moving_frames(3)
    engine.set_source(source)
    got = list(engine.animate(frames, output='float'))
    assert max_diff(got, per_frame_animation(source, frames, generator, kp_detector)) < 1e-4
