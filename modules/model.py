"""Training models: image pyramid, random equivariance transform, VGG19 and the full losses.

Losses (Sec. 3.4 of the paper): a multi-scale perceptual reconstruction loss on VGG19 features
(Johnson et al.), optional LSGAN + feature matching with a multi-scale discriminator, and the
equivariance constraints on keypoint values and Jacobians under a random thin-plate-spline warp
T_{X<-Y} (Eqs. 9-11): kp(X) = T(kp(Y)) and J(X) = dT/dz * J(Y), checked as J(X)^-1 (dT/dz J(Y)) = I.
"""
import copy
import os
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.autograd import grad

from core.runtime import unwrap
from modules.discriminator import scale_key
from modules.fused import cast_conv_weights
from modules.util import (AntiAliasInterpolation2d, coordinate_grid, detach_kp, grid_sample_fp32, inverse_2x2,
                          make_coordinate_grid, matmul_2x2)


class ImagePyramide(nn.Module):
    """image (B, C, H, W) -> {'prediction_<scale>': anti-aliased image at that scale}."""

    def __init__(self, scales: Sequence[float], num_channels: int):
        super().__init__()
        self.downs = nn.ModuleDict({scale_key(s): AntiAliasInterpolation2d(num_channels, s) for s in scales})

    def forward(self, x) -> Dict[str, torch.Tensor]:
        return {'prediction_' + key.replace('-', '.'): down(x) for key, down in self.downs.items()}


