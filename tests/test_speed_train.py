"""The training step's speed options: same numbers as the plain step up to float rounding (the
opt-in batched keypoints aside), fused Adam across resume, cached coordinate grids."""
import copy

import pytest
import torch

from conftest import ROOT
from core.config import load_config
from modules.model import GeneratorFullModel
from modules.networks import build_networks
from modules.util import coordinate_grid, make_coordinate_grid
from train import (StepOptions, keep_fused, make_optimizers, place_networks, prepare_step, step_options, to_device,
                   train_step)

CPU = torch.device('cpu')


@pytest.fixture
def tiny(seeded_torch_home, one_thread):
    config = load_config(str(ROOT / 'tests' / 'tiny.yaml'), mode='train')
    torch.manual_seed(0)
    nets = build_networks(config.to_dict()['model_params'])
    state = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
    g = torch.Generator().manual_seed(1)
    batch = {'source': torch.rand(2, 3, 64, 64, generator=g), 'driving': torch.rand(2, 3, 64, 64, generator=g)}
    return config, state, batch


def one_step(config, state, batch, options: StepOptions, float64: bool = False):
    """(losses, gradients after backward, parameters after the step) of one train_step; `float64`:
    everything in double precision (a reference for the rounding of the float32 steps)."""
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    for net, saved in zip((generator, kp_detector, discriminator), state):
        net.load_state_dict(saved)
    place_networks([generator, discriminator, kp_detector], CPU, options)
    optimizers, _ = make_optimizers(generator, discriminator, kp_detector, config.train_params,
                                    fused=options.fused_adam)
    full, disc_full, scaler = prepare_step(config, generator, discriminator, kp_detector, CPU, options)
    if float64:
        full.double(), disc_full.double()
        batch = {k: v.double() for k, v in batch.items()}
    grads = {}

    def mark(phase):
        if phase == 'backward' and not grads:  # the generator side's gradients, before its update
            grads.update({name: p.grad.clone() for name, p in generator.named_parameters() if p.grad is not None})
    torch.manual_seed(5)  # the same random equivariance transform
    losses, _ = train_step(to_device(batch, CPU, options), full, disc_full, optimizers, scaler, CPU,
                           options.precision, True, mark=mark)
    params = {name: p.detach().clone() for name, p in generator.named_parameters()}
    return {k: v.item() for k, v in losses.items()}, grads, params


def test_default_options_give_the_plain_step_numbers(tiny):
    """Channels-last and fused Adam (the defaults on CPU) change the step's numbers only by float
    rounding: the same losses and gradients, and fused Adam the same update."""
    config, state, batch = tiny
    plain = one_step(config, state, batch, StepOptions(channels_last=False, fused_adam=False))
    default_options = step_options(CPU, 'fp32')
    assert default_options.channels_last and default_options.fused_adam  # available in this torch, on CPU
    fast = one_step(config, state, batch, default_options)
    for k, v in plain[0].items():
        assert fast[0][k] == pytest.approx(v, rel=1e-4), k
    assert plain[1].keys() == fast[1].keys() and len(plain[1]) > 20
    # the gradient through the keypoints' softmax (temperature 0.1), the bilinear warps and the L1
    # terms is sensitive to rounding: the plain float32 step itself is ~6e-3 (relative L2) away
    # from a float64 evaluation of the same step; channels-last must be no further off than that
    exact = one_step(config, state, batch, StepOptions(), float64=True)
    flat = lambda grads: torch.cat([grads[name].double().flatten() for name in sorted(plain[1])])  # noqa: E731
    error = {name: float((flat(run[1]) - flat(exact[1])).norm() / flat(exact[1]).norm())
             for name, run in (('plain', plain), ('default', fast))}
    assert error['plain'] < 0.02 and error['default'] < 3 * error['plain'], error
    # Adam alone: fused and for-loop make the same update from the same gradients
    fused_only = one_step(config, state, batch, StepOptions(channels_last=False, fused_adam=True))
    for name, p in plain[2].items():
        assert float((fused_only[2][name] - p).abs().max()) < 1e-7, name


