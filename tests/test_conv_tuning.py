"""Conv lowerings: every lowering is the convolution (values and both gradients) on every zoo
layer shape; ``auto`` measures once per layer shape, caches the choice on disk, reuses it, and a
forced lowering wins over the cache."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.core.client_axis import map_clients
from jaxfl.models import CONV_LOWERINGS, get_model, layers, model_tuning, tuning

from .tolerance import SUMS

ZOO = [("lenet5", (28, 28, 1)), ("cnn", (28, 28, 1)), ("resnet8", (32, 32, 3))]


def zoo_conv_shapes() -> set:
    """(input (H, W, Cin), kernel (kh, kw, Cin, Cout), stride, padding) of every conv layer in
    the zoo, recorded while tracing each model."""
    seen = set()
    real_conv = layers.conv

    def record(x, kernel, stride, padding, lowering):
        seen.add((x.shape[1:], kernel.shape, stride, padding))
        return real_conv(x, kernel, stride, padding, lowering)

    layers.conv = record
    try:
        for name, shape in ZOO:
            model = get_model(name, shape, 10, "xla")
            params = jax.eval_shape(model.init, jax.random.key(0))
            jax.eval_shape(model.apply, params, jnp.zeros((2, *shape)))
    finally:
        layers.conv = real_conv
    return seen


def plain_conv(x, kernel, stride, padding):
    """XLA's convolution differentiated by JAX's own rules: the reference."""
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=dn)


def representative(cases: set) -> set:
    """One (input, kernel) case per kernel size and kind of input (one channel, or several):
    the smallest input of each. Every case tries both strides and paddings."""
    chosen: dict = {}
    for x_shape, k_shape in sorted(cases, key=lambda c: np.prod(c[0])):
        chosen.setdefault((k_shape[:2], x_shape[-1] == 1), (x_shape, k_shape))
    return set(chosen.values())


def test_every_lowering_is_the_convolution_on_each_kind_of_zoo_layer():
    """Each kernel size and input kind of the zoo's layers (the full set under -m slow)."""
    cases = {(x, k) for x, k, _, _ in zoo_conv_shapes()}
    picked = representative(cases)
    assert len(picked) >= 3 and len(picked) < len(cases)  # 5x5 (lenet5), 3x3, 1x1 shortcuts
    check_lowerings(picked)


@pytest.mark.slow
def test_every_lowering_is_the_convolution_on_every_zoo_layer_shape():
    shapes = zoo_conv_shapes()
    assert len(shapes) >= 8  # lenet5 2, cnn 2, resnet8's stems, blocks, strides and shortcuts
    check_lowerings({(x, k) for x, k, _, _ in shapes})


def check_lowerings(cases: set) -> None:
    for x_shape, k_shape in sorted(cases):
        x = jax.random.normal(jax.random.key(0), (2, *x_shape))
        kernel = jax.random.normal(jax.random.key(1), k_shape) / np.sqrt(np.prod(k_shape[:3]))

        @jax.jit
        def all_lowerings(x, kernel):
            out = {}
            for stride in (1, 2):
                for padding in ("SAME", "VALID"):
                    for lowering in ("plain", *CONV_LOWERINGS):

                        def f(x, k, stride=stride, padding=padding, lowering=lowering):
                            if lowering == "plain":
                                return plain_conv(x, k, stride, padding)
                            return layers.conv(x, k, stride, padding, lowering)

                        y, pullback = jax.vjp(f, x, kernel)
                        out[stride, padding, lowering] = (y, *pullback(jnp.sin(y)))
            return out

        out = all_lowerings(x, kernel)
        for (stride, padding, lowering), got in out.items():
            ref = out[stride, padding, "plain"]
            for what, a, b in zip(("value", "d/dx", "d/dkernel"), got, ref, strict=True):
                scale = float(jnp.max(jnp.abs(b))) + 1e-6
                err = float(jnp.max(jnp.abs(a - b))) / scale
                # tol: two lowerings of one convolution (and its two gradients) sum the same
                # products in another order; relative to the output's largest value, n * 2^-24 <
                # 2e-5 for the n <= 3 * 3 * 32 = 288 products of these shapes.
                assert err < 2e-5, (x_shape, k_shape, stride, padding, lowering, what, err)


