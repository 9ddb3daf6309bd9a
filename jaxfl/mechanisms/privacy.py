"""User-level differential privacy for every upload: clip per client, noise the sum.

DP-FedAvg (McMahan et al., ICLR 2018), applied to whatever a client uploads (a model update, or
soft labels / logits on public data for the distillation algorithms). Per round t, with the m
sampled clients S_t, client k's upload u_k, clip norm C_t and noise multiplier z:

    u~_k   = u_k * min(1, C_t / ||u_k||_2)                 (per-client L2 clip, for every k)
    mean_t = (sum_{k in S_t, received} u~_k + N(0, (z_D C_t)^2 I)) / m

so one client changes the noised sum by at most C_t (2 C_t when it is *replaced*, the
neighbouring relation of fixed-size sampling; :mod:`jaxfl.mechanisms.accounting`). Every client
weighs the same (the sample-count weights of FedAvg would let one client's data size raise its
influence) and the denominator is the fixed m, not the number received, so a dropped client changes
nothing but its own term. With Poisson participation (``--participation poisson``) m is the
expected cohort q C, as in McMahan et al.

Adaptive clipping (Andrew et al., NeurIPS 2021) with target quantile gamma, learning rate eta_C
and count noise sigma_b: each client also reports the bit b_k = [||u_k|| <= C_t], and

    b^_t    = (sum_k b_k + N(0, sigma_b^2)) / m
    C_{t+1} = C_t * exp(-eta_C (b^_t - gamma))              (geometric update)

Releasing b^ costs privacy too: the user's ``--dp-noise`` z is the round's TOTAL noise
multiplier, and the update's own noise is z_D = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al.,
Theorem 1), so the pair is exactly as private as one Gaussian mechanism of multiplier z (z / 2
for the replace-one relation). Under Poisson participation the relation is add-or-remove, the
update's sensitivity C_t and the bits' 1, so z_D = (z^-2 - sigma_b^-2)^(-1/2) keeps the pair one
Gaussian mechanism of multiplier z (:func:`count_share`).

Algorithms do not call this module: they take the mean of their uploads from
:mod:`jaxfl.mechanisms.uploads`, which is the plain weighted mean or, when the config asks for DP,
this private mean. An algorithm supports DP by inheriting :class:`DPFields` in its config (the
flags ``--dp-*``; their float values are traced hyperparameters, so ``--sweep
dp-noise=0,0.5,1`` runs in one compiled call) and ``dp=True`` in its spec. Epsilon is computed
on the host (:mod:`jaxfl.mechanisms.accounting`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxfl.configs.shared import DPFields as DPFields  # the settings, defined without JAX
from jaxfl.core import aggregate, hparams

DP_STREAM = 0xD9  # fold_in constant of the noise's key, apart from every other stream


@struct.dataclass
class DPState:
    """The privacy mechanism's state: ``clip`` () float32, the clip norm C_t of this round."""

    clip: jax.Array


def enabled(config) -> bool:
    """Whether ``config`` asks for DP (``--dp-clip`` given)."""
    return getattr(config, "dp_clip", None) is not None


def adaptive(config) -> bool:
    return enabled(config) and config.dp_clip_quantile is not None


def count_noise(config, m: int):
    """sigma_b: ``--dp-clip-count-noise``, default m / 20 (Andrew et al.)."""
    return hparams.given(config.dp_clip_count_noise, m / 20.0)


def poisson(config) -> bool:
    """Whether the cohort is drawn by Poisson participation (``--participation poisson``)."""
    return getattr(config, "participation", "fixed") == "poisson"


def count_share(config, m: int):
    """The count query's noise in units of the update's, k with z^-2 = z_D^-2 + k^-2.

    The bits are in {0, 1} (sensitivity 1), the update's clip C_t. Under fixed-size sampling
    (replace one client) the update's sensitivity is 2 C_t, so both halve: k = 2 sigma_b.
    Under Poisson participation (add or remove one client) it is C_t: k = sigma_b."""
    sigma_b = count_noise(config, m)
    return sigma_b if poisson(config) else 2 * sigma_b


def check(config, m: int, participation: str | None = None) -> None:
    """Raise ValueError naming the flag for a DP setting that cannot work (traced values were
    checked before tracing). ``participation``: the config's own when None."""
    if not enabled(config):
        for name in ("dp_clip_quantile", "dp_clip_count_noise"):
            if getattr(config, name, None) is not None:
                raise ValueError(f"--{name.replace('_', '-')} needs --dp-clip (the clip norm)")
        hparams.check(
            config.dp_noise, lambda z: z == 0, "--dp-noise needs --dp-clip (the clip norm)"
        )
        return
    hparams.check(
        config.dp_clip,
        lambda s: s > 0,
        f"--dp-clip {config.dp_clip} is not allowed; allowed: a clip norm > 0",
    )
    hparams.check(
        config.dp_noise,
        lambda z: z >= 0,
        f"--dp-noise {config.dp_noise} is not allowed; allowed: a noise multiplier >= 0",
    )
    if config.dp_clip_quantile is None:
        return
    hparams.check(
        config.dp_clip_quantile,
        lambda q: 0 < q < 1,
        f"--dp-clip-quantile {config.dp_clip_quantile} is not allowed; allowed: 0 < q < 1",
    )
    hparams.check(
        config.dp_clip_lr,
        lambda r: r > 0,
        f"--dp-clip-lr {config.dp_clip_lr} is not allowed; allowed: > 0",
    )
    sigma_b = count_noise(config, m)
    hparams.check(
        sigma_b,
        lambda s: s > 0,
        f"--dp-clip-count-noise {sigma_b} is not allowed; allowed: > 0",
    )
    if (participation or getattr(config, "participation", "fixed")) == "poisson":
        hparams.check(
            (config.dp_noise, sigma_b),
            lambda zs: zs[0] < zs[1],
            f"--dp-noise {config.dp_noise} needs --dp-clip-count-noise above z (now "
            f"{sigma_b}): with adaptive clipping under Poisson participation the update's "
            "noise is z_D = (z^-2 - sigma_b^-2)^-1/2, defined only for z < sigma_b",
        )
        return
    hparams.check(
        (config.dp_noise, sigma_b),
        lambda zs: zs[0] < 2 * zs[1],
        f"--dp-noise {config.dp_noise} needs --dp-clip-count-noise above z / 2 (now "
        f"{sigma_b}): with adaptive clipping the update's noise is "
        "z_D = (z^-2 - (2 sigma_b)^-2)^-1/2, defined only for z < 2 sigma_b",
    )


