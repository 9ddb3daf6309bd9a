"""Flax models with a pure ``apply(params, x)`` and client-batching-friendly conv lowerings."""

from jaxfl.models.layers import (
    CONV_LOWERINGS,
    LOWERING_CHOICES,
    Conv,
    conv,
    default_conv_lowering,
    im2col,
    max_pool_2x2,
)
from jaxfl.models.zoo import COMPUTE_DTYPES, IMAGE_MODELS, MODELS, Model, get_model

__all__ = [
    "COMPUTE_DTYPES",
    "CONV_LOWERINGS",
    "IMAGE_MODELS",
    "LOWERING_CHOICES",
    "MODELS",
    "Conv",
    "conv",
    "Model",
    "default_conv_lowering",
    "get_model",
    "im2col",
    "max_pool_2x2",
]
