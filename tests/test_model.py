"""Core model: equivalence with the reference tensors, published layouts, numerics, safety."""
import copy
import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, shared_path
from core.config import ConfigError, load_config
from core.checkpoint import CheckpointError, read_checkpoint, save_atomic
from logger import Logger
from modules.model import DiscriminatorFullModel, GeneratorFullModel, Transform
from modules.networks import build_networks
from modules.util import make_coordinate_grid

PUBLISHED = ['vox-256', 'vox-adv-256', 'taichi-256', 'taichi-adv-256', 'bair-256', 'mgif-256', 'fashion-256',
             'nemo-256']
TINY = str(ROOT / 'tests' / 'tiny.yaml')


def tiny_config(**overrides):
    cfg = load_config(TINY).to_dict()
    for dotted, value in overrides.items():
        d = cfg
        *path, last = dotted.split('.')
        for p in path:
            d = d[p]
        d[last] = value
    return cfg


def test_equivalence_with_reference_tensors():
    fixtures = shared_path('fixtures', 'reference')
    tool = shared_path('tools', 'check_equivalence.py')
    res = subprocess.run([sys.executable, str(tool), str(ROOT), str(fixtures)], capture_output=True, text=True,
                         timeout=600)
    last = res.stdout.strip().splitlines()[-1]
    n, m = last.split()[0].split('/')
    assert res.returncode == 0 and n == m == '120', res.stdout + res.stderr  # every reference tensor


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_config_layout(name):
    layout = json.loads(shared_path('fixtures', 'reference', 'layout', name + '.json').read_text())
    cfg = load_config(str(ROOT / 'config' / (name + '.yaml'))).to_dict()
    with torch.device('meta'):
        nets = dict(zip(('generator', 'kp_detector', 'discriminator'), build_networks(cfg['model_params'])))
    for key, module in nets.items():
        got = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert got == layout[key], key


def _variant_configs():
    yield 'no-jacobian', {'model_params.common_params.estimate_jacobian': False}
    yield 'no-occlusion', {'model_params.generator_params.estimate_occlusion_map': False}
    yield 'single-jacobian', {'model_params.kp_detector_params.single_jacobian_map': True}
    yield 'kp7-scale1', {'model_params.common_params.num_kp': 7, 'model_params.kp_detector_params.scale_factor': 1,
                         'model_params.generator_params.dense_motion_params.scale_factor': 0.25}
    yield 'deeper', {'model_params.generator_params.num_down_blocks': 3,
                     'model_params.kp_detector_params.num_blocks': 4}


@pytest.mark.parametrize('name,overrides', list(_variant_configs()))
def test_variants_identity_motion(name, overrides):
    """Driving keypoints equal to the source's give the identity flow (Eq. 4 with T = id), whatever
    the variant; outputs have the contract's keys and shapes."""
    torch.manual_seed(0)
    cfg = tiny_config(**overrides)
    gen, kp, _ = build_networks(cfg['model_params'])
    gen.eval(), kp.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        kps = kp(x)
        out = gen(x, kp_source=kps, kp_driving=kps)
    k = cfg['model_params']['common_params']['num_kp']
    assert kps['value'].shape == (2, k, 2)
    assert ('jacobian' in kps) == cfg['model_params']['common_params']['estimate_jacobian']
    assert out['prediction'].shape == (2, 3, 64, 64)
    assert ('occlusion_map' in out) == cfg['model_params']['generator_params']['estimate_occlusion_map']
    h = out['mask'].shape[2]
    assert out['mask'].shape[1] == k + 1
    assert torch.allclose(out['mask'].sum(1), torch.ones(2, h, h), atol=1e-5)
    identity = make_coordinate_grid((h, h), torch.float32).expand(2, h, h, 2)
    assert torch.allclose(out['deformation'], identity, atol=1e-5)