def test_native_lowering_keeps_canonical_convolutions_inside_loops():
    """The reason the native lowering has its own VJP: in a scan body, JAX's own transpose rules
    leave convolutions with swapped dimensions that XLA's CPU backend runs as a naive loop
    nest (4.4x slower for the FedAvg CNN). With conv_native every convolution of the
    compiled training loop is in the canonical NHWC/HWIO form."""

    def sgd(kernel, xs, conv):
        def step(k, x):
            grad = jax.grad(lambda k: jnp.sum(conv(x, k, 1, "SAME") ** 2))(k)
            return k - 1e-3 * grad, None

        return jax.lax.scan(step, kernel, xs)[0]

    xs = jnp.zeros((3, 4, 14, 14, 8))
    kernel = jnp.zeros((5, 5, 8, 16))
    hlo = jax.jit(lambda k, x: sgd(k, x, layers.conv_native)).lower(kernel, xs).compile()
    labels = [
        line.split("dim_labels=")[1].split(",")[0]
        for line in hlo.as_text().splitlines()
        if " convolution(" in line
    ]
    assert len(labels) == 2 and set(labels) == {"b01f_01io->b01f"}, labels
    np.testing.assert_allclose(
        jax.jit(lambda k, x: sgd(k, x, layers.conv_native))(kernel + 0.1, xs + 1.0),
        jax.jit(lambda k, x: sgd(k, x, plain_conv))(kernel + 0.1, xs + 1.0),
        rtol=SUMS,
    )


@pytest.fixture
def fake_timings(monkeypatch):
    """Tuning on, with stand-ins for the timings that count their calls: layer by layer
    im2col is fastest; of whole-model assignments, the per-layer one (listed first)."""
    monkeypatch.setenv("JAXFL_CONV_TUNING", "on")
    calls = []

    def measure(shape):
        calls.append(shape)
        return {"rows": 3.0, "im2col": 1.0, "patches": 4.0, "xla": 2.0}

    def measure_model(context, candidates, *args):
        calls.append(context)
        return {",".join(c): float(i + 1) for i, c in enumerate(candidates)}

    monkeypatch.setattr(tuning, "measure", measure)
    monkeypatch.setattr(model_tuning, "measure_model", measure_model)
    return calls


def _train_step(model, batch):
    params = model.init(jax.random.key(0))
    x = jnp.ones((batch, 28, 28, 1))
    loss = lambda p: jnp.sum(model.apply(p, x))
    return jax.jit(jax.grad(loss))(params)


def test_auto_measures_each_shape_once_caches_on_disk_and_reuses(fake_timings):
    model = get_model("lenet5", (28, 28, 1), 10)  # the default lowering is auto
    _train_step(model, 4)
    assert len(fake_timings) == 3  # two conv layers, then the whole model, each measured once
    chosen = tuning.choices()
    model_keys = [k for k in chosen if k.startswith("model|")]
    assert len(chosen) == 3 and len(model_keys) == 1
    assert chosen[model_keys[0]] == ["im2col", "im2col"]
    assert all("|train|" in key and "|c1|" in key for key in chosen)
    on_disk = json.loads(tuning.cache_path().read_text())
    assert set(on_disk) == set(chosen)
    assert on_disk[model_keys[0]]["seconds"]["im2col,im2col"] == 1.0

    tuning.reset()  # a new process: the disk cache answers, nothing is measured
    _train_step(get_model("lenet5", (28, 28, 1), 10), 4)
    assert len(fake_timings) == 3  # the model's cached choice answers; no layer is consulted
    assert tuning.choices() == {model_keys[0]: ["im2col", "im2col"]}

    _train_step(model, 6)  # another batch is another shape: measured anew
    assert len(fake_timings) == 6
    assert all(shape.batch == 6 for shape in fake_timings[3:])


def test_the_whole_model_decides_when_layers_interact(fake_timings, monkeypatch):
    """Layer by layer im2col is fastest, but the whole training step is fastest with rows
    everywhere (as LeNet-5's is on the 2-core CPU): the model's choice wins."""

    def rows_fastest(context, candidates, *args):
        return {",".join(c): (0.5 if set(c) == {"rows"} else 1.0) for c in candidates}

    monkeypatch.setattr(model_tuning, "measure_model", rows_fastest)
    _train_step(get_model("lenet5", (28, 28, 1), 10), 4)
    (model_key,) = [k for k in tuning.choices() if k.startswith("model|")]
    assert tuning.choices()[model_key] == ["rows", "rows"]


