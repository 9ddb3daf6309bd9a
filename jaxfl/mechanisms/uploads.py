"""The mean of the clients' uploads: the one place differential privacy enters a round.

An algorithm says what each client uploads (any pytree: a model update, soft labels, logit
tables) and the weight it would give each upload (FedAvg: the sample count n_k; DS-FL: 1), and
takes the server's mean from an :class:`UploadMean`. :func:`upload_mean` builds it from the
algorithm's config:

- without ``--dp-clip``, the plain weighted mean  sum_k w_k u_k / sum_k w_k  over the received
  clients (``w_k`` 0 for a client whose upload did not arrive);
- with ``--dp-clip``/``--dp-noise``, DP-FedAvg's private mean (:mod:`jaxfl.mechanisms.privacy`,
  McMahan et al., ICLR 2018): every upload clipped to norm C_t, every received client weighing
  1/m, Gaussian noise on the sum, the clip norm adapted (Andrew et al., NeurIPS 2021) and kept
  in the algorithm's state as the upload mean's state.

So an algorithm gets DP by inheriting the DP settings in its config (``DPFields``) and
declaring ``dp=True`` in its spec, without a line of DP code: the same calls give the plain or
the private mean (as optax's ``differentially_private_aggregate`` wraps a gradient
aggregation, or pfl-research's postprocessors wrap an algorithm's statistics).

Two ways to call it, both over a leading client axis of m sampled clients:

- **stacked**: :meth:`UploadMean.mean` on every client's upload (leaves (m, ...)).
- **streamed** (summed chunk by chunk, memory for one chunk of uploads, not m): ``prepare``
  takes each client's weight of the mean from :meth:`UploadMean.client_weights`, each
  ``client_update`` passes its upload through :meth:`UploadMean.client` (the clip) and returns
  weight x upload and weight x stats, and ``finish`` hands their sums to
  :meth:`UploadMean.finish` (the noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxfl.core import aggregate
from jaxfl.mechanisms import faults, privacy


@dataclasses.dataclass(frozen=True)
class UploadMean:
    """How one bound algorithm averages its clients' uploads (built by :func:`upload_mean`).

    Attributes:
      config: the algorithm's config (its ``dp_*`` settings, traced in a sweep).
      clients_per_round: m, the private mean's fixed denominator.
      private: whether the mean is the private one (``--dp-clip`` given). An algorithm reads it
        only where privacy changes WHAT a client uploads (IncFL's client-side weights, FD's
        per-label counts), never to choose how the uploads are averaged.
      poisson: whether the cohort is drawn by Poisson participation (``--participation``); m
        is then its expected size q C, the private mean's denominator (McMahan et al.).
    """

    config: Any
    clients_per_round: int
    private: bool
    poisson: bool = False

    def applied(self, received: jax.Array, min_received: int) -> jax.Array:
        """() bool: whether the server applies this round's mean: enough uploads arrived
        (:func:`jaxfl.mechanisms.faults.applied`). With DP under Poisson participation, every
        round (an empty cohort's update is the noise alone): skipping a round because few
        clients took part would release the cohort's size outside the accounted mechanism."""
        if self.private and self.poisson:
            return jnp.ones((), bool)
        return faults.applied(received, min_received)

    def init(self):
        """The first round's state: the clip norm C_0 with DP (``privacy.DPState``), else None."""
        return privacy.init(self.config)

    def mean(
        self,
        uploads,
        weights: jax.Array,
        received: jax.Array,
        state,
        hook_key: jax.Array,
        *,
        plain: Callable = aggregate.weighted_mean,
        domain: Callable | None = None,
    ):
        """The mean of stacked uploads.

        Args:
          uploads: pytree with leaves (M, ...), one row per slot of the cohort (M = m, or with
            Poisson participation the cohort's capacity).
          weights: (M,) the plain mean's weights, 0 for a client not received (e.g.
            ``counts * received``); the private mean weighs every received client 1/m.
          received: (M,) bool, whether each upload arrived (False for an empty slot).
          state: this round's upload-mean state (:meth:`init`).
          hook_key: the round's hook key (:func:`jaxfl.core.hooks.round_key`); the noise's
            key is derived from it (:func:`jaxfl.mechanisms.privacy.key_of`).
          plain: ``(uploads, weights) -> mean``, the plain aggregation (an algorithm's own
            hook); the private mean replaces it.
          domain: maps a noised mean back onto the uploads' domain (e.g.
            :func:`jaxfl.core.aggregate.onto_simplex` for probabilities): post-processing, no
            privacy cost; an exact mean is already there and is not touched.

        Returns:
          (mean, new state, metrics): metrics ``dp_clip_norm`` and ``dp_unclipped_frac`` with
          DP, else empty.
        """
        if not self.private:
            return plain(uploads, weights), state, {}
        mean, new_state, metrics = privacy.private_mean(
            uploads, received, state, privacy.key_of(hook_key), self.config, self.clients_per_round
        )
        if domain is not None:
            mean = domain(mean)
        return mean, new_state, metrics

    def client_weights(self, weights: jax.Array, received: jax.Array) -> jax.Array:
        """(m,) each client's weight in the streamed mean: w_k / sum_k w_k (``weights`` with 0
        for a client not received), or with DP received_k / m."""
        if self.private:
            return received.astype(jnp.float32) / self.clients_per_round
        return weights.astype(jnp.float32) / jnp.maximum(jnp.sum(weights), 1e-30)

    def client(self, upload, state):
        """One client's upload as it leaves the client, inside ``client_update``: with DP
        clipped to norm C_t (after any attack: DP bounds an adversary's upload too).

        Returns (upload, stats): ``stats`` is a tuple to be summed with the client's weight
        and handed to :meth:`finish`: with DP ``(b_k,)``, the bit ||u_k|| <= C_t of adaptive
        clipping; else ``()``.
        """
        if not self.private:
            return upload, ()
        clipped, bit = privacy.clip_upload(upload, state.clip)
        return clipped, (bit,)

    def finish(self, total, stats, state, hook_key: jax.Array):
        """The streamed mean from the weighted sums: ``total`` = sum_k weight_k u_k and
        ``stats`` = sum_k weight_k stats_k (weights from :meth:`client_weights`). With DP the
        noise is added here. Returns (mean, new state, metrics) as :meth:`mean`."""
        if not self.private:
            return total, state, {}
        mean, new_state, metrics = privacy.noised_mean(
            total, stats[0], state, privacy.key_of(hook_key), self.config, self.clients_per_round
        )
        return mean, new_state, metrics


def upload_mean(config, clients_per_round: int, *, custom: str | None = None) -> UploadMean:
    """The upload mean ``config`` asks for, its DP settings checked (ValueError naming the
    flag).

    ``custom``: the name of the ``make()`` argument through which the caller replaced the
    algorithm's aggregation, if it did; the private mean cannot honour it, so DP with it is an
    error.
    """
    private = privacy.enabled(config)
    if isinstance(config, privacy.DPFields):  # an algorithm without DP settings is plain
        privacy.check(config, clients_per_round)
    if private and custom is not None:
        raise ValueError(
            "--dp-clip replaces the mean of the uploads with the private mean "
            f"(jaxfl.mechanisms.privacy); give make() either {custom} or a DP setting, not both"
        )
    poisson = getattr(config, "participation", "fixed") == "poisson"
    return UploadMean(config, clients_per_round, private, poisson)