def test_transform_jacobian_matches_finite_differences():
    torch.manual_seed(1)
    tr = Transform(3, sigma_affine=0.1, sigma_tps=0.05, points_tps=5)
    coords = (torch.rand(3, 7, 2, dtype=torch.float64) * 1.6 - 0.8)
    tr.theta, tr.control_params = tr.theta.double(), tr.control_params.double()
    tr.control_points = tr.control_points.double()
    jac = tr.jacobian(coords.clone().requires_grad_(True))
    eps = 1e-6
    fd = torch.zeros_like(jac)
    for j in range(2):
        d = torch.zeros_like(coords)
        d[..., j] = eps
        diff = (tr.warp_coordinates(coords + d) - tr.warp_coordinates(coords - d)) / (2 * eps)
        fd[..., :, j] = diff
    # warp_coordinates computes in float32, so compare at float32 precision
    assert torch.allclose(jac, fd, atol=1e-6), (jac - fd).abs().max()
    assert not torch.allclose(jac, torch.eye(2).expand_as(jac).to(jac), atol=1e-3)  # not a trivial warp


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch %s' % os.environ['FOMM_PWNED'],))


def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / 'pwned'
    monkeypatch.setenv('FOMM_PWNED', str(marker))
    path = tmp_path / 'evil.pth.tar'
    with open(path, 'wb') as f:
        torch.save({'generator': _Payload(), 'epoch': 1}, f)
    with pytest.raises(CheckpointError, match='refused'):
        read_checkpoint(str(path))
    assert not marker.exists()
    # the plain-pickle (non-torch) variant too
    path2 = tmp_path / 'evil2.pth.tar'
    path2.write_bytes(pickle.dumps({'generator': _Payload()}))
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path2))
    assert not marker.exists()


def test_legacy_and_zip_checkpoints_load_the_same():
    ref = shared_path('fixtures', 'reference')
    cfg = load_config(str(ref / 'fomm-tiny-a.yaml')).to_dict()
    a = build_networks(cfg['model_params'])
    b = build_networks(cfg['model_params'])
    ea = Logger.load_cpk(str(ref / 'fomm-tiny-a.pth.tar'), generator=a[0], kp_detector=a[1], discriminator=a[2])
    eb = Logger.load_cpk(str(ref / 'fomm-tiny-a.legacy.pth.tar'), generator=b[0], kp_detector=b[1],
                         discriminator=b[2])
    assert ea == eb == 3
    for ma, mb in zip(a, b):
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(va, vb), k


def test_checkpoint_without_discriminator_and_shape_mismatch(tmp_path):
    cfg = tiny_config()
    gen, kp, disc = build_networks(cfg['model_params'])
    path = tmp_path / 'inference-only.pth.tar'
    save_atomic({'generator': gen.state_dict(), 'kp_detector': kp.state_dict(), 'epoch': 5}, str(path))
    g2, k2, d2 = build_networks(cfg['model_params'])
    assert Logger.load_cpk(str(path), generator=g2, kp_detector=k2, discriminator=d2, verbose=False) == 5
    assert torch.equal(g2.final.weight, gen.final.weight)
    other = tiny_config(**{'model_params.common_params.num_kp': 6})
    g3, k3, _ = build_networks(other['model_params'])
    with pytest.raises(CheckpointError) as err:
        Logger.load_cpk(str(path), generator=g3, kp_detector=k3)
    msg = str(err.value)
    assert 'generator.dense_motion_network' in msg and 'shape' in msg and '[' in msg


def test_config_typo_names_key_file_and_nearest(tmp_path):
    text = (ROOT / 'config' / 'vox-256.yaml').read_text().replace('num_bottleneck_blocks', 'num_botleneck_blocks')
    path = tmp_path / 'typo.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "model_params.generator_params.num_botleneck_blocks" in msg
    assert "did you mean 'model_params.generator_params.num_bottleneck_blocks'" in msg


def test_config_defaults_and_type_errors(tmp_path):
    cfg = load_config(str(ROOT / 'config' / 'vox-256.yaml'))
    assert cfg.model_params.kp_detector_params.single_jacobian_map is False  # absent -> original default
    assert cfg.model_params.discriminator_params.use_kp is False
    assert cfg.dataset_params.augmentation_params.crop_param is None
    bad = tmp_path / 'bad.yaml'
    bad.write_text((ROOT / 'config' / 'vox-256.yaml').read_text().replace('num_kp: 10', 'num_kp: ten'))
    with pytest.raises(ConfigError, match='common_params.num_kp: expected a number'):
        load_config(str(bad))
    small = tmp_path / 'small.yaml'
    small.write_text((ROOT / 'tests' / 'tiny.yaml').read_text().replace('scales: [1, 0.5, 0.25]',
                                                                       'scales: [1, 0.5, 0.25, 0.125]'))
    load_config(str(small))  # inference does not use the training pyramid
    with pytest.raises(ConfigError, match='16 px'):
        load_config(str(small), mode='train')


