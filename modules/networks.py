"""The networks of a config: the factory that turns the typed config (core.config) into the
original's modules. The modules keep the original's keyword signatures (so published configs and
checkpoints load unchanged); this is where a config section becomes those keywords, once
(core.config.keywords).

    generator, kp_detector, discriminator = build_networks(config.model_params)
    generator_full, discriminator_full = build_full_models(kp_detector, generator, discriminator,
                                                           config.train_params)
"""
from typing import Union

from core.config import ModelParams, TrainParams, keywords, model_params_from_dict
from modules.discriminator import MultiScaleDiscriminator
from modules.generator import OcclusionAwareGenerator
from modules.keypoint_detector import KPDetector
from modules.model import DiscriminatorFullModel, GeneratorFullModel


def build_networks(model_params: Union[ModelParams, dict], discriminator: bool = True):
    """(generator, kp_detector, discriminator) from a config's model_params (typed, or the
    original's dict layout, checked like a config file); `discriminator=False` skips building it
    (inference) and returns None in its place. Built on the current default device (torch.device
    context), so a `with torch.device('meta')` block builds them without memory."""
    if isinstance(model_params, dict):
        model_params = model_params_from_dict(model_params)
    common = keywords(model_params.common_params)
    generator = OcclusionAwareGenerator(**keywords(model_params.generator_params), **common)
    kp_detector = KPDetector(**keywords(model_params.kp_detector_params), **common)
    disc = (MultiScaleDiscriminator(**keywords(model_params.discriminator_params), **common)
            if discriminator else None)
    return generator, kp_detector, disc


def build_full_models(kp_detector, generator, discriminator, train_params: TrainParams,
                      batch_keypoints: bool = False):
    """(GeneratorFullModel, DiscriminatorFullModel) over the networks with a config's train_params
    (see GeneratorFullModel for batch_keypoints)."""
    params = keywords(train_params)
    return (GeneratorFullModel(kp_detector, generator, discriminator, params, batch_keypoints=batch_keypoints),
            DiscriminatorFullModel(kp_detector, generator, discriminator, params))
