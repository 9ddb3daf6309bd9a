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
  (:mod:`jaxfl.core.hparams`), so ``jax.vmap`` over experiments needs no change to any algorithm:
  optimizers, temperatures and penalties are built from traced values when the round is traced.
  Values that fix shapes or the program (epochs, batch sizes, the model, an algorithm's
  ``AlgorithmSpec.static_hparams``) cannot vary inside one compiled call: :func:`static_groups`
  splits a sweep of them into one compiled group per value.
- **Layout** (:class:`jaxfl.experiments.vectorized.CompiledSweep`): experiments are vmapped in
  chunks of ``experiment_chunk`` (a ``lax.map`` over chunks, as clients are), and split over devices
  with ``shard_map`` on a 1-D mesh named ``"experiments"`` (each device runs its own block of
  experiments; the shared data is replicated). One experiment per call uses the client mesh
  instead (:mod:`jaxfl.core.client_axis`).

Experiment i of a sweep computes what ``scripts/run.py --seed s_i`` with its hyperparameters
computes, up to float summation order (tests/test_experiments.py holds them together).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxfl.core import hparams
from jaxfl.data.federation import Federation
from jaxfl.mechanisms import faults
from jaxfl.mechanisms.faults import FaultConfig

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
    static_config = module.SPEC.static_hparams
    traced = dict.fromkeys(hparams.traced_fields(module.SPEC.config, static_config), "config")
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
            all_fields = {f.name for f in dataclasses.fields(module.SPEC.config)}
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
        if not all(math.isfinite(v) for v in parsed):
            raise SweepError(f"--sweep {item!r}: every value must be a finite number")
        if field in grid:
            raise SweepError(f"--sweep {flag} is given twice; give all its values once")
        grid[field] = parsed
    return grid


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One experiment of a sweep: its index, seed and swept hyperparameter values."""

    index: int
    seed: int
    hparams: dict[str, float]

    def label(self) -> str:
        """The experiment's setting without its seed, e.g. ``lr=0.1 temperature=0.5``."""
        return " ".join(f"{k}={v:g}" for k, v in self.hparams.items()) or "default"


def grid(seeds: Sequence[int], sweep: dict[str, tuple[float, ...]]) -> list[GridPoint]:
    """Every combination of the swept values, each with every seed (settings major, seeds
    minor)."""
    names = list(sweep)
    combos = list(itertools.product(*(sweep[n] for n in names))) or [()]
    return [
        GridPoint(i, seed, dict(zip(names, combo, strict=True)))
        for i, (combo, seed) in enumerate(itertools.product(combos, seeds))
    ]


def static_groups(experiments: list[GridPoint], module) -> list[list[GridPoint]]:
    """Experiments that can share one compiled call: equal values of every swept field that
    fixes a shape (the spec's ``static_hparams``, the fault fractions), and for an algorithm
    whose bound form depends on the seed itself (``STATIC_SEED``), equal seeds."""
    _, static = sweepable(module)
    groups: dict[tuple, list[GridPoint]] = {}
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
    :func:`jaxfl.core.train.accuracy` skips) to a common shape and stacked in ``rows``
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
    experiments: Sequence[GridPoint],
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
