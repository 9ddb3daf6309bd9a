"""Models: parameter counts, conv lowerings agree (values and gradients), vmap over clients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxfl.models import CONV_LOWERINGS, Model, get_model, im2col


@pytest.mark.parametrize(
    "name,count", [("cnn", 1_663_370), ("lenet5", 44_426), ("mlp", 199_210), ("logreg", 7_850)]
)
def test_parameter_counts(name, count):
    assert get_model(name, (28, 28, 1), 10).num_params == count


def test_emnist_cnn_has_reddi_et_al_and_fedjax_parameter_count():
    # conv 3x3@32 (320) + conv 3x3@64 (18,496) + dense 9216 -> 128 (1,179,776) + 128 -> 62 (7,998)
    assert get_model("emnist-cnn", (28, 28, 1), 62).num_params == 1_206_590


def test_conv_lowerings_agree_in_value_and_gradient_in_a_whole_model():
    """A whole model (LeNet-5) under each lowering: same logits and gradients as the native
    convolution. Every zoo layer shape, stride and padding is checked layer by layer in
    tests/test_conv_tuning.py."""
    shape = (28, 28, 1)
    models = {lo: get_model("lenet5", shape, 10, lo) for lo in CONV_LOWERINGS}
    params = models["xla"].init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    y = jnp.array([1, 2, 3])

    def loss(p, model):
        logits = model.apply(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), y])

    @jax.jit
    def outputs(p):
        return {lo: (m.apply(p, x), jax.grad(loss)(p, m)) for lo, m in models.items()}

    out = outputs(params)
    ref_out, ref_grad = out["xla"]
    for lo in ("rows", "im2col", "patches"):
        # tol: conv lowerings against XLA's: the same k * k * c products summed in another order
        # (1e-4 of the output's values); the kernel gradient also sums over the batch and
        # positions (1e-3); 1e-5 absolute for values near 0.
        np.testing.assert_allclose(out[lo][0], ref_out, rtol=1e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(out[lo][1]), jax.tree.leaves(ref_grad), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)  # tol: as above


def test_im2col_matches_definition_with_stride_and_same_padding():
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    cols = im2col(x, (3, 3), 2, "SAME")
    assert cols.shape == (1, 3, 3, 18)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(cols[0, 1, 2], padded[0, 2:5, 4:7, :].reshape(-1))


def test_vmapped_client_models_equal_per_client_loop():
    model = get_model("lenet5", (28, 28, 1), 10)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 4))
    x = jax.random.normal(jax.random.key(1), (4, 5, 28, 28, 1))
    batched = jax.jit(jax.vmap(model.apply))(params, x)
    apply_one = jax.jit(model.apply)
    for k in range(4):
        one = jax.tree.map(lambda p, k=k: p[k], params)
        # tol: a vmapped apply against one client's (another blocking of the same matmuls): 1e-5
        # relative (as SUMS) and 1e-5 absolute for logits near 0.
        np.testing.assert_allclose(batched[k], apply_one(one, x[k]), rtol=1e-5, atol=1e-5)


def test_model_errors_name_the_flag():
    with pytest.raises(ValueError, match="--model"):
        get_model("vgg", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="--model lenet5 needs image inputs"):
        get_model("lenet5", (60,), 10)


def test_rows_lowering_with_stride_and_same_padding_matches_xla():
    from jaxfl.models.layers import conv_rows

    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    for stride in (1, 2):
        for padding in ("SAME", "VALID"):
            ref = jax.lax.conv_general_dilated(
                x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            # tol: conv_rows against XLA's convolution: reordered sums of up to 3 * 3 * 16
            # products of order-1 values, 1e-4 relative and absolute.
            np.testing.assert_allclose(
                conv_rows(x, kernel, stride, padding), ref, rtol=1e-4, atol=1e-4
            )


class _TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(4)(x)


def test_your_own_linen_and_nnx_modules_as_models(tiny_federation):
    from flax import nnx

    from jaxfl.algorithms import fedavg

    linen_model = Model.from_linen(_TinyLinen(), (28, 28, 1), 4)
    assert linen_model.num_params == 784 * 16 + 16 + 16 * 4 + 4

    class TinyNnx(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(784, 16, rngs=rngs)
            self.out = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))

    nnx_model = Model.from_nnx(lambda rngs: TinyNnx(rngs), (28, 28, 1), 4)
    assert nnx_model.num_params == linen_model.num_params
    a, b = (nnx_model.init(jax.random.key(k)) for k in (0, 1))
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    assert not all(np.allclose(x, y) for x, y in leaves)  # each client's own key
    for model in (linen_model, nnx_model):
        algo = fedavg.make(fedavg.FedAvgConfig(batch_size=8), tiny_federation, model)
        state, metrics = algo.round(algo.init(jax.random.key(0)), jax.random.key(1))
        assert np.isfinite(float(metrics["train_loss"]))
    with pytest.raises(TypeError, match=r"Model.from_linen\(module, input_shape, num_classes\)"):
        fedavg.make(fedavg.FedAvgConfig(), tiny_federation, _TinyLinen())
    with pytest.raises(ValueError, match=r"expected \(2, 10\)"):
        Model.from_linen(_TinyLinen(), (28, 28, 1), 10)
