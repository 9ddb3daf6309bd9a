"""Many experiments in one compiled call: seeds and hyperparameter grids on a vmap axis.

A researcher's unit of work is S experiments (seeds x a grid of hyperparameters), reported as a
mean and a spread. Here they run side by side: every per-experiment value gets a leading axis
of S, and one jitted function runs a round (or a block of rounds) of all of them.

- **What varies per experiment** (:class:`Lanes`): the seed (the model's initialisation, every
  round's key, the data partition, the public split, the adversary set), the swept float
  hyperparameters, and the data views of its seed: each seed's Federation is built as a single
  run builds it, then the arrays that differ between seeds (index views, the public set; the
  data itself for generated data sets) are padded to a common shape and stacked, while the
  arrays every seed shares (the data set) stay on the device once, unstacked.
- **How the algorithm sees it**: the algorithm is bound (``module.make``) *inside* the traced
  function, with the swept config fields replaced by that experiment's traced values
  (:mod:`jaxfl.hparams`), so ``jax.vmap`` over experiments needs no change to any algorithm:
  optimizers, temperatures and penalties are built from traced values when the round is traced.
  Values that fix shapes or the program (epochs, batch sizes, the model, an algorithm's
  ``STATIC_HPARAMS``) cannot vary inside one compiled call: :func:`static_groups` splits a
  sweep of them into one compiled group per value.
- **Layout**: experiments are vmapped in chunks of ``experiment_chunk`` (a ``lax.map`` over
  chunks, as clients are), and split over devices with ``shard_map`` on a 1-D mesh named
  ``"experiments"`` (each device runs its own block of experiments; the shared data is
  replicated). One experiment per call uses the client mesh instead (:mod:`jaxfl.clients`).

Experiment i of a sweep computes what ``scripts/run.py --seed s_i`` with its hyperparameters
computes, up to float summation order (tests/test_experiments.py holds them together).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfl import clients, faults, hparams
from jaxfl.data.federation import Federation
from jaxfl.faults import FaultConfig

EXPERIMENT_AXIS = "experiments"


class SweepError(ValueError):
    """A --seeds/--sweep value that cannot run; the message names the flag."""


def parse_seeds(text: str | None, default_seed: int = 0) -> tuple[int, ...]:
    """``--seeds``: "5" -> seeds 0..4 (from ``default_seed``), "0,3,7" -> those seeds."""
    if text is None:
        return (default_seed,)
    text = str(text).strip()
    try:
        if "," in text:
            seeds = tuple(int(v) for v in text.split(",") if v.strip())
        else:
            n = int(text)
            if n < 1:
                raise SweepError(
                    f"--seeds {text}: at least one seed is needed; give a count >= 1 (e.g. 5) "
                    "or a list (e.g. 0,3,7)"
                )
            seeds = tuple(range(default_seed, default_seed + n))
    except ValueError as err:
        if isinstance(err, SweepError):
            raise
        raise SweepError(
            f"--seeds {text!r}: give a count (5) or a list of integers (0,3,7)"
        ) from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r}: give distinct seeds, at least one")
    return seeds


def sweepable(module) -> tuple[dict[str, str], dict[str, str]]:
    """({name: 'config'|'faults'} traced in one compiled call, {name: ...} that fix shapes)
    for algorithm ``module``."""
    static_config = getattr(module, "STATIC_HPARAMS", ())
    traced = dict.fromkeys(hparams.traced_fields(module.CONFIG, static_config), "config")
    traced.update(dict.fromkeys(hparams.traced_fields(FaultConfig, hparams.FAULT_STATIC), "faults"))
    static = dict.fromkeys(static_config, "config")
    static.update(dict.fromkeys(hparams.FAULT_STATIC, "faults"))
    return traced, static


def parse_sweep(items: Sequence[str] | None, module, algo: str) -> dict[str, tuple[float, ...]]:
    """``--sweep NAME=v1,v2,...`` (repeatable) -> {field name: values}, checked against what
    ``module`` can sweep: a float flag (in one compiled call, or per value when it fixes a
    shape); integer and choice flags fix the program's shapes and are refused."""
    traced, static = sweepable(module)
    grid: dict[str, tuple[float, ...]] = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        field = name.strip().lstrip("-").replace("-", "_")
        flag = "--" + field.replace("_", "-")
        if not sep or not field:
            raise SweepError(f"--sweep {item!r}: write NAME=v1,v2,... (e.g. --sweep lr=0.01,0.1)")
        if field not in traced and field not in static:
            all_fields = {f.name for f in dataclasses.fields(module.CONFIG)}
            all_fields |= {f.name for f in dataclasses.fields(FaultConfig)}
            why = (
                "it fixes array shapes or the compiled program (run one command per value)"
                if field in all_fields
                else f"--algo {algo} has no such hyperparameter"
            )
            allowed = ", ".join(sorted(n.replace("_", "-") for n in {**traced, **static}))
            raise SweepError(f"--sweep {flag}: not sweepable: {why}; allowed: {allowed}")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError as err:
            raise SweepError(f"--sweep {item!r}: the values must be numbers") from err
        if not parsed:
            raise SweepError(f"--sweep {flag}: give at least one value ({flag}=v1,v2,...)")
        if field in grid:
            raise SweepError(f"--sweep {flag} is given twice; give all its values once")
        grid[field] = parsed
    return grid


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of a sweep: its index, seed and swept hyperparameter values."""

    index: int
    seed: int
    hparams: dict[str, float]

    def label(self) -> str:
        """The experiment's setting without its seed, e.g. ``lr=0.1 temperature=0.5``."""
        return " ".join(f"{k}={v:g}" for k, v in self.hparams.items()) or "default"


