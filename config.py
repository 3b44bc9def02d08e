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

    def validate(self, source: str = '<config>') -> 'Config':
        """Checks across keys that the schema alone cannot express."""
        h, w = self.dataset_params.frame_shape[:2]
        if sum(self.train_params.loss_weights.perceptual) != 0:
            for s in self.train_params.scales:
                if min(h, w) * s < 16:
                    raise ConfigError('%s: train_params.scales: scale %s of a %dx%d frame is %g px, smaller than '
                                      'the 16 px the five VGG19 slices of the perceptual loss need'
                                      % (source, s, h, w, min(h, w) * s))
        n_disc = self.model_params.discriminator_params.num_blocks
        if len(self.train_params.loss_weights.feature_matching) < n_disc and \
                self.train_params.loss_weights.generator_gan != 0:
            raise ConfigError('%s: train_params.loss_weights.feature_matching needs %d weights (one per '
                              'discriminator block)' % (source, n_disc))
        if len(self.train_params.loss_weights.perceptual) > 5:
            raise ConfigError('%s: train_params.loss_weights.perceptual has %d weights; VGG19 gives 5 feature maps'
                              % (source, len(self.train_params.loss_weights.perceptual)))
        return self


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


def config_from_dict(data: Dict[str, Any], source: str = '<config>') -> Config:
    """Build and check a Config from a nested dict (e.g. one stored in a checkpoint)."""
    return _build(Config, data, '', source).validate(source)


def load_config(path: str) -> Config:
    """Read a YAML config; every error names the file and the key."""
    if not os.path.isfile(path):
        raise ConfigError('--config: file not found: %s' % path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError('%s: not valid YAML: %s' % (path, str(exc).splitlines()[0])) from None
    return config_from_dict(data, path)


def config_name(path: str) -> str:
    """'config/vox-256.yaml' -> 'vox-256'."""
    return os.path.splitext(os.path.basename(path))[0]
