"""The algorithm interface, after FedJAX's ``FederatedAlgorithm(init, apply)``.

An algorithm module defines its round in three pure pieces:

- ``prepare(state, key, data) -> (shared, client_args, ctx)``: sample clients, gather their state;
  ``client_args`` is a tuple of pytrees with a leading axis of the m sampled clients (usually
  the sampled clients' own state, then their :class:`ClientInputs`), ``shared`` is what every
  client sees (the data, the global model, ...).
- ``client_update(shared, *client_args_of_one_client) -> outputs``: ONE client's work, e.g.
  ``client_update(shared, client)`` reading ``client.key``, ``client.idx_row``, ...
- ``finish(state, ctx, outputs, data) -> (state, metrics)``: aggregate and scatter back. With
  ``RoundParts(server_state=...)``, the server's part of the state is kept as it was when
  ``metrics["applied"]`` is False (too few uploads arrived): the composition applies that guard.

:func:`make_algorithm` composes them into ONE jitted ``round(state, key)`` that vmaps
``client_update`` over the client axis (chunked when asked), and into ``round_loop``, the plain
per-client reference that calls the same ``client_update``, jitted for one client, in a Python
loop. Tests check the two agree; ``scripts/bench.py`` times both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxfl.core import hparams
from jaxfl.core.client_axis import (
    client_devices,
    current_mesh,
    map_clients,
    on_client_mesh,
    sum_clients,
    use_mesh,
)
from jaxfl.core.cohort_chunks import size_schedule
from jaxfl.data.federation import Federation


@dataclasses.dataclass(frozen=True)
class RoundParts:
    """The three pieces of a round (see the module docstring).

    ``grouped=True`` is for clients in model groups (:mod:`jaxfl.mechanisms.groups`):
    ``client_update`` is a tuple with one function per group, ``prepare`` returns a tuple of
    per-group argument tuples, and ``finish`` receives a tuple of per-group outputs. Each group is
    mapped over its own client axis; the loop over groups runs while the round is traced.
    """

    prepare: Callable
    client_update: Callable | tuple[Callable, ...]
    finish: Callable
    grouped: bool = False
    # an optional second client phase in the same round (FedMD: predict, then digest):
    # exchange(state, ctx, outputs, data) -> (shared, client_args, ctx) feeds client_update2,
    # whose outputs reach finish
    exchange: Callable | None = None
    client_update2: Callable | tuple[Callable, ...] | None = None
    # True: ``finish`` receives the SUM over clients of client_update's outputs, accumulated
    # chunk by chunk (jaxfl.core.client_axis.sum_clients), never all m outputs at once: FedAvg's
    # weighted mean with the weights folded into the client's output (one group, one phase)
    reduced: bool = False
    # the fields of the state the server's step writes, kept as they were when the round is
    # not applied (``finish`` reports ``metrics["applied"]``, () bool: False when fewer than
    # --min-received uploads arrived): FedAvg's ("params", "opt_state", "upload_state"), DS-FL's
    # soft labels and server model; what the clients did locally (their own models) is not
    # among them. The round composition applies the guard (:func:`keep_unless_applied`), so an
    # algorithm's finish computes its step as if applied and never selects
    server_state: tuple[str, ...] = ()


def keep_unless_applied(server_state: tuple[str, ...], finish: Callable) -> Callable:
    """``finish`` with the received/applied guard: where ``metrics["applied"]`` is False, the
    fields ``server_state`` of the new state are the old state's (``jnp.where``, exact)."""
    if not server_state:
        return finish

    def guarded(state, ctx, outputs, data):
        new_state, metrics = finish(state, ctx, outputs, data)
        applied = metrics["applied"]
        kept = {
            name: jax.tree.map(
                lambda new, old: jnp.where(applied, new, old),
                getattr(new_state, name),
                getattr(state, name),
            )
            for name in server_state
        }
        return new_state.replace(**kept), metrics

    return guarded


