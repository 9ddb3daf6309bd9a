"""Simulated faults and system heterogeneity, as masks on the client axis (no Python per client).

Per round, with m sampled clients:

- dropout: each sampled client's upload is lost with probability ``dropout`` (``received`` (m,)
  bool); aggregation uses only the received updates, and the round is applied only when at
  least ``min_received`` arrive. A dropped client still ran its local work (only the message is
  lost), so a client that keeps a model of its own keeps what it trained.
- stragglers: ``straggler_fraction`` of the sampled clients (exactly round(fraction * m), drawn
  per round) complete only ``straggler_work`` of their local steps (``work`` (m,) in (0, 1]).
- adversaries: a fixed set of round(``adversary_fraction`` * C) clients, drawn once from the seed,
  attacks in every round it is sampled: ``label_flip`` (trains on label L-1-y), for the
  distillation algorithms ``random_logits`` (uploads the softmax of N(0, attack_scale^2) logits)
  and ``scaled_logits`` (uploads softmax(attack_scale * logits)), for FedAvg ``scaled_update``
  (uploads attack_scale * its model update).

The fault draws use ``fold_in(round_key, FAULT_STREAM)``, a stream of their own, so turning
faults on or off leaves every other random draw of the round unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.configs.shared import FaultFields
from jaxfl.core import hparams
from jaxfl.core.names import ATTACKS as ATTACKS  # defined without JAX, for --help

FAULT_STREAM = 0x0FA17


@dataclasses.dataclass(frozen=True)
class FaultConfig(FaultFields):
    """The fault settings (:class:`jaxfl.configs.shared.FaultFields`) and their checks, which
    depend on the algorithm (its attacks) and the cohort size."""

    def check(self, allowed_attacks: tuple[str, ...], clients_per_round: int) -> None:
        """Raise ValueError naming the flag if a setting cannot work for this algorithm."""
        hparams.check(
            self.dropout,
            lambda p: 0.0 <= p < 1.0,
            f"--dropout {self.dropout} is not allowed; allowed: 0 <= p < 1",
        )
        if not 1 <= self.min_received <= clients_per_round:
            raise ValueError(
                f"--min-received {self.min_received} is not allowed; allowed: "
                f"1..--clients-per-round ({clients_per_round})"
            )
        for flag, value in (
            ("--straggler-fraction", self.straggler_fraction),
            ("--adversary-fraction", self.adversary_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{flag} {value} is not allowed; allowed: 0..1")
        hparams.check(
            self.straggler_work,
            lambda w: 0.0 < w <= 1.0,
            f"--straggler-work {self.straggler_work} is not allowed; allowed: 0 < w <= 1",
        )
        if self.attack not in ("none", *allowed_attacks):
            raise ValueError(
                f"--attack {self.attack!r} is not allowed for this algorithm; allowed: "
                f"{', '.join(('none', *allowed_attacks))}"
            )
        if self.attack != "none" and self.adversary_fraction == 0.0:
            raise ValueError(f"--attack {self.attack} needs --adversary-fraction > 0")


def setup(
    fault_config: FaultConfig | None,
    allowed_attacks: tuple[str, ...],
    clients_per_round: int,
    num_clients: int,
    seed: int,
):
    """One algorithm's faults: (the checked config, (C,) bool device mask of adversaries)."""
    fault_config = fault_config or FaultConfig()
    fault_config.check(allowed_attacks, clients_per_round)
    given = _adversaries.get()
    if given is not None:  # the experiments axis: this experiment's set, drawn from its seed
        return fault_config, given
    mask = adversaries(num_clients, fault_config.adversary_fraction, seed)
    return fault_config, jnp.asarray(mask)


_adversaries: contextvars.ContextVar = contextvars.ContextVar("adversaries", default=None)


@contextlib.contextmanager
def use_adversaries(mask: jax.Array):
    """Make :func:`setup` return ``mask`` (C,) bool as the adversary set: the experiments axis
    binds an algorithm inside a vmap over experiments of different seeds, where each
    experiment's set (drawn from its own seed by :func:`adversaries`) is a traced value."""
    token = _adversaries.set(mask)
    try:
        yield
    finally:
        _adversaries.reset(token)


def adversaries(num_clients: int, fraction: float, seed: int) -> np.ndarray:
    """(C,) bool: a fixed set of round(fraction * C) adversarial clients, drawn from ``seed``."""
    mask = np.zeros(num_clients, bool)
    k = int(round(fraction * num_clients))
    mask[np.random.default_rng([seed, FAULT_STREAM]).permutation(num_clients)[:k]] = True
    return mask


def round_faults(key: jax.Array, m: int, config: FaultConfig) -> tuple[jax.Array, jax.Array]:
    """This round's ``received`` (m,) bool and ``work`` (m,) float32 for the m sampled clients."""
    k_drop, k_slow = jax.random.split(jax.random.fold_in(key, FAULT_STREAM))
    received = jax.random.uniform(k_drop, (m,)) >= config.dropout
    n_slow = int(round(config.straggler_fraction * m))
    slow = jnp.zeros((m,), bool).at[jax.random.permutation(k_slow, m)[:n_slow]].set(True)
    work = jnp.where(slow, config.straggler_work, 1.0).astype(jnp.float32)
    return received, work


def step_budget(work: jax.Array, count: jax.Array, batch_size: int, epochs: int) -> jax.Array:
    """Local steps a client with ``count`` examples completes at ``work`` fraction (>= 1)."""
    full = epochs * ((count + batch_size - 1) // batch_size)
    return jnp.maximum(jnp.ceil(work * full), 1).astype(jnp.int32)


def local_training_faults(
    config: FaultConfig, num_classes: int, client, batch_size: int, epochs: int
):
    """(label_map or None, max_steps or None) of one client's local training under ``config``:
    an adversary's flipped labels, a straggler's step budget. ``client`` is the client's
    :class:`jaxfl.core.algorithm.ClientInputs` (its ``is_adversary``, ``work`` and ``count``)."""
    label_map = None
    if config.attack == "label_flip":
        label_map = lambda labels: flip_labels(labels, num_classes, client.is_adversary)
    max_steps = None
    if config.straggler_fraction > 0:
        max_steps = step_budget(client.work, client.count, batch_size, epochs)
    return label_map, max_steps


def flip_labels(labels: jax.Array, num_classes: int, flip: jax.Array) -> jax.Array:
    """Label flipping: y -> L-1-y where ``flip``."""
    return jnp.where(flip, num_classes - 1 - labels, labels)


def attack_probs(
    logits: jax.Array, key: jax.Array, attack: str, scale: float, is_adversary: jax.Array
) -> jax.Array:
    """The probabilities a distillation client uploads, from its logits (P, L) on the open set."""
    if attack == "random_logits":
        bad = jax.nn.softmax(scale * jax.random.normal(key, logits.shape))
    elif attack == "scaled_logits":
        bad = jax.nn.softmax(scale * logits)
    else:
        return jax.nn.softmax(logits)
    return jnp.where(is_adversary, bad, jax.nn.softmax(logits))


def applied(received: jax.Array, min_received: int) -> jax.Array:
    """() bool: whether enough updates arrived to apply the round."""
    return jnp.sum(received) >= max(min_received, 1)


def select(pred: jax.Array, new, old):
    """``new`` where the () bool ``pred`` holds, else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)
