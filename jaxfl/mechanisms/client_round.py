"""The standard client side of a round, so a new algorithm need not copy FedAvg's.

Most algorithms start a round the same way: sample m clients, draw this round's faults (who is
dropped, how much work a straggler does), give each sampled client its PRNG key and index view,
and train each one locally with label flipping and step budgets applied. :class:`StandardClients`
does exactly that, with the same keys FedAvg uses, so a new algorithm's ``prepare`` and
``client_update`` are a few lines::

    clients = standard_clients(data, m, fault_config=fault_config, seed=seed)

    def prepare(state, key, data):
        picked = clients.sample(key, data)
        return (data, state.params), picked.client_args, picked

    def client_update(shared, client):
        data, params = shared
        trained = clients.train(model.apply, data, params, optimizer, batch_size, epochs, client)
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxfl.configs.shared import LocalTrainingFields as LocalTrainingFields
from jaxfl.configs.shared import ServerOptFields as ServerOptFields
from jaxfl.core import hparams, train
from jaxfl.core.algorithm import ClientInputs, client_inputs, gather, sample_clients
from jaxfl.core.client_axis import client_devices
from jaxfl.core.cohort_chunks import deal_sorted, device_sorted_sizes, schedule_clients
from jaxfl.core.names import PARTICIPATIONS
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults


@struct.dataclass
class Picked:
    """This round's sampled clients.

    Attributes:
      sampled: (M,) int32 client indices, one per slot of the cohort (M = m with fixed
        participation; with Poisson participation the capacity, its empty slots padded).
      received: (M,) bool, whether each slot's upload arrives: the client is in the cohort and
        its upload was not dropped (dropout faults).
      client_args: the per-client inputs of ``client_update``, each with a leading (M,) axis:
        ``(*rows, ClientInputs)`` (:func:`jaxfl.core.algorithm.client_inputs`).
      present: (M,) bool, whether the slot holds a client of this round's cohort (all True
        with fixed participation).
    """

    sampled: jax.Array
    received: jax.Array
    client_args: tuple
    present: jax.Array


@dataclasses.dataclass(frozen=True)
class StandardClients:
    """Sampling, faults and local training of the clients of one bound algorithm.

    Attributes:
      clients_per_round: m (with Poisson participation the expected cohort, q = m / population).
      population: clients that may be sampled (the first ``population`` of C).
      fault_config: the faults (:mod:`jaxfl.mechanisms.faults`), defaults filled in.
      adversary: (C,) bool, the fixed adversarial clients.
      select_clients: ``(key, population, m) -> (m,) int32``.
      by_size: order each round's cohort by client size (smallest first) once every sampled
        client has its key and faults, so the clients computed together (a chunk of the
        client axis, :func:`jaxfl.core.client_axis.map_clients`) have similar sizes; with local
        training that runs only a client's own steps (``dynamic_steps``), a chunk then costs
        about what its clients need instead of the largest client's padding. A client's key,
        faults and result do not change, only the order of the cohort (and so the order in
        which sums over it are taken).
      participation: ``fixed`` (exactly m, ``select_clients``) or ``poisson``
        (:func:`poisson_cohort`, each client independently with probability q = m /
        population, in ``slots`` slots).
      slots: M, the client axis of a round: m, or with Poisson participation the capacity
        (:func:`poisson_capacity`).
    """

    clients_per_round: int
    population: int
    fault_config: faults.FaultConfig
    adversary: jax.Array
    select_clients: Callable
    by_size: bool = True
    participation: str = "fixed"
    slots: int | None = None

    @property
    def sampling_probability(self) -> float:
        """q = m / population, each client's chance of taking part in a round."""
        return self.clients_per_round / self.population

    def _draw(self, k_sample: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sampled (M,) int32, present (M,) bool): the cohort drawn with ``k_sample``."""
        if self.participation == "poisson":
            return poisson_cohort(k_sample, self.population, self.sampling_probability, self.slots)
        sampled = self.select_clients(k_sample, self.population, self.clients_per_round)
        return sampled, jnp.ones((self.clients_per_round,), bool)

    def cohort(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sampled (M,) int32, present (M,) bool): the clients :meth:`sample` draws from the
        round's ``key``, before the order by size (with Poisson participation an empty slot,
        ``present`` False, repeats some client); a function of the key alone: what the
        host-side client store gathers before the round (:mod:`jaxfl.data.host_store`)."""
        return self._draw(jax.random.split(key)[0])

    def sample(self, key: jax.Array, data: Federation, *client_trees) -> Picked:
        """Sample this round's clients and draw their faults from the round's ``key``.

        ``client_trees``: pytrees with a leading client axis (C, ...) (e.g. personal models)
        whose sampled rows lead the client arguments.
        """
        k_sample, k_clients = jax.random.split(key)
        sampled, present = self._draw(k_sample)
        m = sampled.shape[0]
        received, work = faults.round_faults(key, m, self.fault_config)
        received = received & present
        keys = jax.random.split(k_clients, m)
        if self.by_size:  # the same clients with the same keys and faults, smallest first
            sizes = data.client_count[sampled]
            if self.participation == "poisson":  # empty slots first, together
                sizes = jnp.where(present, sizes, -1)
            # dealt round-robin to the devices: each device's block spans every size
            order = deal_sorted(jnp.argsort(sizes, stable=True), client_devices())
            sampled, received, work, keys, present = (
                sampled[order],
                received[order],
                work[order],
                keys[order],
                present[order],
            )
        rows = tuple(gather(tree, sampled) for tree in client_trees)
        *rows, inputs = client_inputs(sampled, keys, work, data, self.adversary, *rows)
        if self.participation == "poisson":  # an empty slot trains on no examples: no steps
            inputs = inputs.replace(count=jnp.where(present, inputs.count, 0))
        return Picked(sampled, received, (*rows, inputs), present)

    def train(
        self,
        apply: Callable,
        data: Federation,
        params,
        optimizer: optax.GradientTransformation,
        batch_size: int,
        epochs: int,
        client: ClientInputs,
        penalty: Callable | None = None,
        batch_penalty: Callable | None = None,
    ) -> train.Trained:
        """One client's local training with its faults applied (label flipping for an
        adversary, a straggler's step budget ``client.work``); ``client`` is one client's
        :class:`jaxfl.core.algorithm.ClientInputs`. Returns :class:`jaxfl.core.train.Trained`."""
        label_map, max_steps = faults.local_training_faults(
            self.fault_config, data.num_classes, client, batch_size, epochs
        )
        return train.local_sgd(
            apply,
            data,
            params,
            client.key,
            client.idx_row,
            client.count,
            optimizer,
            batch_size,
            epochs,
            label_map=label_map,
            penalty=penalty,
            max_steps=max_steps,
            batch_penalty=batch_penalty,
            # uneven clients: only the client's own steps (the same result, less padding);
            # even ones: the plain scan over the capacity's steps, cheaper when nothing is padded
            dynamic_steps=self.by_size,
        )


