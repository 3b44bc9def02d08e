"""Typed configuration: the YAML layout of the original configs, as dataclasses.

`load_config(path)` reads a YAML file with `yaml.safe_load`, checks every key against the schema
below (an unknown or misspelt key fails with the key, the file and the nearest valid key), fills
absent optional keys with the original's defaults, and returns a `Config`, which is passed typed all
the way down: `keywords(section)` turns a section into the keyword arguments of the original's
constructors where they are called (modules/networks.py), and `Config.to_dict()` gives the plain
nested dict that checkpoints, config.yaml and export manifests store.
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


# ------------------------------------------------------------------------------ value ranges
# A number's allowed range, in the field's metadata: checked for the value (each item of a list)
# as the config is read, before any network is built; the message names file, key, value, range.
def allowed(low=None, high=None, low_open: bool = False, high_open: bool = False) -> dict:
    return {'range': (low, high, low_open, high_open)}


AT_LEAST_0 = allowed(0)
AT_LEAST_1 = allowed(1)
POSITIVE = allowed(0, low_open=True)
FRACTION = allowed(0, 1, low_open=True)  # (0, 1]: scale factors, pyramid scales
RATE = allowed(0, 1, high_open=True)  # [0, 1): learning rates (0 freezes a network: taichi-adv-256 fine-tunes with lr_kp_detector 0)


def describe_range(low, high, low_open, high_open) -> str:
    if high is None:
        return 'must be %s %g' % ('>' if low_open else 'at least', low)
    return 'must be in %s%g, %g%s' % ('(' if low_open else '[', low, high, ')' if high_open else ']')


def in_range(value, low, high, low_open, high_open) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


# ---------------------------------------------------------------------------------- dataset
@dataclass
class FlipParams:
    horizontal_flip: bool = False
    time_flip: bool = False


@dataclass
class JitterParams:
    brightness: float = field(default=0.0, metadata=AT_LEAST_0)
    contrast: float = field(default=0.0, metadata=AT_LEAST_0)
    saturation: float = field(default=0.0, metadata=AT_LEAST_0)
    hue: float = field(default=0.0, metadata=allowed(0, 0.5))


@dataclass
class CropParams:
    size: List[int] = field(default_factory=lambda: [256, 256], metadata=AT_LEAST_1)


@dataclass
class ResizeParams:
    ratio: List[float] = field(default_factory=lambda: [0.9, 1.1], metadata=POSITIVE)


@dataclass
class RotationParams:
    degrees: float = field(default=0.0, metadata=allowed(0, 180))


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
    frame_shape: List[int] = field(default_factory=lambda: [256, 256, 3], metadata=AT_LEAST_1)
    id_sampling: bool = False
    pairs_list: Optional[str] = None
    augmentation_params: Optional[AugmentationParams] = None
    # this project's addition: per-process budget (MB) for decoded training frames kept in memory
    cache_mb: float = field(default=256, metadata=AT_LEAST_0)


# ------------------------------------------------------------------------------------ model
@dataclass
class CommonParams:
    num_kp: int = field(metadata=AT_LEAST_1)
    num_channels: int = field(default=3, metadata=AT_LEAST_1)
    estimate_jacobian: bool = False


@dataclass
class KPDetectorParams:
    temperature: float = field(metadata=POSITIVE)
    block_expansion: int = field(metadata=AT_LEAST_1)
    max_features: int = field(metadata=AT_LEAST_1)
    num_blocks: int = field(metadata=AT_LEAST_1)
    scale_factor: float = field(default=1, metadata=FRACTION)
    single_jacobian_map: bool = False
    pad: int = field(default=0, metadata=AT_LEAST_0)


@dataclass
class DenseMotionParams:
    block_expansion: int = field(metadata=AT_LEAST_1)
    max_features: int = field(metadata=AT_LEAST_1)
    num_blocks: int = field(metadata=AT_LEAST_1)
    scale_factor: float = field(default=1, metadata=FRACTION)
    kp_variance: float = field(default=0.01, metadata=POSITIVE)


@dataclass
class GeneratorParams:
    block_expansion: int = field(metadata=AT_LEAST_1)
    max_features: int = field(metadata=AT_LEAST_1)
    num_down_blocks: int = field(metadata=AT_LEAST_1)
    num_bottleneck_blocks: int = field(metadata=AT_LEAST_0)
    estimate_occlusion_map: bool = False
    dense_motion_params: Optional[DenseMotionParams] = None


@dataclass
class DiscriminatorParams:
    scales: List[float] = field(default_factory=lambda: [1], metadata=FRACTION)
    block_expansion: int = field(default=32, metadata=AT_LEAST_1)
    max_features: int = field(default=512, metadata=AT_LEAST_1)
    num_blocks: int = field(default=4, metadata=AT_LEAST_1)
    sn: bool = False
    use_kp: bool = False
    kp_variance: float = field(default=0.01, metadata=POSITIVE)


@dataclass
class ModelParams:
    common_params: CommonParams
    kp_detector_params: KPDetectorParams
    generator_params: GeneratorParams
    discriminator_params: DiscriminatorParams = field(default_factory=DiscriminatorParams)


# ------------------------------------------------------------------------------------ train
@dataclass
class TransformParams:
    sigma_affine: float = field(default=0.05, metadata=AT_LEAST_0)
    sigma_tps: float = field(default=0.005, metadata=AT_LEAST_0)
    points_tps: int = field(default=5, metadata=AT_LEAST_1)


@dataclass
class LossWeights:
    generator_gan: float = field(default=0, metadata=AT_LEAST_0)
    discriminator_gan: float = field(default=1, metadata=AT_LEAST_0)
    feature_matching: List[float] = field(default_factory=lambda: [10, 10, 10, 10], metadata=AT_LEAST_0)
    perceptual: List[float] = field(default_factory=lambda: [10, 10, 10, 10, 10], metadata=AT_LEAST_0)
    equivariance_value: float = field(default=10, metadata=AT_LEAST_0)
    equivariance_jacobian: float = field(default=10, metadata=AT_LEAST_0)


@dataclass
class TrainParams:
    num_epochs: int = field(default=100, metadata=AT_LEAST_1)
    num_repeats: int = field(default=1, metadata=AT_LEAST_1)
    epoch_milestones: List[int] = field(default_factory=list, metadata=AT_LEAST_0)
    lr_generator: float = field(default=2e-4, metadata=RATE)
    lr_discriminator: float = field(default=2e-4, metadata=RATE)
    lr_kp_detector: float = field(default=2e-4, metadata=RATE)
    batch_size: int = field(default=1, metadata=AT_LEAST_1)
    scales: List[float] = field(default_factory=lambda: [1, 0.5, 0.25, 0.125], metadata=FRACTION)
    checkpoint_freq: int = field(default=50, metadata=AT_LEAST_1)
    transform_params: TransformParams = field(default_factory=TransformParams)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # this project's additions (absent from the published configs)
    vgg_weights: str = 'imagenet'  # 'imagenet', 'seeded' / 'seeded:<seed>' (fixed random), or a .pth path
    num_workers: Optional[int] = field(default=None, metadata=AT_LEAST_0)  # DataLoader workers; None: chosen from the machine


# -------------------------------------------------------------------------------- inference
@dataclass
class ReconstructionParams:
    num_videos: Optional[int] = field(default=1000, metadata=AT_LEAST_1)
    format: str = '.mp4'


@dataclass
class NormalizationParams:
    adapt_movement_scale: bool = False
    use_relative_movement: bool = True
    use_relative_jacobian: bool = True


@dataclass
class AnimateParams:
    num_pairs: int = field(default=50, metadata=AT_LEAST_1)
    format: str = '.mp4'
    normalization_params: NormalizationParams = field(default_factory=NormalizationParams)


@dataclass
class VisualizerParams:
    kp_size: int = field(default=5, metadata=AT_LEAST_1)
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
        """The plain nested dict of the YAML layout: what checkpoints, config.yaml and export
        manifests store."""
        return keywords(self)

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
    """Training values that the per-key ranges cannot express: the pyramid fits VGG19, and the
    loss weights fit the networks."""
    tp = config.train_params
    if not tp.scales:
        _fail(source, 'train_params.scales', tp.scales, 'must list at least one pyramid scale')
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
            kwargs[f.name] = _check_range(_check_scalar(value, hints[f.name], key, source), f, key, source)
    return cls(**kwargs)


def _check_range(value, f: dataclasses.Field, key: str, source: str):
    """The value (each item of a list) within the field's allowed range, if it has one."""
    bounds = f.metadata.get('range')
    if bounds is None or value is None:
        return value
    for item in (value if isinstance(value, list) else [value]):
        if not in_range(item, *bounds):
            raise ConfigError('%s: %s: %r %s' % (source, key, value, describe_range(*bounds)))
    return value


def keywords(section) -> Dict[str, Any]:
    """A config section as the keyword arguments of the original's constructors (nested sections
    as dicts): the one conversion from the typed config, made where keywords are splatted into a
    module, dataset or visualiser (modules/networks.py, run.py) or a config is written to a file."""
    return dataclasses.asdict(section)


def model_params_from_dict(data: Dict[str, Any], source: str = '<model_params>') -> ModelParams:
    """A checked ModelParams from the `model_params` dict of the original's layout."""
    return _build(ModelParams, data, 'model_params.', source)


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
