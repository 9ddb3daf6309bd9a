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

    def client_update(shared, key, idx_row, count, work, is_adversary):
        data, params = shared
        trained = clients.train(model.apply, data, params, optimizer, batch_size, epochs,
                                key, idx_row, count, work, is_adversary)
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import optax
from flax import struct

from jaxfl.configs.shared import LocalTrainingFields as LocalTrainingFields
from jaxfl.configs.shared import ServerOptFields as ServerOptFields
from jaxfl.core import train
from jaxfl.core.algorithm import client_inputs, gather, sample_clients
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults


@struct.dataclass
class Picked:
    """This round's sampled clients.

    Attributes:
      sampled: (m,) int32 client indices.
      received: (m,) bool, whether each client's upload arrives (dropout faults).
      client_args: the per-client inputs of ``client_update``, each with a leading (m,) axis:
        ``(*rows, key, idx_row, count, work, is_adversary)`` (:func:`client_inputs`).
    """

    sampled: jax.Array
    received: jax.Array
    client_args: tuple


@dataclasses.dataclass(frozen=True)
class StandardClients:
    """Sampling, faults and local training of the clients of one bound algorithm.

    Attributes:
      clients_per_round: m.
      population: clients that may be sampled (the first ``population`` of C).
      fault_config: the faults (:mod:`jaxfl.mechanisms.faults`), defaults filled in.
      adversary: (C,) bool, the fixed adversarial clients.
      select_clients: ``(key, population, m) -> (m,) int32``.
    """

    clients_per_round: int
    population: int
    fault_config: faults.FaultConfig
    adversary: jax.Array
    select_clients: Callable

    def sample(self, key: jax.Array, data: Federation, *client_trees) -> Picked:
        """Sample this round's clients and draw their faults from the round's ``key``.

        ``client_trees``: pytrees with a leading client axis (C, ...) (e.g. personal models)
        whose sampled rows lead the client arguments.
        """
        m = self.clients_per_round
        k_sample, k_clients = jax.random.split(key)
        sampled = self.select_clients(k_sample, self.population, m)
        received, work = faults.round_faults(key, m, self.fault_config)
        rows = tuple(gather(tree, sampled) for tree in client_trees)
        keys = jax.random.split(k_clients, m)
        args = client_inputs(sampled, keys, work, data, self.adversary, *rows)
        return Picked(sampled, received, args)

    def train(
        self,
        apply: Callable,
        data: Federation,
        params,
        optimizer: optax.GradientTransformation,
        batch_size: int,
        epochs: int,
        key: jax.Array,
        idx_row: jax.Array,
        count: jax.Array,
        work: jax.Array,
        is_adversary: jax.Array,
        penalty: Callable | None = None,
        batch_penalty: Callable | None = None,
    ) -> train.Trained:
        """One client's local training with its faults applied (label flipping for an
        adversary, a straggler's step budget ``work``); the last five arguments are one row of
        ``Picked.client_args``. Returns :class:`jaxfl.core.train.Trained`."""
        label_map, max_steps = faults.local_training_faults(
            self.fault_config, data.num_classes, is_adversary, work, count, batch_size, epochs
        )
        return train.local_sgd(
            apply,
            data,
            params,
            key,
            idx_row,
            count,
            optimizer,
            batch_size,
            epochs,
            label_map=label_map,
            penalty=penalty,
            max_steps=max_steps,
            batch_penalty=batch_penalty,
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
) -> StandardClients:
    """The standard clients of an algorithm bound to ``data``: checks ``fault_config`` against
    the ``attacks`` the algorithm supports and draws the adversarial set from ``seed``
    (:func:`jaxfl.mechanisms.faults.setup`); ``population`` defaults to every client."""
    fault_config, adversary = faults.setup(
        fault_config, attacks, clients_per_round, data.num_clients, seed
    )
    return StandardClients(
        clients_per_round,
        data.num_clients if population is None else population,
        fault_config,
        adversary,
        select_clients,
    )
