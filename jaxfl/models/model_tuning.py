"""The whole model's choice of conv lowerings (a zoo model's ``lowering="auto"``).

A layer's fastest lowering in isolation (:mod:`jaxfl.models.tuning`) is not always its fastest
inside the model: on the 2-core CPU, LeNet-5's second layer measured 1.77 ms per step with
im2col against 2.14 with ``rows`` alone, yet the whole training step ran 397 ms per 50 steps
with (rows, im2col) against 298 with (rows, rows): how a layer's output feeds the next ones
(pooling, the dense layers, XLA's fusion and layout choices) matters. So a zoo model's ``auto``
times whole training steps of a few candidate assignments (the per-layer choices, and each
lowering for every layer) and keeps the fastest: never slower than the best single lowering.
The choice is keyed by :class:`ModelContext` and cached, pinned and listed with the per-layer
choices (:func:`jaxfl.models.tuning.cached`, ``pin``, ``choices``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.models.tuning import (
    MAX_MEASURED_CLIENTS,
    ConvShape,
    choose,
    in_fresh_thread,
    lookup,
    machine_key,
    record,
    rule_of_thumb,
    tuning_enabled,
)


def conv_layers(init_with, dummy) -> list[tuple]:
    """A model's conv layers in order, ``(input (H, W, Cin), kernel, stride, padding)``, from
    tracing ``init_with(lowering, dummy)``."""
    from jaxfl.models.lowerings import recording

    with recording([]) as calls:
        jax.eval_shape(lambda x: init_with("xla", x), dummy)
    return calls


@dataclasses.dataclass(frozen=True)
class ModelContext:
    """How a model is being run (with its name, the cache key of a model-level choice)."""

    model: str
    batch: int
    dtype: str
    clients: int
    training: bool
    devices: int

    def key(self) -> str:
        return (
            f"model|{machine_key()}|{self.model}|x{self.batch}|{self.dtype}|c{self.clients}|"
            f"{'train' if self.training else 'infer'}|d{self.devices}"
        )


def tuned_apply(model_key: str, init, apply_with, layers, feature_shape, num_classes):
    """``apply(params, x)`` of a zoo model whose conv lowerings are chosen when it is traced:
    forward-fastest where nothing differentiates it, training-step-fastest where something does
    (a custom VJP, as :func:`jaxfl.models.layers.conv_auto`)."""

    def lowerings_for(x, training: bool) -> tuple[str, ...]:
        from jaxfl.core.client_axis import clients_in_flight, current_mesh

        mesh = current_mesh()
        context = ModelContext(
            model_key, x.shape[0], jnp.dtype(x.dtype).name, clients_in_flight(), training,
            1 if mesh is None else mesh.size,
        )  # fmt: skip
        return choose_model(context, layers, init, apply_with, feature_shape, num_classes)

    @jax.custom_vjp
    def apply(params, x):
        return apply_with(lowerings_for(x, training=False), params, x)

    def fwd(params, x):
        lowerings = lowerings_for(x, training=True)
        return jax.vjp(lambda p, x: apply_with(lowerings, p, x), params, x)

    apply.defvjp(fwd, lambda pullback, g: pullback(g))
    return apply


def choose_model(context: ModelContext, layers, init, apply_with, feature_shape, num_classes):
    """One lowering per conv layer for ``context``: pinned, cached, or measured (and cached)."""
    key = context.key()
    choice, entry = lookup(key), None
    if choice is None:
        shapes = [
            ConvShape(
                context.batch,
                *x_shape,
                kernel[3],
                kernel[0],
                kernel[1],
                stride,
                padding,
                context.dtype,
                context.clients,
                context.training,
                context.devices,
            )  # fmt: skip
            for x_shape, kernel, stride, padding in layers
        ]
        if not tuning_enabled() or jax.process_count() > 1:
            choice = tuple(rule_of_thumb(s) for s in shapes)
        else:
            per_layer = tuple(choose(s) for s in shapes)  # layer by layer, cached too
            candidates = list(dict.fromkeys([per_layer, *((c,) * len(shapes) for c in FAST)]))
            seconds = in_fresh_thread(
                measure_model, context, candidates, init, apply_with, feature_shape, num_classes
            )
            choice = min(candidates, key=lambda c: seconds[",".join(c)])
            entry = {"lowering": list(choice), "seconds": seconds, "measured": time.time()}
    record(key, list(choice), entry)
    return tuple(choice)


FAST = ("rows", "im2col", "xla")  # patches is never competitive: not tried for whole models


def measure_model(
    context: ModelContext, candidates, init, apply_with, feature_shape, num_classes,
    steps: int = 4, repeats: int = 3,
) -> dict[str, float]:  # fmt: skip
    """Seconds per training step (forward only when not ``context.training``) of the whole
    model under each candidate assignment of lowerings, as the marginal cost inside a loop
    (see :func:`measure`), vmapped over the clients in flight and on every device at once."""
    clients = min(context.clients, MAX_MEASURED_CLIENTS)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((clients, context.batch, *feature_shape)), jnp.float32)
    y = jnp.asarray(rng.integers(num_classes, size=(clients, context.batch)), jnp.int32)
    params = jax.tree.map(lambda p: jnp.stack([p] * clients), init(jax.random.key(0)))
    if context.clients == 1:
        x, y, params = x[0], y[0], jax.tree.map(lambda p: p[0], params)
    mesh = None
    if context.devices > 1:
        mesh = jax.sharding.Mesh(jax.devices()[: context.devices], ("devices",))
        x, y, params = jax.device_put((x, y, params), jax.sharding.NamedSharding(mesh, jax.P()))
    seconds: dict[str, float] = {}
    for lowerings in candidates:

        def one(params, x, y, lowerings=lowerings):
            if not context.training:
                return params, x + 1e-6 * jnp.mean(apply_with(lowerings, params, x))
            loss = lambda p: (
                -jnp.mean(
                    jnp.take_along_axis(
                        jax.nn.log_softmax(apply_with(lowerings, p, x)), y[:, None], 1
                    )
                )
            )
            grads = jax.grad(loss)(params)
            return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), x

        if context.clients > 1:
            one = jax.vmap(one)

        def run(params, x, y, trips, one=one):
            body = lambda _, carry: one(*carry, y)
            return jax.lax.fori_loop(0, trips, body, (params, x))

        if mesh is not None:
            run = jax.shard_map(
                run, mesh=mesh, in_specs=jax.P(), out_specs=jax.P(), check_vma=False
            )
        compiled = jax.jit(run).lower(params, x, y, jnp.int32(1)).compile()
        best_so_far = min(seconds.values(), default=float("inf"))
        times = {1: float("inf"), 1 + steps: float("inf")}
        jax.block_until_ready(compiled(params, x, y, jnp.int32(1)))
        for _ in range(repeats):
            for n in (1 + steps, 1):
                start = time.perf_counter()
                jax.block_until_ready(compiled(params, x, y, jnp.int32(n)))
                times[n] = min(times[n], time.perf_counter() - start)
            if times[1 + steps] / (1 + steps) > 2 * best_so_far:
                break
        seconds[",".join(lowerings)] = max(times[1 + steps] - times[1], 1e-9) / steps
    return seconds