@dataclasses.dataclass(frozen=True)
class FederatedAlgorithm:
    """A federated algorithm bound to one Federation.

    Attributes:
      name: algorithm name.
      init: ``key -> state``.
      round: jitted ``(state, key) -> (state, metrics)``; one FL round, one compiled function.
        ``round``, ``run_rounds`` and ``round_loop`` take an optional ``data=`` Federation of
        the bound one's shapes instead of it (the host-side store's cohort views).
      evaluate: jitted ``state -> metrics`` (``test_acc``, ``client_acc`` (C,) per client, ...).
      evaluate_fn: the pure, unjitted ``(state, data) -> metrics``.
      round_fn: the pure, unjitted ``(state, key, data) -> (state, metrics)`` to wrap in your own
        ``jit``/``lax.scan``.
      run_rounds: ``(state, round_key, first, num_rounds) -> (state, metrics)``: rounds
        ``first .. first + num_rounds - 1`` in one compiled call (round r's key is
        ``fold_in(round_key, r)``), metrics stacked on a leading (num_rounds,) axis. It DONATES
        ``state``: its buffers are reused for the result, so do not read ``state`` afterwards.
      round_loop: the per-client Python-loop reference of ``round`` (same math, for tests/bench).
      parts: the ``prepare``/``client_update``/``finish`` pieces.
      communication: bytes uploaded/downloaded per participating client per round (empty when
        the algorithm did not state them).
      clients_per_round: m, the static number of sampled clients.
      data: the bound Federation.
      cohort_by_size: whether each round's cohort is ordered by client size and local training
        runs only each client's own steps (:class:`jaxfl.mechanisms.client_round.
        StandardClients`), so a chunk of clients costs its longest client's steps, not the
        padded capacity's (what the run's padding efficiency is computed from).
      participants_per_round: the clients a round involves, for the traffic totals: m, or
        with Poisson participation the expected cohort q C (``clients_per_round`` is then the
        cohort's padded capacity).
      client_chunk: how a device's clients are chunked: None (one vmap), a width, or with
        ``cohort_by_size`` a schedule of (width, count) runs, narrower where the sorted
        cohort's sizes grow (:func:`jaxfl.core.cohort_chunks.size_schedule`).
      cohort: ``key -> (sampled (M,) int32, present (M,) bool)``, the clients a round with
        that key samples, for an algorithm whose cohort depends on the round's key alone (None
        otherwise): the host-side client store (:mod:`jaxfl.data.host_store`) gathers their
        examples before the round.
    """

    name: str
    init: Callable[[jax.Array], Any]
    round: Callable
    evaluate: Callable
    evaluate_fn: Callable
    round_fn: Callable
    run_rounds: Callable
    round_loop: Callable
    parts: RoundParts
    communication: dict
    clients_per_round: int
    data: Federation
    cohort_by_size: bool = False
    participants_per_round: float | None = None
    client_chunk: int | tuple | None = None
    cohort: Callable | None = None

    def __post_init__(self):
        if self.participants_per_round is None:
            object.__setattr__(self, "participants_per_round", self.clients_per_round)


def communication(
    up_floats: float, down_floats: float, *, extra_up_bytes: int = 0, extra_down_bytes: int = 0
) -> dict:
    """Per participating client and round: floats (float32, 4 bytes each) up and down, plus
    ``extra_*_bytes`` of other payload (indices, flags)."""
    return {
        "up_floats": up_floats,
        "down_floats": down_floats,
        "up_bytes": 4 * up_floats + extra_up_bytes,
        "down_bytes": 4 * down_floats + extra_down_bytes,
    }


def traffic_totals(comm: dict, clients_per_round: int, rounds: int) -> dict:
    """Cumulative bytes after ``rounds`` rounds, every sampled client counted every round
    (``comm``: :func:`communication`'s dict; empty when an algorithm states none)."""
    if not comm:
        return {}
    clients = rounds * clients_per_round
    return {
        "comm_up_bytes_total": clients * comm["up_bytes"],
        "comm_down_bytes_total": clients * comm["down_bytes"],
    }


def sample_clients(key: jax.Array, num_clients: int, m: int) -> jax.Array:
    """m distinct client indices, uniform without replacement (static shape (m,))."""
    return jax.random.permutation(key, num_clients)[:m].astype(jnp.int32)


@struct.dataclass
class ClientInputs:
    """What one sampled client brings to its update, named (stacked over the cohort: every
    field gains a leading (m,) axis, and :func:`jaxfl.core.client_axis.map_clients` maps it
    like any pytree).

    Attributes:
      key: the client's PRNG key for this round (``fold_in`` of the round key, then split).
      idx_row: (n_max,) int32, the client's indices into ``data.train_x`` (padded past
        ``count``).
      count: () int32, the client's number of training examples (0 for an empty slot of a
        Poisson cohort).
      work: () float32, the fraction of its local steps the client does this round (1.0; less
        for a straggler, :mod:`jaxfl.mechanisms.faults`).
      is_adversary: () bool, whether the client is one of the fixed adversarial clients.
    """

    key: jax.Array
    idx_row: jax.Array
    count: jax.Array
    work: jax.Array
    is_adversary: jax.Array


