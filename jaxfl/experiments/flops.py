"""Useful FLOPs of one round, and the dense-GEMM rate they are compared with (scripts/bench.py,
and run.py's round-time estimate before the first round).

XLA's cost analysis (of the lowered HLO, so nothing is compiled) counts a loop body once, so a
round's FLOPs are computed from loop-free pieces (one client's train step, one prediction batch)
times the steps the round executes (masked padding steps included: they are computed). They are
the model's useful FLOPs, counted on the same architecture with XLA's native convolution, so a
lowering that does extra arithmetic (``rows`` computes W/kw times the convolution's
multiply-adds) gets no credit for it and every lowering's GFLOP/s is comparable. Each
algorithm's extra work (distillation, predictions on the public set, server steps) is counted
where the round does it.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.core import train
from jaxfl.core.names import lstm_hidden
from jaxfl.models import get_model
from jaxfl.models.recurrent import charlstm_train_flops


def gemm_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    """Achieved FLOP/s of a dense float32 n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _flops(fn, *args) -> float:
    # the lowered (not compiled) module's analysis: within 2% of the compiled one's, 3x sooner
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def estimate_round_seconds(exp) -> tuple[float, float, float]:
    """(seconds, FLOPs, FLOP/s): a lower bound on one round's time, its useful FLOPs over the
    device's dense-matmul rate (measured now in a fraction of a second). Real rounds run
    slower (small per-client matmuls, data movement): 2-3x on a CPU for an MLP round."""
    flops, _ = round_flops(exp)
    n = 1024 if jax.default_backend() == "cpu" else 4096
    rate = gemm_flops_per_s(n, repeats=3)
    return flops / rate, flops, rate


def round_flops(exp) -> tuple[float, float]:
    """(useful FLOPs, samples visited) of one steady-state round, summed over model groups."""
    groups = exp.groups or [None]
    flops = samples = 0.0
    for g in groups:
        model = exp.model if g is None else g.model
        m = exp.algorithm.clients_per_round if g is None else g.per_round
        counts = np.asarray(exp.data.client_count)
        if g is not None:
            counts = counts[g.start : g.stop]
        f, s = _group_flops(exp, model, m, counts)
        flops += f
        samples += s
    cfg = exp.algorithm_config
    if exp.args.algo == "feddf":  # server distillation, at most server_distill_steps per group
        kd_b = cfg.distill_batch_size or cfg.batch_size
        for g in exp.groups or [None]:
            model = exp.model if g is None else g.model
            flops += cfg.server_distill_steps * _step_flops(model, kd_b)
            samples += cfg.server_distill_steps * kd_b
    if exp.args.algo == "dsfl":  # the server model (the first group's) distills too
        kd_b = cfg.distill_batch_size or cfg.batch_size
        kd_steps = cfg.distill_epochs * math.ceil(cfg.public_per_round / kd_b)
        flops += kd_steps * _step_flops(exp.model, kd_b)
        samples += cfg.distill_epochs * cfg.public_per_round
    return flops, samples


def _xla_model(model):
    return get_model(model.name, model.feature_shape, model.num_classes, "xla")


def _step_flops(model, batch: int) -> float:
    """FLOPs of one SGD step on ``batch`` examples (native convolutions: useful FLOPs only;
    a recurrent model's counted by hand, its time steps being a scan's)."""
    hidden = lstm_hidden(model.name)
    tokens = batch * model.feature_shape[0] if len(model.feature_shape) == 1 else 0
    if hidden is not None:
        return float(charlstm_train_flops(tokens, model.num_classes, hidden))
    if model.name == "nwp-lstm":
        return float(charlstm_train_flops(tokens, model.num_classes, 670, 96, 1, 96))
    model = _xla_model(model)
    params = jax.eval_shape(model.init, jax.random.key(0))  # lowering needs shapes only
    opt = optax.sgd(0.1)

    def step(p, x, y):
        g = jax.grad(lambda q: jnp.mean(train.cross_entropy(model.apply(q, x), y)))(p)
        return optax.apply_updates(p, opt.update(g, opt.init(p), p)[0])

    x = jnp.zeros((batch, *model.feature_shape))
    logits = jax.eval_shape(model.apply, params, x)  # (B, L), or (B, T, V) for a language model
    return _flops(step, params, x, jnp.zeros(logits.shape[:-1], jnp.int32))


def _group_flops(exp, model, m: int, counts: np.ndarray) -> tuple[float, float]:
    """One group's clients: local training (+ DS-FL's distillation and prediction)."""
    data, cfg = exp.data, exp.algorithm_config
    b = cfg.batch_size
    steps_per_epoch = math.ceil(data.capacity / b)
    epochs = cfg.local_epochs
    if exp.args.algo == "ditto":  # the global and the personal update
        epochs += getattr(cfg, "personal_epochs", None) or cfg.local_epochs
    flops = m * epochs * steps_per_epoch * _step_flops(model, b)
    samples = epochs * counts.mean() * m
    xla = _xla_model(model)
    params = jax.eval_shape(xla.init, jax.random.key(0))
    if exp.args.algo == "hypcluster":  # every client scores the K cluster models on its data
        fwd = _flops(xla.apply, params, jnp.zeros((data.capacity, *xla.feature_shape)))
        flops += m * cfg.num_clusters * fwd
        samples += m * cfg.num_clusters * counts.mean()
    if exp.args.algo == "feddf":  # every client's logits on the whole public set
        public = exp.data.public_size
        flops += m * _flops(xla.apply, params, jnp.zeros((public, *xla.feature_shape)))
        samples += m * public
    if exp.args.algo == "fccl":  # logits on the public batch, then the collaborative steps
        n = cfg.public_per_round
        flops += m * _flops(xla.apply, params, jnp.zeros((n, *xla.feature_shape)))
        flops += m * cfg.fccl_collab_steps * _step_flops(model, n)
        flops += (
            m
            * epochs
            * steps_per_epoch
            * 2
            * _flops(  # the two teachers' predictions
                xla.apply, params, jnp.zeros((b, *xla.feature_shape))
            )
        )
        samples += m * (1 + cfg.fccl_collab_steps) * n
    if exp.args.algo == "fedmd":  # logits on the round's sample, then digest it
        n, db = cfg.public_per_round, cfg.fedmd_digest_batch
        flops += m * _flops(xla.apply, params, jnp.zeros((n, *xla.feature_shape)))
        flops += m * cfg.fedmd_digest_epochs * math.ceil(n / db) * _step_flops(model, db)
        samples += m * (1 + cfg.fedmd_digest_epochs) * n
    if exp.args.algo == "dsfl":
        kd_b = cfg.distill_batch_size or b
        kd_steps = cfg.distill_epochs * math.ceil(cfg.public_per_round / kd_b)
        pred = _flops(xla.apply, params, jnp.zeros((cfg.public_per_round, *xla.feature_shape)))
        flops += m * (kd_steps * _step_flops(model, kd_b) + pred)
        samples += m * (cfg.distill_epochs + 1) * cfg.public_per_round
    return flops, samples