def _batch():
    g = torch.Generator().manual_seed(3)
    return {'source': torch.rand(2, 3, 64, 64, generator=g), 'driving': torch.rand(2, 3, 64, 64, generator=g)}


def test_bf16_autocast_full_model_close_to_fp32():
    torch.manual_seed(0)
    cfg = tiny_config()
    gen, kp, disc = build_networks(cfg['model_params'])
    gen.eval(), kp.eval()
    x = _batch()
    with torch.no_grad():
        kps, kpd = kp(x['source']), kp(x['driving'])
        ref = gen(x['source'], kp_source=kps, kp_driving=kpd)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            kps16, kpd16 = kp(x['source']), kp(x['driving'])
            out = gen(x['source'], kp_source=kps16, kp_driving=kpd16)
    assert kps16['value'].dtype == torch.float32  # coordinates stay float32
    # measured here: keypoints 2.0e-4, prediction mean 6.0e-4 / max 2.0e-3; bounds 5x those
    assert (kps16['value'] - kps['value']).abs().max() < 1e-3
    assert out['prediction'].dtype == torch.bfloat16
    err = (out['prediction'].float() - ref['prediction']).abs()
    assert err.mean() < 3e-3 and err.max() < 1e-2, (err.mean(), err.max())


BF16_EPS = 2.0 ** -8  # bf16 keeps 8 significant bits: rounding a value moves it by at most 2^-8 of itself


def test_bf16_training_losses_close_to_fp32(seeded_torch_home):
    """The loss arithmetic under bf16 autocast stays within what 8-bit rounding allows, on the same
    generated frames and keypoints (computed once in fp32). The chain before them is left out on
    purpose: the keypoint softmax at temperature 0.1 multiplies a logit's rounding by 10, so keypoints
    move by up to ~0.05 and the whole loss follows them, by an amount that depends on the CPU's bf16
    kernels (AMX accumulates differently from AVX512-BF16); that chain is covered by the generator
    check above and by the 50-step parity of bench/bench_train.py."""
    torch.manual_seed(0)
    cfg = tiny_config()
    gen, kp, disc = build_networks(cfg['model_params'])
    full = GeneratorFullModel(kp, gen, disc, cfg['train_params'])
    x = _batch()
    with torch.no_grad():
        kp_driving = kp(x['driving'])
        generated = gen(x['source'], kp_source=kp(x['source']), kp_driving=kp_driving)
        pyramid_generated, pyramid_real = full.pyramid(generated['prediction']), full.pyramid(x['driving'])
        state = copy.deepcopy(disc.state_dict())  # spectral norm's power iteration moves u at each pass
        losses = {}
        for precision in ('fp32', 'bf16'):
            disc.load_state_dict(state)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
                losses[precision] = {'perceptual': full.perceptual_loss(pyramid_generated, pyramid_real),
                                     **full.gan_losses(pyramid_generated, pyramid_real, kp_driving)}
        disc.load_state_dict(state)
        p = disc(pyramid_generated, kp=kp_driving)['prediction_map_1'].float()
    ref, low = losses['fp32'], losses['bf16']
    # Perceptual loss and feature matching: means of |a - b| over features of two different images.
    # VGG19 up to its fifth slice has 13 convolutions (the discriminator 5), each rounding its input
    # and its weights: independent roundings add in quadrature, sqrt(2 * 13) * 2^-8 = 2.0% of a
    # feature at most, and so of the mean of differences that do not cancel.
    for k in ('perceptual', 'feature_matching'):
        assert abs(low[k].item() - ref[k].item()) <= math.sqrt(2 * 13) * BF16_EPS * abs(ref[k].item()), k
    # gen_gan = mean((1 - p)^2) of the discriminator's map p. With |dp| <= eps_d * rms(p), eps_d the
    # worst case of its 5 layers x 2 roundings, linear: 10 * 2^-8; Cauchy-Schwarz on
    # mean(2 (1 - p) dp + dp^2) gives the bound. (A relative bound would not do: p is a sum that
    # cancels, and 1 - p can be small.)
    eps_d = 10 * BF16_EPS
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    bound = 2 * eps_d * rms(p) * rms(1 - p) + (eps_d * rms(p)) ** 2
    assert abs(low['gen_gan'].item() - ref['gen_gan'].item()) <= bound, (low['gen_gan'], ref['gen_gan'], bound)
    assert all(torch.isfinite(v).all() for v in low.values())


