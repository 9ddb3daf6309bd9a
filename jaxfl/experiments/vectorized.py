"""One algorithm's experiments compiled together: :class:`CompiledSweep`.

The algorithm is bound (``module.make``) *inside* the traced function with each experiment's
traced values (:class:`jaxfl.experiments.axis.Lanes`), vmapped over the experiments in chunks (a
``lax.map`` over chunks of ``experiment_chunk``, as clients are) and split over devices with
``shard_map`` on a 1-D mesh named ``"experiments"`` (each device runs its own block of
experiments; the shared data is replicated). :mod:`jaxfl.experiments.axis` says what varies per
experiment and how federations are stacked; :mod:`jaxfl.experiments.sweep_runner` runs the host
loop, metrics and reports over it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfl.core import client_axis, hparams
from jaxfl.data.federation import Federation
from jaxfl.experiments.axis import (
    EXPERIMENT_AXIS,
    GridPoint,
    Lanes,
    SweepError,
    lane_axes,
    make_lanes,
    static_groups,
    sweepable,
)
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.faults import FaultConfig


@contextlib.contextmanager
def _in_flight(width: int):
    """Trace with ``width`` experiments vmapped side by side (layers see it through
    :func:`jaxfl.core.client_axis.clients_in_flight`)."""
    token = client_axis.experiments_in_flight.set(width)
    try:
        yield
    finally:
        client_axis.experiments_in_flight.reset(token)


class CompiledSweep:
    """One algorithm's experiments of one static group, compiled together.

    Args:
      module: the algorithm module (``algorithms.X``).
      config: its config with the unswept values (swept fields are replaced per experiment).
      fault_config: likewise for the faults.
      model: the Model (or model groups) every experiment trains.
      experiments: the group's experiments.
      feds: {seed: Federation} for every seed among them.
      extras: {seed: {name: array}} further ``make`` arguments per seed.
      devices: split the experiments over this many devices (1: one device).
      experiment_chunk: experiments vmapped at once per device (None: all of a device's).
    """

    def __init__(
        self,
        module,
        config,
        fault_config: FaultConfig,
        model,
        experiments: Sequence[GridPoint],
        feds: dict[int, Federation],
        extras: dict[int, dict] | None = None,
        devices: int = 1,
        experiment_chunk: int | None = None,
    ):
        self.module, self.config, self.fault_config = module, config, fault_config
        self.model, self.feds, self.extras = model, feds, extras or {}
        self.experiments = list(experiments)
        traced, self.static_fields = sweepable(module)
        self.swept = {n: traced[n] for n in self.experiments[0].hparams if n in traced}
        self.static_values = {
            n: v for n, v in self.experiments[0].hparams.items() if n not in self.swept
        }
        self.static_seed = (
            self.experiments[0].seed if getattr(module, "STATIC_SEED", False) else None
        )
        if len(static_groups(self.experiments, module)) > 1:
            raise SweepError(
                "these experiments differ in a value that fixes the compiled program; split them "
                "with jaxfl.experiments.axis.static_groups"
            )
        self.num = len(self.experiments)
        self.devices = max(1, min(devices, self.num))
        self.per_device = math.ceil(self.num / self.devices)
        if experiment_chunk is not None and experiment_chunk < 1:
            raise SweepError(f"--experiment-chunk must be >= 1, got {experiment_chunk}")
        self.chunk = experiment_chunk
        # every experiment bound with its concrete values: checks them before anything compiles
        self.algorithms = [self.bind_concrete(e) for e in self.experiments]
        padded = self.experiments + [self.experiments[0]] * (
            self.devices * self.per_device - self.num
        )  # copies of experiment 0 fill the last device, dropped again
        self.lanes, self.stacked = make_lanes(padded, feds, fault_config, self.extras)
        self.axes = lane_axes(self.lanes, self.stacked)
        self.mesh = None
        if self.devices > 1:
            self.mesh = Mesh(jax.devices()[: self.devices], (EXPERIMENT_AXIS,))
            self.lanes = jax.device_put(self.lanes, self._shardings())
        self._init = jax.jit(self._mapped(self._init_one, state_in=False))
        self._rounds = jax.jit(
            self._mapped(self._rounds_one), static_argnames="num_rounds", donate_argnums=0
        )
        self._evaluate = jax.jit(self._mapped(self._evaluate_one))

    # -- one experiment -------------------------------------------------------------------
    def config_of(self, experiment) -> tuple:
        """(algorithm config, FaultConfig) of one of this group's experiments, concrete."""
        return self._config_for(experiment.hparams)

    def _config_for(self, values: dict):
        def pick(kind):
            static = {n: v for n, v in self.static_values.items() if self.static_fields[n] == kind}
            traced = {n: values[n] for n, k in self.swept.items() if k == kind}
            return {**static, **traced}

        return (
            dataclasses.replace(self.config, **pick("config")),
            dataclasses.replace(self.fault_config, **pick("faults")),
        )

    def bind(self, lane: Lanes):
        """The algorithm bound for one experiment inside the trace (``lane``'s values are
        traced: seed, swept hyperparameters, data views, adversary set)."""
        config, fault_config = self._config_for(lane.hparams)
        seed = lane.seed if self.static_seed is None else self.static_seed
        concrete = self.feds[self.experiments[0].seed]
        with faults.use_adversaries(lane.adversary), hparams.concrete_data(concrete):
            return self.module.make(
                config, lane.data, self.model, fault_config=fault_config, seed=seed, **lane.extra
            )

    def bind_concrete(self, experiment: GridPoint):
        """``experiment``'s algorithm bound with concrete values, as a single run binds it
        (raises the algorithm's own ValueError, naming the flag, for a value it refuses)."""
        config, fault_config = self._config_for(experiment.hparams)
        return self.module.make(
            config,
            self.feds[experiment.seed],
            self.model,
            fault_config=fault_config,
            seed=experiment.seed,
            **self.extras.get(experiment.seed, {}),
        )

    def _init_one(self, lane: Lanes):
        return self.bind(lane).init(lane.init_key)

    def _rounds_one(self, state, lane: Lanes, first, num_rounds: int):
        algo = self.bind(lane)

        def one(s, r):
            return algo.round_fn(s, jax.random.fold_in(lane.round_key, r), lane.data)

        return jax.lax.scan(one, state, first + jnp.arange(num_rounds))

    def _evaluate_one(self, state, lane: Lanes):
        return self.bind(lane).evaluate_fn(state, lane.data)

    # -- every experiment -----------------------------------------------------------------
    def _mapped(self, fn, state_in: bool = True):
        """``fn(state, lane, *rest, **static)`` (``fn(lane)`` without a state) over every
        experiment: vmapped in chunks on each device (``rest`` is shared by all), the devices'
        blocks under ``shard_map``."""
        axes = self.axes

        def on_device(*args, **static):
            n = args[1 if state_in else 0].seed.shape[0]
            chunk = min(self.chunk or n, n)
            in_axes = ((0,) if state_in else ()) + (axes,) + (None,) * (len(args) - 1 - state_in)
            with _in_flight(chunk):
                return _chunked(lambda *a: fn(*a, **static), args, in_axes, n, chunk)

        if self.mesh is None:
            return on_device

        def sharded(*args, **static):
            lane_spec = jax.tree.map(
                lambda a: PartitionSpec() if a is None else PartitionSpec(EXPERIMENT_AXIS),
                axes,
                is_leaf=lambda a: a is None,
            )
            state_spec = (PartitionSpec(EXPERIMENT_AXIS),) if state_in else ()
            rest = (PartitionSpec(),) * (len(args) - 1 - state_in)
            return jax.shard_map(
                lambda *a: on_device(*a, **static),
                mesh=self.mesh,
                in_specs=(*state_spec, lane_spec, *rest),
                out_specs=PartitionSpec(EXPERIMENT_AXIS),
                check_vma=False,
            )(*args)

        return sharded

    def _shardings(self):
        return jax.tree.map(
            lambda a: NamedSharding(
                self.mesh, PartitionSpec() if a is None else PartitionSpec(EXPERIMENT_AXIS)
            ),
            self.axes,
            is_leaf=lambda a: a is None,
        )

    def round_memory(self, chunk: int):
        """XLA's memory analysis (per device) of one round of this sweep compiled with
        ``chunk`` experiments vmapped at once; compiled only, nothing runs (cached per chunk)."""
        cache = self.__dict__.setdefault("_memory", {})
        if chunk not in cache:
            saved, self.chunk = self.chunk, chunk  # read when the round is traced
            try:
                rounds = jax.jit(
                    self._mapped(self._rounds_one), static_argnames="num_rounds", donate_argnums=0
                )
                state = jax.eval_shape(self._init, self.lanes)
                lowered = rounds.lower(state, self.lanes, jnp.int32(1), num_rounds=1)
                cache[chunk] = lowered.compile().memory_analysis()
            finally:
                self.chunk = saved
        return cache[chunk]

    def init(self):
        """The stacked initial state of every experiment (leading axis: the padded count)."""
        return self._init(self.lanes)

    def run_rounds(self, state, first: int, num_rounds: int):
        """Rounds ``first .. first + num_rounds - 1`` of every experiment in one compiled call;
        returns (state, metrics {name: (S_padded, num_rounds)}). Donates ``state``."""
        return self._rounds(state, self.lanes, jnp.int32(first), num_rounds=num_rounds)

    def evaluate(self, state):
        """Every experiment's evaluation metrics, each with a leading axis of experiments."""
        return self._evaluate(state, self.lanes)


def _chunked(fn, args, in_axes, n: int, chunk: int):
    """``jax.vmap(fn, in_axes)(*args)`` over n experiments, in a ``lax.map`` over chunks of
    ``chunk`` experiments (the last padded with copies of the first, dropped again)."""
    vmapped = jax.vmap(fn, in_axes=in_axes)
    if chunk >= n:
        return vmapped(*args)
    num_chunks = math.ceil(n / chunk)
    pad = num_chunks * chunk - n
    leaves, treedef = jax.tree.flatten(args)
    leaf_axes = _leaf_axes(in_axes, args)

    def split(x):
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))]) if pad else x
        return x.reshape(num_chunks, chunk, *x.shape[1:])

    mapped = [x if a is None else split(x) for x, a in zip(leaves, leaf_axes, strict=True)]

    def one_chunk(chunk_leaves):
        it = iter(chunk_leaves)
        rebuilt = [x if a is None else next(it) for x, a in zip(mapped, leaf_axes, strict=True)]
        return vmapped(*jax.tree.unflatten(treedef, rebuilt))

    per_chunk = [x for x, a in zip(mapped, leaf_axes, strict=True) if a is not None]
    out = jax.lax.map(one_chunk, per_chunk)
    return jax.tree.map(lambda x: x.reshape(num_chunks * chunk, *x.shape[2:])[:n], out)


def _leaf_axes(in_axes, args) -> list:
    """One vmap axis (0 or None) per leaf of ``args``, from ``in_axes`` (per argument: an int,
    None, or a tree of them shaped like the argument)."""
    out = []
    for axes, arg in zip(in_axes, args, strict=True):
        count = len(jax.tree.leaves(arg))
        if axes is None or isinstance(axes, int):
            out += [axes] * count
        else:
            per_leaf = jax.tree.leaves(axes, is_leaf=lambda v: v is None)
            assert len(per_leaf) == count, "in_axes must match the argument leaf for leaf"
            out += per_leaf
    return out