def standard_clients(
    data: Federation,
    clients_per_round: int,
    *,
    fault_config: faults.FaultConfig | None = None,
    attacks: tuple[str, ...] = ("label_flip",),
    seed: int = 0,
    select_clients: Callable = sample_clients,
    population: int | None = None,
    participation: str = "fixed",
) -> StandardClients:
    """The standard clients of an algorithm bound to ``data``: checks ``fault_config`` against
    the ``attacks`` the algorithm supports and draws the adversarial set from ``seed``
    (:func:`jaxfl.mechanisms.faults.setup`); ``population`` defaults to every client. Cohorts
    are ordered by size and train only their own steps (``by_size``) when the clients are
    uneven (:func:`uneven`); on even clients that would cost a while loop and buy nothing.
    ``participation`` ``poisson`` draws each client with probability m / population into
    :func:`poisson_capacity` slots (``select_clients`` is then not used)."""
    population = data.num_clients if population is None else population
    if participation not in PARTICIPATIONS:
        raise ValueError(
            f"--participation {participation!r} is not allowed; allowed: "
            f"{', '.join(PARTICIPATIONS)}"
        )
    slots = clients_per_round
    if participation == "poisson":
        if select_clients is not sample_clients:
            raise ValueError(
                "--participation poisson draws every client independently; give make() "
                "either select_clients or Poisson participation, not both"
            )
        slots = poisson_capacity(population, clients_per_round / population)
    fault_config, adversary = faults.setup(
        fault_config, attacks, clients_per_round, data.num_clients, seed
    )
    return StandardClients(
        clients_per_round,
        population,
        fault_config,
        adversary,
        select_clients,
        # Poisson: sorted with only each client's own steps, so an empty slot costs nothing
        by_size=uneven(data) or participation == "poisson",
        participation=participation,
        slots=slots,
    )


OVERFLOW_BOUND = 1e-12  # per round: P(more clients drawn than the Poisson cohort's capacity)