def update_noise_multiplier(config, m: int):
    """z_D, the noise multiplier of the update itself: z without adaptive clipping, else
    (z^-2 - k^-2)^(-1/2) with k = 2 sigma_b, or sigma_b under Poisson participation
    (:func:`count_share`; 0 when z = 0); traced values allowed."""
    z = jnp.asarray(config.dp_noise, jnp.float32)
    if not adaptive(config):
        return z
    share = jnp.asarray(count_share(config, m), jnp.float32)
    safe = jnp.where(z > 0, z, 1.0)
    return jnp.where(z > 0, (safe**-2 - share**-2) ** -0.5, 0.0)


def init(config) -> DPState | None:
    """The first round's state: C_0 = ``dp_clip``; None without DP."""
    if not enabled(config):
        return None
    return DPState(jnp.asarray(config.dp_clip, jnp.float32))


def clip_upload(upload, clip: jax.Array):
    """One client's upload clipped to L2 norm ``clip`` over all its leaves (as
    ``optax.clip_by_global_norm`` clips a gradient). Returns (clipped, unclipped), ``unclipped``
    () float32 1.0 when ``||upload|| <= clip`` (the bit b_k of adaptive clipping)."""
    norm = optax.global_norm(upload)
    scale = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
    clipped = jax.tree.map(lambda x: (x * scale).astype(x.dtype), upload)
    return clipped, (norm <= clip).astype(jnp.float32)


def gaussian_like(key: jax.Array, tree, std):
    """Independent N(0, std^2) noise shaped like every leaf of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [
        (std * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def noised_mean(mean, unclipped_frac, state: DPState, key: jax.Array, config, m: int):
    """The private mean of one round, from the received clients' clipped uploads.

    Args:
      mean: pytree, sum_k u~_k / m over the received clients (u~_k from :func:`clip_upload`;
        each client weighted 1/m before summing, as FedAvg's mean weights it on equal-size
        clients: without noise and clipping the two are then bit-identical).
      unclipped_frac: () float32, sum_k b_k / m over the same clients.
      state: this round's :class:`DPState`.
      key: the round's DP key (e.g. ``fold_in(hooks.round_key(key), DP_STREAM)``).
      config: the algorithm's config (:class:`DPFields`).
      m: clients sampled per round (the fixed denominator).

    Returns:
      (mean, new_state, metrics): mean + N(0, (z_D C_t)^2) / m; the next clip norm;
      ``dp_clip_norm`` (C_t) and ``dp_unclipped_frac`` (b^_t: noisy when adaptive, since it is
      released; else the exact fraction, a diagnostic the simulator alone sees).
    """
    k_noise, k_count = jax.random.split(key)
    std = update_noise_multiplier(config, m) * state.clip / m
    mean = jax.tree.map(jnp.add, mean, gaussian_like(k_noise, mean, std))
    if adaptive(config):
        sigma_b = count_noise(config, m)
        estimate = unclipped_frac + sigma_b * jax.random.normal(k_count) / m
        clip = state.clip * jnp.exp(-config.dp_clip_lr * (estimate - config.dp_clip_quantile))
    else:
        estimate, clip = unclipped_frac, state.clip
    metrics = {"dp_clip_norm": state.clip, "dp_unclipped_frac": estimate}
    return mean, DPState(clip), metrics


def private_mean(
    uploads, received: jax.Array, state: DPState, key: jax.Array, config, m: int | None = None
):
    """:func:`noised_mean` of stacked uploads: clip every row, sum the received ones.

    Args:
      uploads: pytree with leaves (M, ...), one row per slot of the cohort.
      received: (M,) bool or 0/1, whether each upload arrived.
      m: the fixed denominator: the clients sampled per round (default M), or with Poisson
        participation the expected cohort q C.

    Returns (mean, new_state, metrics) as :func:`noised_mean`.
    """
    m = received.shape[0] if m is None else m
    clipped, unclipped = jax.vmap(clip_upload, in_axes=(0, None))(uploads, state.clip)
    weight = received.astype(jnp.float32) / m
    mean = aggregate.weighted_sum(clipped, weight)
    return noised_mean(mean, jnp.sum(weight * unclipped), state, key, config, m)


def key_of(hook_key: jax.Array) -> jax.Array:
    """The DP noise's key from a round's hook key (:func:`jaxfl.core.hooks.round_key`)."""
    return jax.random.fold_in(hook_key, DP_STREAM)