def autocast_dtype_in_effect(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast lowers to on this device type, or None where it is off."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == 'cpu':
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device`; to a GPU through pinned memory, so the copy does not wait for it."""
    if device is None or torch.device(device).type == 'cpu':
        return t
    if torch.device(device).type == 'cuda':
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Transform:
    """Random affine + thin-plate-spline warp used by the equivariance losses.

    theta: (B, 2, 3) affine parameters; control_points: (1, P*P, 2); control_params: (B, 1, P*P).
    The parameters are drawn on the CPU (the original's random stream, whatever the device) and
    moved to `device` once, without waiting for the GPU.
    """

    def __init__(self, bs, sigma_affine, sigma_tps=None, points_tps=None, device=None):
        noise = torch.normal(mean=0, std=sigma_affine * torch.ones([bs, 2, 3]))
        self.theta = _to_device(noise + torch.eye(2, 3).view(1, 2, 3), device)
        self.bs = bs
        self.tps = sigma_tps is not None and points_tps is not None  # as the original: both keys or no TPS
        if self.tps:
            self.control_points = _to_device(make_coordinate_grid((points_tps, points_tps), type=noise.dtype)
                                              .view(1, -1, 2), device)
            self.control_params = _to_device(
                torch.normal(mean=0, std=sigma_tps * torch.ones([bs, 1, points_tps ** 2])), device)

    def transform_frame(self, frame):
        """Warp frames (B, C, H, W) by the transform (reflection padding at the borders)."""
        h, w = frame.shape[2:]
        grid = coordinate_grid((h, w), torch.float32, frame.device).view(1, h * w, 2)
        grid = self.warp_coordinates(grid).view(self.bs, h, w, 2)
        return grid_sample_fp32(frame, grid, padding_mode='reflection')

    def warp_coordinates(self, coordinates):
        """(B or 1, N, 2) -> (B, N, 2), in float32 (or float64 if given float64)."""
        if coordinates.dtype != torch.float64:
            coordinates = coordinates.float()
        theta = self.theta.to(coordinates)
        # affine part, elementwise so autocast keeps it in float32
        transformed = (theta[:, None, :, :2] * coordinates.unsqueeze(-2)).sum(-1) + theta[:, None, :, 2]
        if self.tps:
            control_points = self.control_points.to(coordinates)
            control_params = self.control_params.to(coordinates)
            # the original measures the radial distance with the L1 norm; kept for equal numerics
            distances = (coordinates.view(coordinates.shape[0], -1, 1, 2) - control_points.view(1, 1, -1, 2))
            distances = distances.abs().sum(-1)
            result = distances ** 2 * torch.log(distances + 1e-6) * control_params
            transformed = transformed + result.sum(dim=2).view(self.bs, coordinates.shape[1], 1)
        return transformed

    def jacobian(self, coordinates):
        """d warp / d coordinates by autograd: (B, N, 2) -> (B, N, 2, 2)."""
        if not coordinates.requires_grad:
            coordinates = coordinates.detach().requires_grad_(True)
        with torch.enable_grad():
            new_coordinates = self.warp_coordinates(coordinates)
            grad_x = grad(new_coordinates[..., 0].sum(), coordinates, create_graph=True)[0]
            grad_y = grad(new_coordinates[..., 1].sum(), coordinates, create_graph=True)[0]
        return torch.stack([grad_x, grad_y], dim=-2)


VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'
VGG19_FILE = 'vgg19-dcbb9e9d.pth'
# torchvision's vgg19 `features` up to relu5_1: channels per conv, 'M' for max pooling
_VGG19_PLAN = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512]
_VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)  # after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_MIN_SIZE = 16  # four max-poolings before relu5_1


class VGGWeightsError(RuntimeError):
    """The VGG19 weights for the perceptual loss are not available."""


def seeded_vgg19_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Fixed random VGG19 weights (He-scaled), a documented stand-in where ImageNet weights
    cannot be had: random conv features still give a usable multi-scale perceptual loss."""
    g = torch.Generator().manual_seed(seed)
    state, cin, index = {}, 3, 0
    for v in _VGG19_PLAN:
        if v == 'M':
            index += 1
            continue
        state['features.%d.weight' % index] = torch.randn(v, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5
        state['features.%d.bias' % index] = torch.randn(v, generator=g) * 0.01
        cin, index = v, index + 2
    return state


def _torch_hub_checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def load_vgg19_state(weights: Optional[str] = 'imagenet') -> Dict[str, torch.Tensor]:
    """VGG19 `features.*` weights.

    weights: 'imagenet' (torchvision's file, from $TORCH_HOME/hub/checkpoints or downloaded once),
    'seeded' / 'seeded:<seed>' (fixed random weights), or a path to a .pth file.
    """
    weights = weights or 'imagenet'
    if weights.startswith('seeded'):
        seed = int(weights.split(':', 1)[1]) if ':' in weights else 0
        return seeded_vgg19_state(seed)
    if weights == 'imagenet':
        path = os.path.join(_torch_hub_checkpoint_dir(), VGG19_FILE)
        if not os.path.isfile(path):
            try:
                return torch.hub.load_state_dict_from_url(VGG19_URL, progress=False, weights_only=True)
            except Exception as exc:  # offline, proxy, partial file: one clear line
                raise VGGWeightsError(
                    'VGG19 ImageNet weights for the perceptual loss are not available (%s): download %s and '
                    'put it at %s, or set train_params.vgg_weights to a file path, or to "seeded" for fixed '
                    'random weights' % (type(exc).__name__, VGG19_URL, path)) from None
    else:
        path = weights
        if not os.path.isfile(path):
            raise VGGWeightsError('train_params.vgg_weights: file not found: %s' % path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise VGGWeightsError('cannot read VGG19 weights %s: %s' % (path, exc)) from None


class Vgg19(nn.Module):
    """VGG19 feature extractor for the perceptual loss: [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1].

    `features` has torchvision's layout, so its `vgg19-dcbb9e9d.pth` (or a file holding only the
    `features.*` entries) loads. Input in [0, 1]; ImageNet normalisation is applied inside.
    """

    def __init__(self, requires_grad=False, weights: Optional[str] = 'imagenet'):
        super().__init__()
        layers, cin = [], 3
        for v in _VGG19_PLAN:
            if v == 'M':
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            state = load_vgg19_state(weights)
            wanted = self.features.state_dict().keys()
            state = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
            missing = [k for k in wanted if k not in state]
            if missing:
                raise VGGWeightsError('VGG19 weights lack features.%s' % missing[0])
            self.features.load_state_dict({k: state[k] for k in wanted})
        if not requires_grad:
            for p in self.parameters():
                p.requires_grad = False

    def forward(self, x):
        if min(x.shape[2:]) < VGG_MIN_SIZE:
            raise ValueError('perceptual loss: a %dx%d image cannot go through the five VGG19 slices '
                             '(needs >= %d px); drop the smaller train_params.scales'
                             % (x.shape[2], x.shape[3], VGG_MIN_SIZE))
        out = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats, start = [], 0
        for end in _VGG19_SLICE_ENDS:
            for layer in self.features[start:end]:
                out = layer(out)
            feats.append(out)
            start = end
        return feats


class _TrainingModel(nn.Module):
    """The three networks and the training parameters both loss models hold; `scales` are the
    image-pyramid scales the model compares images at."""

    def __init__(self, kp_extractor, generator, discriminator, train_params, scales):
        super().__init__()
        self.kp_extractor = kp_extractor
        self.generator = generator
        self.discriminator = discriminator
        self.train_params = train_params
        self.scales = scales
        self.pyramid = ImagePyramide(scales, unwrap(generator).num_channels)
        self.loss_weights = train_params['loss_weights']


class GeneratorFullModel(_TrainingModel):
    """Keypoint detector + generator with every generator-side loss; returns (losses, generated).

    batch_keypoints (opt-in, off by default): detect the keypoints of source, driving and
    equivariance-transformed frames in one call of the keypoint detector instead of three. Fewer,
    larger convolutions, but in training mode its BatchNorm layers then normalise over all three
    sets at once, so the numbers differ from the original's (which normalises each set alone).
    """

    def __init__(self, kp_extractor, generator, discriminator, train_params, batch_keypoints: bool = False):
        super().__init__(kp_extractor, generator, discriminator, train_params, train_params['scales'])
        self.disc_scales = unwrap(discriminator).scales if discriminator is not None else []
        self.batch_keypoints = batch_keypoints
        if sum(self.loss_weights['perceptual']) != 0:
            self.vgg = Vgg19(weights=train_params.get('vgg_weights', 'imagenet'))
            self.vgg.eval()
        self._vgg_cast = {}  # (dtype, device) -> a copy of the frozen VGG19 with its conv weights in dtype

    def forward(self, x):
        w = self.loss_weights
        equivariance = (w['equivariance_value'] + w['equivariance_jacobian']) != 0
        transform = transformed = None
        if self.batch_keypoints:
            transform = self._transform(x) if equivariance else None
            kp_source, kp_driving, transformed = self._keypoints_batched(x, transform)
        else:
            kp_source = self.kp_extractor(x['source'])
            kp_driving = self.kp_extractor(x['driving'])
        generated = self.generator(x['source'], kp_source=kp_source, kp_driving=kp_driving)
        generated.update({'kp_source': kp_source, 'kp_driving': kp_driving})

        loss_values = {}
        pyramide_real = self.pyramid(x['driving'])
        pyramide_generated = self.pyramid(generated['prediction'])
        if sum(w['perceptual']) != 0:
            loss_values['perceptual'] = self.perceptual_loss(pyramide_generated, pyramide_real)
        if w['generator_gan'] != 0:
            loss_values.update(self.gan_losses(pyramide_generated, pyramide_real, kp_driving))
        if equivariance:
            if transform is None:  # the original's order: the transform is drawn after the generator ran
                transform = self._transform(x)
                frame = transform.transform_frame(x['driving'])
                transformed = (frame, self.kp_extractor(frame))
            generated['transformed_frame'], generated['transformed_kp'] = transformed
            loss_values.update(self.equivariance_losses(transform, kp_driving, generated['transformed_kp']))
        return loss_values, generated

    def _transform(self, x) -> 'Transform':
        return Transform(x['driving'].shape[0], **self.train_params['transform_params'], device=x['driving'].device)

    def _keypoints_batched(self, x, transform):
        """(kp_source, kp_driving, (transformed frame, its keypoints) or None) from one call of the
        keypoint detector on the frames concatenated along the batch."""
        frames = [x['source'], x['driving']]
        if transform is not None:
            frames.append(transform.transform_frame(x['driving']))
        kp = self.kp_extractor(torch.cat(frames))
        parts = [{k: v[i * len(frames[0]):(i + 1) * len(frames[0])] for k, v in kp.items()}
                 for i in range(len(frames))]
        return parts[0], parts[1], ((frames[2], parts[2]) if transform is not None else None)

    def perceptual_loss(self, pyramide_generated, pyramide_real):
        """Multi-scale perceptual loss: L1 between VGG19 features of generated and real frames."""
        value_total = 0
        vgg = self.vgg_for(pyramide_real['prediction_' + str(self.scales[0])])
        for scale in self.scales:
            x_vgg = vgg(pyramide_generated['prediction_' + str(scale)])
            with torch.no_grad():  # the target's features need no graph
                y_vgg = vgg(pyramide_real['prediction_' + str(scale)])
            for i, weight in enumerate(self.loss_weights['perceptual']):
                value_total += weight * torch.abs(x_vgg[i] - y_vgg[i]).float().mean()
        return value_total

    def vgg_for(self, x) -> nn.Module:
        """The VGG19 to run on `x`: under autocast, a copy with its convolution weights already in
        the autocast dtype. Autocast casts a weight once per step only when it is trained; the
        frozen VGG's were cast again at each of the step's calls (2 per scale). Same numbers."""
        dtype = autocast_dtype_in_effect(x.device.type)
        if dtype is None or not x.is_floating_point():
            return self.vgg
        key = (dtype, x.device)
        if key not in self._vgg_cast:
            self._vgg_cast[key] = cast_conv_weights(copy.deepcopy(self.vgg), dtype)
        return self._vgg_cast[key]

    def gan_losses(self, pyramide_generated, pyramide_real, kp_driving) -> dict:
        """LSGAN generator loss and discriminator feature matching, per discriminator scale."""
        w = self.loss_weights
        maps_generated = self.discriminator(pyramide_generated, kp=detach_kp(kp_driving))
        maps_real = self.discriminator(pyramide_real, kp=detach_kp(kp_driving))
        value_total = 0
        for scale in self.disc_scales:
            value = ((1 - maps_generated['prediction_map_%s' % scale].float()) ** 2).mean()
            value_total += w['generator_gan'] * value
        losses = {'gen_gan': value_total}
        if sum(w['feature_matching']) != 0:
            value_total = 0
            for scale in self.disc_scales:
                key = 'feature_maps_%s' % scale
                for i, (a, b) in enumerate(zip(maps_real[key], maps_generated[key])):
                    if w['feature_matching'][i] == 0:
                        continue
                    value_total += w['feature_matching'][i] * torch.abs(a - b).float().mean()
            losses['feature_matching'] = value_total
        return losses

    def equivariance_losses(self, transform, kp_driving, transformed_kp) -> dict:
        """Eqs. (9)-(11): keypoints and Jacobians of the transformed frame, mapped back by the
        transform, should equal those of the driving frame."""
        w = self.loss_weights
        losses = {}
        if w['equivariance_value'] != 0:
            value = torch.abs(kp_driving['value'] - transform.warp_coordinates(transformed_kp['value'])).mean()
            losses['equivariance_value'] = w['equivariance_value'] * value
        if w['equivariance_jacobian'] != 0:
            # Eq. (11): J_X^-1 (dT/dz J_Y) should be the identity
            jacobian_transformed = matmul_2x2(transform.jacobian(transformed_kp['value']), transformed_kp['jacobian'])
            value = matmul_2x2(inverse_2x2(kp_driving['jacobian']), jacobian_transformed)
            eye = torch.eye(2, dtype=value.dtype, device=value.device).view(1, 1, 2, 2)
            losses['equivariance_jacobian'] = w['equivariance_jacobian'] * torch.abs(eye - value).mean()
        return losses


class DiscriminatorFullModel(_TrainingModel):
    """LSGAN discriminator loss on real driving frames vs generated ones (detached)."""

    def __init__(self, kp_extractor, generator, discriminator, train_params):
        super().__init__(kp_extractor, generator, discriminator, train_params, unwrap(discriminator).scales)

    def forward(self, x, generated):
        pyramide_real = self.pyramid(x['driving'])
        pyramide_generated = self.pyramid(generated['prediction'].detach())
        kp_driving = detach_kp(generated['kp_driving'])
        maps_generated = self.discriminator(pyramide_generated, kp=kp_driving)
        maps_real = self.discriminator(pyramide_real, kp=kp_driving)

        value_total = 0
        for scale in self.scales:
            key = 'prediction_map_%s' % scale
            value = (1 - maps_real[key].float()) ** 2 + maps_generated[key].float() ** 2
            value_total += self.loss_weights['discriminator_gan'] * value.mean()
        return {'disc_gan': value_total}