def poisson_capacity(population: int, q: float, bound: float = OVERFLOW_BOUND) -> int:
    """M, the smallest capacity with P(Binomial(population + 1, q) > M) <= ``bound``.

    The Poisson cohort's size is Binomial(population, q); ``population + 1`` covers the
    neighbouring data set with one client more (add-or-remove adjacency), so the bound holds
    for both sides of the privacy analysis (:mod:`jaxfl.mechanisms.accounting`); so it is at
    most ``population + 1`` (q near 1 may leave a slot always empty)."""
    from scipy import stats

    capacity = max(0, int(stats.binom.isf(bound, population + 1, q)) - 1)
    while capacity <= population and stats.binom.sf(capacity, population + 1, q) > bound:
        capacity += 1  # isf is a float search: step to the exact smallest capacity
    return max(1, min(population + 1, capacity))


def poisson_cohort(key: jax.Array, population: int, q: float, capacity: int):
    """One round's Poisson cohort: each of ``population`` clients independently with
    probability ``q``, in ``capacity`` slots.

    Returns (sampled (capacity,) int32, present (capacity,) bool): the drawn clients in a
    random order, then padding (``present`` False, index of some client, to be masked). If more
    than ``capacity`` are drawn (probability <= :data:`OVERFLOW_BOUND` at
    :func:`poisson_capacity`), a uniformly random subset of ``capacity`` of them takes part:
    the truncated Poisson sampling that dp-accounting's ``TruncatedSubsampledGaussianDpEvent``
    describes.
    """
    k_draw, k_order = jax.random.split(key)
    drawn = jax.random.uniform(k_draw, (population,)) < q
    order = jax.random.permutation(k_order, population)
    (positions,) = jnp.nonzero(drawn[order], size=capacity, fill_value=0)
    present = jnp.arange(capacity) < jnp.sum(drawn)
    return order[positions].astype(jnp.int32), present


UNEVEN_BELOW = 0.9  # padded efficiency (mean size / capacity) under which cohorts are sorted


def uneven(data: Federation) -> bool:
    """Whether ``data``'s clients are uneven enough for sorted cohorts and per-client step
    counts to pay: their mean size is below :data:`UNEVEN_BELOW` of the padded capacity (the
    padded path's efficiency). Measured (CPU, MLP, 1000 clients): on equal sizes the while loop
    made a FedProx round 0.29 -> 0.37 s; on leaf_synthetic's heavy tail sorting made FedAvg's
    0.31 -> 0.13 s. Decided on the host from one experiment's data (:func:`jaxfl.core.hparams.
    concrete`): a sweep's experiments share it, as they share every structural choice."""
    concrete = hparams.concrete(data)
    sizes = np.asarray(jax.device_get(concrete.client_count), np.float64)
    capacity = concrete.client_idx.shape[1]
    return bool(sizes.size and sizes.mean() < UNEVEN_BELOW * capacity)


def padding_efficiency(
    sizes,
    clients_per_round: int,
    batch_size: int,
    capacity: int,
    *,
    chunk,
    devices: int = 1,
    by_size: bool = False,
    trials: int = 64,
    seed: int = 0,
) -> float:
    """Examples a round trains on / example slots it computes, expected over uniform cohorts.

    ``sizes`` (C,) are the clients' train examples. Without ``by_size`` every sampled client
    runs the steps of the padded ``capacity`` (ceil(capacity / B) per epoch): the efficiency
    is mean n_k / (ceil(capacity / B) B). With ``by_size`` (:class:`StandardClients`) the
    cohort is sorted by size and dealt over ``devices`` as the round deals it
    (:func:`jaxfl.core.cohort_chunks.deal_sorted`), each device's share in chunks: ``chunk``
    clients each (all of them when None), or the (width, count) runs of a schedule
    (:func:`jaxfl.core.cohort_chunks.size_schedule`); a chunk runs its longest client's steps:
    the slots are sum over chunks of (width x that client's ceil(n / B) x B). Epochs scale
    both sides alike and cancel."""
    sizes = np.asarray(sizes, dtype=np.int64)
    m, B = min(clients_per_round, len(sizes)), batch_size
    if not by_size:
        return float(sizes.mean() / (-(-capacity // B) * B))
    blocks, used = device_sorted_sizes(sizes, m, m, max(1, devices), trials, seed)
    per_device = blocks.shape[1]
    if isinstance(chunk, tuple) and schedule_clients(chunk) == per_device:
        widths = [w for w, n in chunk for _ in range(n)]
    else:  # uniform chunks, balanced as map_clients balances them
        if isinstance(chunk, tuple):
            chunk = max(w for w, _ in chunk)
        chunks = 1 if chunk is None else -(-per_device // min(chunk, per_device))
        widths = [-(-per_device // chunks)] * chunks
    steps = -(-blocks.astype(np.int64) // B)
    slots, end = 0, 0
    for w in widths:
        end = min(end + w, per_device)  # a padded last chunk's largest client: the block's last
        slots += w * steps[:, end - 1].sum() * B
    return float(used / max(slots, 1))
