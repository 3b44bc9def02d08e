"""Typed configuration: the YAML layout of the original configs, as dataclasses.

`load_config(path)` reads a YAML file with `yaml.safe_load`, checks every key against the schema
below (an unknown or misspelt key fails with the key, the file and the nearest valid key), fills
absent optional keys with the original's defaults, and returns a `Config`. `Config.to_dict()` gives
the plain nested dict that the modules take as keyword arguments and that checkpoints store.
"""
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml


class ConfigError(ValueError):
    """A config file that does not fit the schema; the message names the file and the key."""


# ---------------------------------------------------------------------------------- dataset
@dataclass
class FlipParams:
    horizontal_flip: bool = False
    time_flip: bool = False


@dataclass
class JitterParams:
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass
class CropParams:
    size: List[int] = field(default_factory=lambda: [256, 256])


@dataclass
class ResizeParams:
    ratio: List[float] = field(default_factory=lambda: [0.9, 1.1])


@dataclass
class RotationParams:
    degrees: float = 0.0


@dataclass
class AugmentationParams:
    flip_param: Optional[FlipParams] = None
    jitter_param: Optional[JitterParams] = None
    crop_param: Optional[CropParams] = None
    resize_param: Optional[ResizeParams] = None
    rotation_param: Optional[RotationParams] = None


@dataclass
class DatasetParams:
    root_dir: Optional[str] = None
    frame_shape: List[int] = field(default_factory=lambda: [256, 256, 3])
    id_sampling: bool = False
    pairs_list: Optional[str] = None
    augmentation_params: Optional[AugmentationParams] = None
    # this project's addition: per-process budget (MB) for decoded training frames kept in memory
    cache_mb: float = 256


# ------------------------------------------------------------------------------------ model
@dataclass
class CommonParams:
    num_kp: int
    num_channels: int = 3
    estimate_jacobian: bool = False


@dataclass
class KPDetectorParams:
    temperature: float
    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float = 1
    single_jacobian_map: bool = False
    pad: int = 0


@dataclass
class DenseMotionParams:
    block_expansion: int
    max_features: int
    num_blocks: int
    scale_factor: float = 1
    kp_variance: float = 0.01


@dataclass
class GeneratorParams:
    block_expansion: int
    max_features: int
    num_down_blocks: int
    num_bottleneck_blocks: int
    estimate_occlusion_map: bool = False
    dense_motion_params: Optional[DenseMotionParams] = None


@dataclass
class DiscriminatorParams:
    scales: List[float] = field(default_factory=lambda: [1])
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    sn: bool = False
    use_kp: bool = False
    kp_variance: float = 0.01


@dataclass
class ModelParams:
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    generator_params: GeneratorParams
    discriminator_params: DiscriminatorParams = field(default_factory=DiscriminatorParams)


# ------------------------------------------------------------------------------------ train
@dataclass
class TransformParams:
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


@dataclass
class LossWeights:
    generator_gan: float = 0
    discriminator_gan: float = 1
    feature_matching: List[float] = field(default_factory=lambda: [10, 10, 10, 10])
    perceptual: List[float] = field(default_factory=lambda: [10, 10, 10, 10, 10])
    equivariance_value: float = 10
    equivariance_jacobian: float = 10


@dataclass
class TrainParams:
    num_epochs: int = 100
    num_repeats: int = 1
    epoch_milestones: List[int] = field(default_factory=list)
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    lr_kp_detector: float = 2e-4
    batch_size: int = 1
    scales: List[float] = field(default_factory=lambda: [1, 0.5, 0.25, 0.125])
    checkpoint_freq: int = 50
    transform_params: TransformParams = field(default_factory=TransformParams)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # this project's additions (absent from the published configs)
    vgg_weights: str = 'imagenet'  # 'imagenet', 'seeded' / 'seeded:<seed>' (fixed random), or a .pth path
    num_workers: Optional[int] = None  # DataLoader workers; None: chosen from the machine


# -------------------------------------------------------------------------------- inference
@dataclass
class ReconstructionParams:
    num_videos: Optional[int] = 1000
    format: str = '.mp4'


@dataclass
class NormalizationParams:
    adapt_movement_scale: bool = False
    use_relative_movement: bool = True
    use_relative_jacobian: bool = True