def client_inputs(sampled, keys, work, data, adversary, *rows) -> tuple:
    """The usual client-axis arguments of a client update: ``(*rows, ClientInputs)`` for the
    sampled clients.

    Args:
      sampled: (m,) client indices; keys: (m,) per-client PRNG keys; work: (m,) fault work.
      data: the Federation; adversary: (C,) bool.
      *rows: leading client-axis values (e.g. the sampled clients' gathered parameters).
    """
    inputs = ClientInputs(
        key=keys,
        idx_row=data.client_idx[sampled],
        count=data.client_count[sampled],
        work=work,
        is_adversary=adversary[sampled],
    )
    return (*rows, inputs)


def gather(tree, idx: jax.Array):
    """Rows ``idx`` (m,) of every leaf of a client-axis pytree."""
    return jax.tree.map(lambda x: x[idx], tree)


def scatter(tree, idx: jax.Array, rows):
    """Write ``rows`` (leaves (m, ...)) back at client indices ``idx``."""
    return jax.tree.map(lambda x, r: x.at[idx].set(r), tree, rows)


def scatter_kept(tree, idx: jax.Array, rows, keep: jax.Array):
    """``tree`` with rows ``idx`` (m,) replaced by ``rows`` only where ``keep`` (m,) bool
    holds (a client whose upload did not arrive keeps its old state)."""
    old = gather(tree, idx)
    kept = jax.tree.map(
        lambda new, prev: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, prev),
        rows,
        old,
    )
    return scatter(tree, idx, kept)


