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
from jaxfl.models.zoo import (
    COMPUTE_DTYPES,
    IMAGE_MODELS,
    MODEL_NAMES_HELP,
    MODELS,
    Model,
    get_model,
    is_model_name,
)

__all__ = [
    "COMPUTE_DTYPES",
    "CONV_LOWERINGS",
    "IMAGE_MODELS",
    "LOWERING_CHOICES",
    "MODEL_NAMES_HELP",
    "MODELS",
    "Conv",
    "conv",
    "Model",
    "default_conv_lowering",
    "get_model",
    "im2col",
    "is_model_name",
    "max_pool_2x2",
]