def test_forced_lowering_wins_over_the_cache(fake_timings, monkeypatch):
    def patches_fastest(shape):
        return {"rows": 3.0, "im2col": 2.0, "patches": 1.0, "xla": 4.0}

    monkeypatch.setattr(tuning, "measure", patches_fastest)
    model = get_model("lenet5", (28, 28, 1), 10)
    params = model.init(jax.random.key(0))
    x = jnp.ones((4, 28, 28, 1))
    assert "conv_general_dilated" in str(jax.make_jaxpr(model.apply)(params, x))
    assert ["patches", "patches"] in tuning.choices().values()
    tuning.reset()
    forced = get_model("lenet5", (28, 28, 1), 10, "rows")
    jaxpr = str(jax.make_jaxpr(forced.apply)(params, x))
    assert "conv_general_dilated" not in jaxpr  # rows: GEMMs only
    assert tuning.choices() == {}  # a forced lowering consults nothing


def test_real_whole_model_measurement():
    """The whole-model timing itself, on LeNet-5 with a batch of 2: a positive time for each
    candidate assignment, keyed by the assignment."""
    model = get_model("lenet5", (28, 28, 1), 10, "rows")
    context = model_tuning.ModelContext("lenet5-test", 2, "float32", 1, True, 1)
    candidates = [("rows", "rows"), ("xla", "im2col")]
    models = {c: get_model("lenet5", (28, 28, 1), 10, c) for c in candidates}
    seconds = model_tuning.measure_model(
        context, candidates, model.init, lambda lows, p, x: models[lows].apply(p, x),
        (28, 28, 1), 10, steps=1, repeats=1,
    )  # fmt: skip
    assert set(seconds) == {"rows,rows", "xla,im2col"} and min(seconds.values()) > 0


def test_pinned_choices_win_and_several_processes_never_measure(fake_timings, monkeypatch):
    shape = tuning.ConvShape(4, 28, 28, 1, 6, 5, 5, 1, "VALID", "float32")
    tuning.pin({shape.key(): "patches"})
    assert tuning.choose(shape) == "patches" and not fake_timings
    with pytest.raises(ValueError, match="allowed"):
        tuning.pin({shape.key(): "fft"})
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    other = tuning.ConvShape(8, 28, 28, 1, 6, 5, 5, 1, "VALID", "float32")
    assert tuning.choose(other) == tuning.rule_of_thumb(other) and not fake_timings


def test_keys_say_how_the_layer_runs_clients_in_flight_and_training(fake_timings):
    """The measured context: the width of the client vmap (the chunk) and whether the layer is
    differentiated (training) or only evaluated."""
    conv = layers.Conv(3, (3, 3), padding="SAME")
    x = jnp.ones((4, 2, 6, 6, 2))
    params = jax.vmap(lambda x: conv.init(jax.random.key(0), x))(x)

    def local_step(p, xb):
        return jax.grad(lambda p: jnp.sum(conv.apply(p, xb)))(p)

    for chunk in (1, 2):
        jax.jit(lambda p, x, c=chunk: map_clients(local_step, p, x, chunk_size=c))(params, x)
    jax.jit(lambda p, x: map_clients(conv.apply, p, x, chunk_size=2))(params, x)
    contexts = sorted(key.split("|", 8)[-1] for key in tuning.choices())
    assert contexts == ["c1|train|d1", "c2|infer|d1", "c2|train|d1"]
    assert len(fake_timings) == 3


def test_real_measurement_times_every_candidate(monkeypatch):
    """The timing itself, on a tiny layer: every candidate gets a positive time and the choice
    is the fastest. It runs when a layer is traced inside jit and vmap."""
    monkeypatch.setenv("JAXFL_CONV_TUNING", "on")
    conv = layers.Conv(3, (3, 3), padding="SAME")
    x = jnp.ones((2, 2, 6, 6, 2))
    params = jax.vmap(lambda x: conv.init(jax.random.key(0), x))(x)
    jax.jit(jax.vmap(jax.grad(lambda p, x: jnp.sum(conv.apply(p, x)))))(params, x)
    (key,) = tuning.choices()
    entry = tuning.cached()[key]
    assert set(entry["seconds"]) == set(CONV_LOWERINGS)
    assert all(t > 0 for t in entry["seconds"].values())
    assert entry["lowering"] == min(entry["seconds"], key=entry["seconds"].get)
