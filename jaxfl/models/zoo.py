"""The model zoo: flax modules behind a pure ``Model(init, apply)`` pair.

``apply(params, x)`` maps a batch (B, *feature_shape) to logits (B, L) and is pure, so it can be
vmapped over a leading client axis of ``params``. Normalisation layers use GroupNorm (no batch
statistics to carry per client), the usual choice for non-IID FL (Hsieh et al. 2020).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxfl.core.names import COMPUTE_DTYPES as COMPUTE_DTYPES  # defined without JAX, for --help
from jaxfl.core.names import IMAGE_MODELS as IMAGE_MODELS
from jaxfl.core.names import MODEL_NAMES_HELP as MODEL_NAMES_HELP
from jaxfl.core.names import MODELS as MODELS
from jaxfl.core.names import is_model_name as is_model_name
from jaxfl.core.names import is_sequence_model as is_sequence_model
from jaxfl.core.names import lstm_hidden as lstm_hidden
from jaxfl.core.names import mlp_hidden as mlp_hidden
from jaxfl.models import model_tuning
from jaxfl.models.attention import TransformerLM
from jaxfl.models.layers import Conv, default_conv_lowering, max_pool_2x2
from jaxfl.models.recurrent import NWPLSTM, CharLSTM


class LogReg(nn.Module):
    num_classes: int
    features_only: bool = False  # return the output layer's input (the representation)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """An MLP with ReLU; the default hidden (200, 200) is FedAvg's "2NN" (784-200-200-10)."""

    num_classes: int
    hidden: tuple[int, ...] = (200, 200)
    features_only: bool = False

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


Lowering = str | tuple[str, ...]  # one for every conv layer, or one per conv layer in order


def _at(lowering: Lowering, i: int) -> str:
    return lowering if isinstance(lowering, str) else lowering[i]


def _from(lowering: Lowering, i: int, n: int) -> Lowering:
    return lowering if isinstance(lowering, str) else lowering[i : i + n]


class FedAvgCNN(nn.Module):
    """FedAvg's MNIST CNN: conv5x5@32, pool, conv5x5@64, pool, dense 512, dense L (1,663,370)."""

    num_classes: int
    lowering: Lowering = "auto"
    features_only: bool = False

    @nn.compact
    def __call__(self, x):
        for i, features in enumerate((32, 64)):
            conv = Conv(features, (5, 5), padding="SAME", lowering=_at(self.lowering, i))
            x = nn.relu(max_pool_2x2(conv(x)))
        x = nn.relu(nn.Dense(512)(x.reshape(x.shape[0], -1)))
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