@dataclass
class AnimateParams:
    num_pairs: int = 50
    format: str = '.mp4'
    normalization_params: NormalizationParams = field(default_factory=NormalizationParams)


@dataclass
class VisualizerParams:
    kp_size: int = 5
    draw_border: bool = True
    colormap: str = 'gist_rainbow'


@dataclass
class Config:
    model_params: ModelParams
    dataset_params: DatasetParams = field(default_factory=DatasetParams)
    train_params: TrainParams = field(default_factory=TrainParams)
    reconstruction_params: ReconstructionParams = field(default_factory=ReconstructionParams)
    animate_params: AnimateParams = field(default_factory=AnimateParams)
    visualizer_params: VisualizerParams = field(default_factory=VisualizerParams)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = '<config>', mode: Optional[str] = None) -> 'Config':
        """Checks across keys that the schema alone cannot express. `mode`: None (inference: only
        what building and running the networks needs), 'train' (also the training values and the
        data), 'reconstruction' / 'animate' (also the data)."""
        check_frame_shape(self, source)
        check_frame_size(self.model_params, self.dataset_params.frame_shape, source)
        if mode is not None and not self.dataset_params.root_dir:
            raise ConfigError('%s: dataset_params.root_dir is missing: set it to the folder of videos' % source)
        if mode == 'train':
            check_training(self, source)
        return self


def _fail(source: str, key: str, value, expected: str):
    raise ConfigError('%s: %s: %r %s' % (source, key, value, expected))


def check_frame_shape(config: Config, source: str) -> None:
    shape = config.dataset_params.frame_shape
    if len(shape) not in (2, 3) or any(int(v) <= 0 for v in shape) or (len(shape) == 3 and shape[2] != 3):
        _fail(source, 'dataset_params.frame_shape', shape, 'is not [height, width, 3] with positive sizes')


def check_training(config: Config, source: str) -> None:
    """Training values in range, and the perceptual loss's pyramid fits VGG19."""
    tp = config.train_params
    for key in ('num_epochs', 'num_repeats', 'batch_size', 'checkpoint_freq'):
        if getattr(tp, key) < 1:
            _fail(source, 'train_params.' + key, getattr(tp, key), 'must be at least 1')
    for key in ('lr_generator', 'lr_discriminator', 'lr_kp_detector'):
        if not 0 <= getattr(tp, key) < 1:
            _fail(source, 'train_params.' + key, getattr(tp, key), 'is not a learning rate in [0, 1)')
    if any(m < 0 for m in tp.epoch_milestones):
        _fail(source, 'train_params.epoch_milestones', tp.epoch_milestones, 'must not be negative')
    if not tp.scales or any(not 0 < s <= 1 for s in tp.scales):
        _fail(source, 'train_params.scales', tp.scales, 'must be pyramid scales in (0, 1]')
    h, w = config.dataset_params.frame_shape[:2]
    if sum(tp.loss_weights.perceptual) != 0:
        for s in tp.scales:
            if min(h, w) * s < 16:
                raise ConfigError('%s: train_params.scales: scale %s of a %dx%d frame is %g px, smaller than '
                                  'the 16 px the five VGG19 slices of the perceptual loss need'
                                  % (source, s, h, w, min(h, w) * s))
    n_disc = config.model_params.discriminator_params.num_blocks
    if len(tp.loss_weights.feature_matching) < n_disc and tp.loss_weights.generator_gan != 0:
        raise ConfigError('%s: train_params.loss_weights.feature_matching needs %d weights (one per '
                          'discriminator block)' % (source, n_disc))
    if len(tp.loss_weights.perceptual) > 5:
        raise ConfigError('%s: train_params.loss_weights.perceptual has %d weights; VGG19 gives 5 feature maps'
                          % (source, len(tp.loss_weights.perceptual)))


def _network_sides(model: 'ModelParams'):
    """(config key, what, scale, blocks, shrink) per network: its input is the frame side x scale
    (nearest downsampling: floored), whose hourglass / encoder halves it `blocks` times and must
    double back exactly; `shrink` pixels are lost after it (the keypoint heads' unpadded 7x7 convs)."""
    kp = model.kp_detector_params
    yield ('model_params.kp_detector_params', 'keypoint detector', kp.scale_factor, kp.num_blocks,
           6 - 2 * kp.pad)
    dm = model.generator_params.dense_motion_params
    if dm is not None:
        yield ('model_params.generator_params.dense_motion_params', 'dense motion network', dm.scale_factor,
               dm.num_blocks, 0)
    yield ('model_params.generator_params', 'generator', 1, model.generator_params.num_down_blocks, 0)