def test_batched_keypoints_only_change_batchnorm_statistics(tiny):
    """One keypoint-detector call on source, driving and transformed frames gives the separate
    calls' losses where BatchNorm uses running statistics (eval mode); in training mode it
    normalises over all three sets at once, which is why it is opt-in."""
    config, state, batch = tiny
    train_params = config.to_dict()['train_params']
    losses = {}
    for batched in (False, True):
        for mode in ('eval', 'train'):
            generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
            for net, saved in zip((generator, kp_detector, discriminator), state):
                net.load_state_dict(saved)
                net.train(mode == 'train')
            full = GeneratorFullModel(kp_detector, generator, discriminator, train_params, batch_keypoints=batched)
            torch.manual_seed(5)
            losses[batched, mode] = {k: v.item() for k, v in full(batch)[0].items()}
    for k, v in losses[False, 'eval'].items():
        assert losses[True, 'eval'][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert any(losses[True, 'train'][k] != pytest.approx(v, rel=1e-4) for k, v in losses[False, 'train'].items())


def test_resumed_adam_keeps_this_runs_fused_choice(tmp_path):
    """A saved Adam state imposes its own `fused` flag on load (absent in an original checkpoint,
    True in one written with fused Adam): keep_fused restores the run's choice and puts the step
    counts where that implementation wants them, and the optimizer steps."""
    net = torch.nn.Conv2d(3, 4, 3)
    saved = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    net(torch.rand(1, 3, 8, 8)).sum().backward()
    saved.step()
    state = saved.state_dict()
    original = {'state': {k: dict(v, step=int(v['step'])) for k, v in state['state'].items()},  # as old torch
                'param_groups': [{k: v for k, v in g.items() if k != 'fused'} for g in state['param_groups']]}
    for source, fused in ((original, True), (state, False), (state, True)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True if fused else None)
        opt.load_state_dict(copy.deepcopy(source))  # loading may adopt the saved tensors themselves
        keep_fused(opt, fused)
        assert opt.param_groups[0]['fused'] == (True if fused else None)
        for p in net.parameters():
            assert opt.state[p]['step'].dtype == torch.float32 and float(opt.state[p]['step']) == 1
        net.zero_grad()
        net(torch.rand(1, 3, 8, 8)).sum().backward()
        before = net.weight.detach().clone()
        opt.step()
        assert not torch.equal(before, net.weight) and float(opt.state[net.weight]['step']) == 2


def test_coordinate_grids_are_cached_and_usable_after_inference_mode():
    """The cached grid holds make_coordinate_grid's values; one first made under inference_mode
    (the engine) can still be saved by autograd in a training step."""
    with torch.inference_mode():
        grid = coordinate_grid((5, 7), torch.float32, CPU)
    assert torch.equal(grid, make_coordinate_grid((5, 7), torch.float32))
    assert coordinate_grid((5, 7), torch.float32, CPU) is grid
    heat = torch.rand(5, 7, 1, requires_grad=True)
    (heat * grid).sum().backward()  # an inference tensor here would raise
    assert torch.equal(heat.grad, grid.sum(-1, keepdim=True))


def test_vgg_cast_once_gives_autocasts_features(tiny):
    """Under bf16 autocast the perceptual loss runs a copy of the frozen VGG19 whose convolution
    weights are already bf16: the same features as autocast casting them at every call; the
    module itself keeps its float32 weights, and outside autocast it is the one used."""
    config, state, batch = tiny
    generator, kp_detector, discriminator = build_networks(config.to_dict()['model_params'])
    full = GeneratorFullModel(kp_detector, generator, discriminator, config.to_dict()['train_params'])
    image = batch['driving']
    assert full.vgg_for(image) is full.vgg
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        cast = full.vgg_for(image)
        assert cast is not full.vgg and cast is full.vgg_for(image)  # made once
        assert all(torch.equal(a, b) for a, b in zip(cast(image), full.vgg(image)))
    assert all(p.dtype == torch.float32 for p in full.vgg.parameters())
    assert all(p.dtype == torch.bfloat16 for n, p in cast.named_parameters() if n.endswith('weight'))