class EmnistCNN(nn.Module):
    """The EMNIST CNN of Reddi et al. ("Adaptive Federated Optimization", ICLR 2021), TFF's and
    FedJAX's EMNIST baseline: conv3x3@32, conv3x3@64 (both VALID), max-pool 2x2, dense 128,
    dense L (1,206,590 parameters at L = 62). Their dropout (0.25 after the pool, 0.5 after the
    dense layer) is left out: jaxfl's models are deterministic functions of (params, x), and
    local training draws no dropout keys."""

    num_classes: int
    lowering: Lowering = "auto"
    features_only: bool = False

    @nn.compact
    def __call__(self, x):
        for i, features in enumerate((32, 64)):
            conv = Conv(features, (3, 3), padding="VALID", lowering=_at(self.lowering, i))
            x = nn.relu(conv(x))
        x = max_pool_2x2(x).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """The DS-FL lab's MNIST CNN: conv 6@5x5, pool, conv 16@5x5, pool, dense 120, 84, L."""

    num_classes: int
    lowering: Lowering = "auto"
    features_only: bool = False

    @nn.compact
    def __call__(self, x):
        for i, features in enumerate((6, 16)):
            conv = Conv(features, (5, 5), padding="VALID", lowering=_at(self.lowering, i))
            x = nn.relu(max_pool_2x2(conv(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


class _Block(nn.Module):
    features: int
    stride: int
    lowering: Lowering  # the block's convolutions: two, and the shortcut's when it has one

    @nn.compact
    def __call__(self, x):
        groups = min(2, self.features)
        low = lambda i: _at(self.lowering, i)
        y = Conv(self.features, (3, 3), self.stride, lowering=low(0), use_bias=False)(x)
        y = nn.relu(nn.GroupNorm(num_groups=groups)(y))
        y = Conv(self.features, (3, 3), 1, lowering=low(1), use_bias=False)(y)
        y = nn.GroupNorm(num_groups=groups)(y)
        if _has_shortcut(x.shape[-1], self.features, self.stride):
            x = Conv(self.features, (1, 1), self.stride, lowering=low(2), use_bias=False)(x)
            x = nn.GroupNorm(num_groups=groups)(x)
        return nn.relu(x + y)


def _has_shortcut(cin: int, features: int, stride: int) -> bool:
    return cin != features or stride != 1


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) (He et al. 2016) with GroupNorm: n=1 is ResNet-8, n=3 ResNet-20."""

    num_classes: int
    blocks_per_stage: int = 1
    lowering: Lowering = "auto"
    features_only: bool = False

    @nn.compact
    def __call__(self, x):
        x = Conv(16, (3, 3), lowering=_at(self.lowering, 0), use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=2)(x))
        layer = 1
        for stage, features in enumerate((16, 32, 64)):
            for b in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                n = 3 if _has_shortcut(x.shape[-1], features, stride) else 2
                x = _Block(features, stride, _from(self.lowering, layer, n))(x)
                layer += n
        x = x.mean(axis=(1, 2))
        if self.features_only:
            return x
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class Model:
    """A pure model: ``init(key) -> params`` and ``apply(params, x) -> logits``.

    Attributes:
      name: zoo name.
      init: PRNG key -> parameter pytree for one client.
      apply: (params, x (B, *feature_shape)) -> logits (B, L).
      feature_shape: input shape of one example.
      num_classes: L.
      num_params: parameter count of one client's model.
      compute_dtype: the dtype ``apply`` computes in (parameters stay float32; see
        :func:`get_model`).
      represent: optional (params, x (B, *feature_shape)) -> (B, D), the representation the
        output layer reads (the zoo's models have one; MOON needs it).
    """

    name: str
    init: Callable
    apply: Callable
    feature_shape: tuple[int, ...]
    num_classes: int
    num_params: int
    compute_dtype: str = "float32"
    represent: Callable | None = None

    @classmethod
    def from_linen(
        cls, module: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str = ""
    ) -> Model:
        """Your own ``flax.linen`` module as a Model: ``module(x (B, *input_shape))`` must return
        logits (B, ``num_classes``); it must not keep mutable collections (batch statistics:
        use GroupNorm or LayerNorm, the usual choice for non-IID clients)."""
        input_shape = tuple(input_shape)
        dummy = jnp.zeros((1, *input_shape), jnp.float32)

        def init(key):
            return module.init(key, dummy)["params"]

        def apply(params, x):
            return module.apply({"params": params}, x)

        return cls._checked(name or type(module).__name__, init, apply, input_shape, num_classes)

    @classmethod
    def from_nnx(
        cls, make_module: Callable, input_shape: tuple[int, ...], num_classes: int, name: str = ""
    ) -> Model:
        """Your own ``flax.nnx`` module as a Model, from its constructor: ``make_module(rngs)``
        (e.g. ``lambda rngs: MyNet(rngs=rngs)``) builds it, so every client's ``init(key)`` runs
        the module's own initializers with its own key; its ``nnx.Param`` state is the pure
        parameter pytree. The module must hold no other state (BatchNorm statistics: use
        GroupNorm or LayerNorm)."""
        from flax import nnx

        graphdef, _, rest = nnx.split(make_module(nnx.Rngs(0)), nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError(
                "Model.from_nnx: the module holds state besides parameters (e.g. BatchNorm "
                "statistics); use GroupNorm or LayerNorm"
            )
        input_shape = tuple(input_shape)

        def init(key):
            return nnx.split(make_module(nnx.Rngs(key)), nnx.Param, ...)[1]

        def apply(params, x):
            return nnx.merge(graphdef, params, rest)(x)

        return cls._checked(name or "nnx", init, apply, input_shape, num_classes)

    @classmethod
    def _checked(cls, name, init, apply, input_shape, num_classes) -> Model:
        shapes = jax.eval_shape(init, jax.random.key(0))
        out = jax.eval_shape(apply, shapes, jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
        if out.shape != (2, num_classes):
            raise ValueError(
                f"{name}: logits of shape {out.shape} for a batch of 2 inputs {input_shape}; "
                f"expected (2, {num_classes})"
            )
        num_params = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
        return cls(name, init, apply, input_shape, num_classes, num_params)


def as_model(model) -> Model:
    """``model`` if it is a Model (or model groups); a clear error for a raw flax module."""
    if isinstance(model, nn.Module) or type(model).__module__.startswith("flax.nnx"):
        raise TypeError(
            f"a {type(model).__name__} flax module was passed where a jaxfl Model is expected; "
            "wrap it: Model.from_linen(module, input_shape, num_classes) (or Model.from_nnx)"
        )
    return model


def get_model(
    name: str,
    feature_shape: tuple[int, ...],
    num_classes: int,
    conv_lowering: str | tuple[str, ...] | None = None,
    compute_dtype: str = "float32",
) -> Model:
    """Build zoo model ``name`` for inputs of ``feature_shape`` and ``num_classes`` labels.

    ``compute_dtype="bfloat16"``: mixed precision. Parameters, optimizer states and updates stay
    float32; ``apply`` casts the parameters and inputs to bfloat16 for the forward pass (so the
    backward pass runs in bfloat16 too, and gradients arrive in float32 through the cast) and
    returns float32 logits, so losses, softmaxes and aggregation stay float32.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown --compute-dtype {compute_dtype!r}; allowed: {', '.join(COMPUTE_DTYPES)}"
        )
    if not is_model_name(name):
        raise ValueError(f"unknown --model {name!r}; allowed: {MODEL_NAMES_HELP}")
    if name in IMAGE_MODELS and len(feature_shape) != 3:
        raise ValueError(
            f"--model {name} needs image inputs (H, W, C) but the data has shape {feature_shape}; "
            "use --model mlp or logreg for vector data"
        )
    if is_sequence_model(name) and len(feature_shape) != 1:
        raise ValueError(
            f"--model {name} reads token sequences (T,) but the data has inputs {feature_shape}; "
            "it is for the language tasks (--dataset shakespeare, shakespeare_synthetic)"
        )
    lowering = conv_lowering or default_conv_lowering()
    build_module = {
        "logreg": lambda lowering, f: LogReg(num_classes, f),
        "mlp": lambda lowering, f: MLP(num_classes, mlp_hidden(name), f),
        "cnn": lambda lowering, f: FedAvgCNN(num_classes, lowering, f),
        "lenet5": lambda lowering, f: LeNet5(num_classes, lowering, f),
        "emnist-cnn": lambda lowering, f: EmnistCNN(num_classes, lowering, f),
        "resnet8": lambda lowering, f: ResNet(num_classes, 1, lowering, f),
        "resnet20": lambda lowering, f: ResNet(num_classes, 3, lowering, f),
        "charlstm": lambda lowering, f: CharLSTM(
            num_classes, lstm_hidden(name) or 256, features_only=f
        ),
        "nwp-lstm": lambda lowering, f: NWPLSTM(num_classes, features_only=f),
        "transformer-S": lambda lowering, f: TransformerLM(
            num_classes, feature_shape[0], features_only=f
        ),
    }["mlp" if mlp_hidden(name) else "charlstm" if lstm_hidden(name) else name]
    build = lambda lowering: build_module(lowering, False)
    module = build("xla" if lowering == "auto" else lowering)
    dummy = jnp.zeros((1, *feature_shape), jnp.float32)

    def init(key: jax.Array):
        return module.init(key, dummy)["params"]

    def apply_with(lowering: Lowering, params, x: jax.Array, features_only=False) -> jax.Array:
        module = build_module(lowering, features_only)
        if compute_dtype == "float32":
            return module.apply({"params": params}, x)
        dtype = jnp.dtype(compute_dtype)
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        return module.apply({"params": params}, x.astype(dtype)).astype(jnp.float32)

    def represent_with(lowering: Lowering, params, x: jax.Array) -> jax.Array:
        return apply_with(lowering, params, x, features_only=True)

    def tuned(function, kind: str):
        return model_tuning.tuned_apply(
            f"{name}|{tuple(feature_shape)}|L{num_classes}|{compute_dtype}{kind}",
            init,
            function,
            model_tuning.conv_layers(lambda low, x: build(low).init(jax.random.key(0), x), dummy),
            tuple(feature_shape),
            num_classes,
        )

    if lowering == "auto" and name in IMAGE_MODELS:
        apply, represent = tuned(apply_with, ""), tuned(represent_with, "|features")
    else:
        apply = functools.partial(apply_with, lowering)
        represent = functools.partial(represent_with, lowering)

    shapes = jax.eval_shape(init, jax.random.key(0))
    num_params = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    return Model(
        name, init, apply, tuple(feature_shape), num_classes, num_params, compute_dtype, represent
    )