def loop_clients(fn: Callable, shared, *client_args):
    """Reference for :func:`jaxfl.core.client_axis.map_clients`: a Python loop of one-client calls.

    ``fn`` is jitted for one client (once per distinct ``fn``) and called per client; the outputs
    are stacked on a new leading axis.
    """
    jitted = _jit_cache.setdefault(fn, jax.jit(fn))
    m = jax.tree.leaves(client_args)[0].shape[0]
    outs = [
        jitted(shared, *(jax.tree.map(lambda x, i=i: x[i], a) for a in client_args))
        for i in range(m)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


_jit_cache: dict = {}


def _traced_on_mesh(fn: Callable) -> Callable:
    """``fn`` with a static ``mesh`` keyword under which it is traced (:func:`use_mesh`): the
    mesh is part of the jit cache key, so a round compiled for one mesh is never reused for
    another."""

    def traced(*args, mesh=None, **kwargs):
        with use_mesh(mesh):
            return fn(*args, **kwargs)

    return traced


def infer_clients_per_round(parts: RoundParts, init: Callable, data: Federation) -> int:
    """m, read from the leading axis of the client arguments ``parts.prepare`` returns (summed
    over groups), by tracing ``init`` and ``prepare`` abstractly (nothing is computed)."""
    key = jax.random.key(0)
    state = jax.eval_shape(init, key)
    _, client_args, _ = jax.eval_shape(parts.prepare, state, key, data)
    per_group = client_args if parts.grouped else (client_args,)
    return sum(jax.tree.leaves(args)[0].shape[0] for args in per_group)


def make_algorithm(
    name: str,
    parts: RoundParts,
    init: Callable,
    evaluate_fn: Callable,
    data: Federation,
    *,
    clients_per_round: int | None = None,
    client_chunk: int | None = None,
    communication: dict | None = None,
    cohort_by_size: bool = False,
    participants_per_round: float | None = None,
    cohort: Callable | None = None,
) -> FederatedAlgorithm:
    """Compose round pieces into the jitted round, its loop reference and the evaluator.

    Only the pieces are needed: ``clients_per_round`` (m) is read from what ``prepare`` returns
    when not given (:func:`infer_clients_per_round`), ``client_chunk`` None vmaps all of a
    device's clients at once (:func:`jaxfl.core.client_axis.map_clients`), and
    ``communication`` (:func:`communication`) is reported only when given: what crosses the
    network is the algorithm's to say. With ``cohort_by_size`` (a cohort sorted by size whose
    clients run only their own steps) ``client_chunk`` becomes the widest chunk of a schedule
    that narrows as sizes grow (:func:`jaxfl.core.cohort_chunks.size_schedule`), planned from
    ``data.client_count`` for the current mesh: heavy-tailed federations then compute about
    the examples they train on instead of padding a chunk to its largest client.
    """
    if clients_per_round is None:
        clients_per_round = infer_clients_per_round(parts, init, data)
    if cohort_by_size and not isinstance(client_chunk, tuple):  # chunks narrow as sizes grow
        client_chunk = size_schedule(  # a sweep plans from its first experiment's data
            np.asarray(jax.device_get(hparams.concrete(data).client_count)),
            clients_per_round,
            participants_per_round,
            client_chunk,
            client_devices(),
        )

    def per_group_updates(update):
        return update if parts.grouped else (update,)

    def map_groups(mapper, shared, client_args, update=parts.client_update):
        updates = per_group_updates(update)
        per_group = client_args if parts.grouped else (client_args,)
        outputs = tuple(
            mapper(update, shared, args) for update, args in zip(updates, per_group, strict=True)
        )
        return outputs if parts.grouped else outputs[0]

    finish = keep_unless_applied(parts.server_state, parts.finish)
    if parts.reduced and (parts.grouped or parts.exchange is not None):
        raise ValueError("RoundParts(reduced=True) supports one group and one client phase")
    mapper = sum_clients if parts.reduced else map_clients

    @on_client_mesh
    def round_fn(state, key, data, chunk_size=client_chunk):
        def vmapped(update, shared, args):
            return mapper(lambda *a: update(shared, *a), *args, chunk_size=chunk_size)

        shared, client_args, ctx = parts.prepare(state, key, data)
        outputs = map_groups(vmapped, shared, client_args)
        if parts.exchange is not None:
            shared, client_args, ctx = parts.exchange(state, ctx, outputs, data)
            outputs = map_groups(vmapped, shared, client_args, parts.client_update2)
        return finish(state, ctx, outputs, data)

    jitted_round = jax.jit(_traced_on_mesh(round_fn), static_argnames=("chunk_size", "mesh"))

    def one_round(state, round_key, r, data):
        state, metrics = round_fn(state, jax.random.fold_in(round_key, r), data)
        return state, jax.tree.map(lambda x: x[None], metrics)

    def scanned_rounds(state, round_key, first, data, num_rounds):
        rounds = first + jnp.arange(num_rounds)
        return jax.lax.scan(
            lambda s, r: round_fn(s, jax.random.fold_in(round_key, r), data), state, rounds
        )

    donated_round = jax.jit(_traced_on_mesh(one_round), static_argnames="mesh", donate_argnums=0)
    donated_scan = jax.jit(
        _traced_on_mesh(on_client_mesh(scanned_rounds)),
        static_argnames=("num_rounds", "mesh"),
        donate_argnums=0,
    )

    bound = data

    def run_rounds(state, round_key, first, num_rounds=1, data=None):
        mesh, data = current_mesh(), bound if data is None else data
        if num_rounds == 1:  # the same compiled round as ``round``, without a scan around it
            return donated_round(state, round_key, first, data, mesh=mesh)
        return donated_scan(state, round_key, first, data, num_rounds=num_rounds, mesh=mesh)

    jitted_prepare = jax.jit(parts.prepare)
    jitted_finish = jax.jit(finish)
    jitted_exchange = jax.jit(parts.exchange) if parts.exchange is not None else None
    jitted_eval = jax.jit(_traced_on_mesh(on_client_mesh(evaluate_fn)), static_argnames="mesh")

    def round_loop(state, key, data=None):
        data = bound if data is None else data
        shared, client_args, ctx = jitted_prepare(state, key, data)

        def looped(update, shared, args):
            outputs = loop_clients(update, shared, *args)
            return jax.tree.map(lambda x: x.sum(0), outputs) if parts.reduced else outputs

        outputs = map_groups(looped, shared, client_args)
        if jitted_exchange is not None:
            shared, client_args, ctx = jitted_exchange(state, ctx, outputs, data)
            outputs = map_groups(looped, shared, client_args, parts.client_update2)
        return jitted_finish(state, ctx, outputs, data)

    return FederatedAlgorithm(
        name=name,
        init=init,
        round=lambda state, key, data=None: jitted_round(
            state, key, bound if data is None else data, mesh=current_mesh()
        ),
        evaluate=lambda state: jitted_eval(state, bound, mesh=current_mesh()),
        evaluate_fn=on_client_mesh(evaluate_fn),
        round_fn=round_fn,
        run_rounds=run_rounds,
        round_loop=round_loop,
        parts=parts,
        communication=communication or {},
        clients_per_round=clients_per_round,
        data=data,
        cohort_by_size=cohort_by_size,
        participants_per_round=participants_per_round,
        client_chunk=client_chunk,
        cohort=cohort,
    )