def grid(seeds: Sequence[int], sweep: dict[str, tuple[float, ...]]) -> list[Experiment]:
    """Every combination of the swept values, each with every seed (settings major, seeds
    minor)."""
    names = list(sweep)
    combos = list(itertools.product(*(sweep[n] for n in names))) or [()]
    return [
        Experiment(i, seed, dict(zip(names, combo, strict=True)))
        for i, (combo, seed) in enumerate(itertools.product(combos, seeds))
    ]


def static_groups(experiments: list[Experiment], module) -> list[list[Experiment]]:
    """Experiments that can share one compiled call: equal values of every swept field that
    fixes a shape (``STATIC_HPARAMS``, the fault fractions), and for an algorithm whose bound
    form depends on the seed itself (``STATIC_SEED``), equal seeds."""
    _, static = sweepable(module)
    groups: dict[tuple, list[Experiment]] = {}
    for e in experiments:
        key = tuple((k, v) for k, v in e.hparams.items() if k in static)
        if getattr(module, "STATIC_SEED", False):
            key += (("seed", e.seed),)
        groups.setdefault(key, []).append(e)
    return list(groups.values())


@struct.dataclass
class Lanes:
    """Per-experiment inputs, each with a leading axis of S experiments (``data``'s arrays that
    every seed shares have none; :func:`lane_axes` says which).

    Attributes:
      seed: (S,) int32 seeds; init_key, round_key: (S,) PRNG keys, split from each seed as a
        single run splits them.
      hparams: {name: (S,) float32} swept values.
      data: the stacked Federation.
      adversary: (S, C) bool, each experiment's adversary set (drawn from its seed).
      extra: {name: (S, ...)} per-experiment arguments of ``module.make`` (IncFL's local-only
        losses).
    """

    seed: jax.Array
    init_key: jax.Array
    round_key: jax.Array
    hparams: dict
    data: Federation
    adversary: jax.Array
    extra: dict


def _pad_to(x: np.ndarray, shape: tuple[int, ...], value=0) -> np.ndarray:
    pads = [(0, t - s) for s, t in zip(x.shape, shape, strict=True)]
    return np.pad(x, pads, constant_values=value)


# labels of padding rows: -1 is no class, so a padded test row never counts (train.accuracy)
PAD_VALUES = {"test_y": -1, "public_y": -1}