def _side_works(side: int, scale: float, blocks: int, shrink: int) -> bool:
    inner = int(side * scale) if scale != 1 else side
    return inner >= 1 and inner % (2 ** blocks) == 0 and inner - shrink >= 1


def check_frame_size(model: 'ModelParams', frame_shape, source: str) -> None:
    """Every network can process frames of frame_shape; else name the key and the smallest side
    that works for that network and all the others."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    nets = list(_network_sides(model))
    for key, what, scale, blocks, shrink in nets:
        for side in (h, w):
            if _side_works(side, scale, blocks, shrink):
                continue
            smallest = next((s for s in range(1, 1 << 14)
                             if all(_side_works(s, *n[2:]) for n in nets)), None)
            raise ConfigError(
                '%s: %s: the %s cannot process %dx%d frames (dataset_params.frame_shape): a side of %d x scale '
                '%g = %d px must be divisible by 2^%d%s; the smallest side that works for every network of '
                'this config is %s' % (source, key, what, h, w, side, scale, int(side * scale), blocks,
                                       ' and leave %d px after the 7x7 heads' % shrink if shrink else '',
                                       '%d px' % smallest if smallest else 'none below 16384'))


_NUMBER = (int, float)


def _check_scalar(value, typ, key, source):
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return value
        typ = [a for a in typing.get_args(typ) if a is not type(None)][0]
        origin = typing.get_origin(typ)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError('%s: %s: expected a list, got %r' % (source, key, value))
        (item,) = typing.get_args(typ) or (Any,)
        return [_check_scalar(v, item, '%s[%d]' % (key, i), source) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError('%s: %s: expected true or false, got %r' % (source, key, value))
    elif typ in (int, float):
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            raise ConfigError('%s: %s: expected a number, got %r' % (source, key, value))
        if typ is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError('%s: %s: expected an integer, got %r' % (source, key, value))
            value = int(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError('%s: %s: expected a string, got %r' % (source, key, value))
    return value


def _dataclass_of(typ):
    if dataclasses.is_dataclass(typ):
        return typ
    if typing.get_origin(typ) is typing.Union:
        for a in typing.get_args(typ):
            if dataclasses.is_dataclass(a):
                return a
    return None


def _build(cls, data, prefix: str, source: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError('%s: %s: expected a mapping of keys, got %r' % (source, prefix or '<top level>', data))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            full = prefix + str(key)
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = " (did you mean '%s%s'?)" % (prefix, near[0]) if near else ' (valid keys: %s)' % ', '.join(names)
            raise ConfigError("%s: unknown key '%s'%s" % (source, full, hint))
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError("%s: missing key '%s'" % (source, key))
            continue
        value = data[f.name]
        sub = _dataclass_of(hints[f.name])
        if sub is not None and not (value is None and typing.get_origin(hints[f.name]) is typing.Union):
            kwargs[f.name] = _build(sub, value, key + '.', source)
        else:
            kwargs[f.name] = _check_scalar(value, hints[f.name], key, source)
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any], source: str = '<config>', mode: Optional[str] = None) -> Config:
    """Build and check a Config from a nested dict (e.g. one stored in a checkpoint); `mode` as
    in Config.validate."""
    return _build(Config, data, '', source).validate(source, mode)


def load_config(path: str, mode: Optional[str] = None) -> Config:
    """Read a YAML config; every error names the file and the key. `mode`: None for inference,
    'train', 'reconstruction' or 'animate' (Config.validate)."""
    if not os.path.isfile(path):
        raise ConfigError('--config: file not found: %s' % path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError('%s: not valid YAML: %s' % (path, str(exc).splitlines()[0])) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError('%s: cannot read the config (%s)' % (path, exc)) from None
    return config_from_dict(data, path, mode)


def config_name(path: str) -> str:
    """'config/vox-256.yaml' -> 'vox-256'."""
    return os.path.splitext(os.path.basename(path))[0]