def test_one_training_step_changes_weights_and_lowers_loss(seeded_torch_home):
    """One Adam step moves the weights of both models; on a fixed batch the discriminator's loss drops
    after one step and the generator's after a few (at random init a single Adam step is within the
    noise of the equivariance terms: the keypoint softmax at temperature 0.1 is very sensitive)."""
    torch.manual_seed(0)
    cfg = tiny_config()
    gen, kp, disc = build_networks(cfg['model_params'])
    tp = cfg['train_params']
    gfull = GeneratorFullModel(kp, gen, disc, tp)
    dfull = DiscriminatorFullModel(kp, gen, disc, tp)
    opt_g = torch.optim.Adam(list(gen.parameters()) + list(kp.parameters()), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = _batch()

    def generator_loss():
        torch.manual_seed(7)  # the same random equivariance transform each time
        losses, generated = gfull(x)
        return sum(losses.values()), generated

    before_g = copy.deepcopy(gen.state_dict())
    before_d = copy.deepcopy(disc.state_dict())
    loss0, generated = generator_loss()
    loss0.backward()
    opt_g.step()
    opt_g.zero_grad()
    changed_g = any(not torch.equal(v, gen.state_dict()[k]) for k, v in before_g.items() if v.is_floating_point())
    for _ in range(4):
        loss1, generated = generator_loss()
        loss1.backward()
        opt_g.step()
        opt_g.zero_grad()
    loss1, generated = generator_loss()
    assert loss1.item() < loss0.item() - 1.0, (loss0.item(), loss1.item())

    dloss0 = sum(dfull(x, generated).values())
    dloss0.backward()
    opt_d.step()
    opt_d.zero_grad()
    dloss1 = sum(dfull(x, generated).values())
    assert dloss1.item() < dloss0.item(), (dloss0.item(), dloss1.item())

    changed_d = any(not torch.equal(v, disc.state_dict()[k]) for k, v in before_d.items() if v.is_floating_point())
    assert changed_g and changed_d


def test_vgg_weights_missing_offline_gives_one_clear_error(tmp_path, monkeypatch):
    from modules.model import VGGWeightsError, Vgg19
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))

    def no_network(*args, **kwargs):
        raise OSError('network unreachable')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    with pytest.raises(VGGWeightsError) as err:
        Vgg19()
    msg = str(err.value)
    assert 'vgg19-dcbb9e9d.pth' in msg and str(tmp_path / 'empty') in msg and 'seeded' in msg
    assert Vgg19(weights='seeded').features[0].weight.abs().sum() > 0


def test_discriminator_is_accurate_on_a_nearly_flat_frame():
    """A blurry generated frame (spread ~0.04 around 0.5) goes through a conv whose output is ~200
    with a spatial spread of ~0.25 before the InstanceNorm; without centring, float32 rounding
    moved the LSGAN value by 1e-4 relative (the reference tolerance) on some CPU kernels."""
    from modules.discriminator import MultiScaleDiscriminator
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(scales=[1], block_expansion=8, max_features=64, num_blocks=4, sn=True).eval()
    frame = 0.5 + 0.04 * torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = disc.double()({'prediction_1': frame.double()})['prediction_map_1']
        got = disc.float()({'prediction_1': frame})['prediction_map_1'].double()
    value_ref, value = ((1 - ref) ** 2).mean(), ((1 - got) ** 2).mean()
    # measured: 2e-7 relative with centring, 5e-5..1e-4 without
    assert abs(value - value_ref) / value_ref < 2e-6, (value.item(), value_ref.item())