def stack_federations(feds: Sequence[Federation], rows: Sequence[int]) -> tuple[Federation, dict]:
    """One Federation whose arrays that differ between ``feds`` are padded (with zeros: index
    0, count unchanged, so padding is never read; test labels with -1, which
    :func:`jaxfl.train.accuracy` skips) to a common shape and stacked in ``rows``
    order (``rows[i]``: the federation of experiment i); arrays equal in every federation stay
    unstacked. Returns (federation, {field: True if stacked})."""
    stacked, values = {}, {}
    for field in (f.name for f in dataclasses.fields(Federation) if f.name != "num_classes"):
        arrays = [getattr(fed, field) for fed in feds]
        first = np.asarray(arrays[0])
        same = all(
            a is arrays[0] or (a.shape == first.shape and np.array_equal(np.asarray(a), first))
            for a in arrays[1:]
        )
        stacked[field] = not same
        if same:
            values[field] = arrays[0]
        else:
            host = [np.asarray(a) for a in arrays]
            shape = tuple(max(s) for s in zip(*(a.shape for a in host), strict=True))
            padded = [_pad_to(a, shape, PAD_VALUES.get(field, 0)) for a in host]
            values[field] = jnp.asarray(np.stack([padded[r] for r in rows]))
    return Federation(**values, num_classes=feds[0].num_classes), stacked


def lane_axes(lanes: Lanes, stacked: dict) -> Lanes:
    """``in_axes`` of :class:`Lanes` for ``jax.vmap``: 0 everywhere but the shared data."""
    data_axes = dataclasses.replace(
        lanes.data, **{f: (0 if s else None) for f, s in stacked.items()}
    )
    return Lanes(
        seed=0,
        init_key=0,
        round_key=0,
        hparams=jax.tree.map(lambda _: 0, lanes.hparams),
        data=data_axes,
        adversary=0,
        extra=jax.tree.map(lambda _: 0, lanes.extra),
    )


def make_lanes(
    experiments: Sequence[Experiment],
    feds: dict[int, Federation],
    fault_config: FaultConfig,
    extras: dict[int, dict] | None = None,
) -> tuple[Lanes, dict]:
    """The stacked :class:`Lanes` of ``experiments`` (``feds``: each seed's Federation;
    ``extras``: each seed's extra ``make`` arguments)."""
    seeds = sorted(feds)
    rows = [seeds.index(e.seed) for e in experiments]
    data, stacked = stack_federations([feds[s] for s in seeds], rows)
    keys = [jax.random.split(jax.random.key(e.seed)) for e in experiments]  # as Simulation
    num_clients = feds[seeds[0]].num_clients
    adversary = np.stack(
        [
            faults.adversaries(
                num_clients,
                e.hparams.get("adversary_fraction", fault_config.adversary_fraction),
                e.seed,
            )
            for e in experiments
        ]
    )
    names = list(experiments[0].hparams)
    extra = {}
    for name in (extras or {}).get(seeds[0], {}):
        extra[name] = jnp.stack([jnp.asarray(extras[e.seed][name]) for e in experiments])
    lanes = Lanes(
        seed=jnp.asarray([e.seed for e in experiments], jnp.int32),
        init_key=jnp.stack([k[0] for k in keys]),
        round_key=jnp.stack([k[1] for k in keys]),
        hparams={n: jnp.asarray([e.hparams[n] for e in experiments], jnp.float32) for n in names},
        data=data,
        adversary=jnp.asarray(adversary),
        extra=extra,
    )
    return lanes, stacked


@contextlib.contextmanager
def _in_flight(width: int):
    """Trace with ``width`` experiments vmapped side by side (layers see it through
    :func:`jaxfl.clients.clients_in_flight`)."""
    token = clients.experiments_in_flight.set(width)
    try:
        yield
    finally:
        clients.experiments_in_flight.reset(token)


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
        experiments: Sequence[Experiment],
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
                "with jaxfl.experiments.static_groups"
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

    def bind_concrete(self, experiment: Experiment):
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
