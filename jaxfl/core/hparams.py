"""Hyperparameters as data: which config values may be traced, and checks that tolerate tracers.

Every algorithm's ``XConfig`` dataclass holds its flags. A float field is a *traced*
hyperparameter: the experiments axis (:mod:`jaxfl.experiments.axis`) binds the algorithm inside the
compiled call with that field replaced by a traced value, one per experiment, so ``jax.vmap``
runs several learning rates, temperatures or penalties side by side, and a sweep compiles once.
Everything else (integers, strings, and the float fields a module lists in ``STATIC_HPARAMS``
because they fix an array shape or the program, e.g. a fraction that becomes a count) is
static: sweeping it runs one compiled group per value.

So the algorithms read their float hyperparameters when they build the round, never decide
Python control flow on them, and check them with :func:`check`, which skips a traced value (the
experiments axis checks every experiment's concrete values before tracing).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable

import jax

# float fields of FaultConfig that fix shapes: a count of stragglers, a fixed adversary set
FAULT_STATIC = ("straggler_fraction", "adversary_fraction")


def is_traced(value) -> bool:
    """Whether ``value`` is a tracer (inside jit/vmap), not a concrete number."""
    return isinstance(value, jax.core.Tracer)


def given(value, default):
    """``value`` unless it is None (unlike ``value or default``, safe for traced values)."""
    return default if value is None else value


def check(value, ok: Callable[[float], bool], message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok(value)``; a traced value is not checked here
    (its concrete value was checked before tracing)."""
    if not any(is_traced(v) for v in jax.tree.leaves(value)) and not ok(value):
        raise ValueError(message)


def float_fields(config_cls) -> tuple[str, ...]:
    """The float (or optional float) fields of a config dataclass."""
    return tuple(
        f.name
        for f in dataclasses.fields(config_cls)
        if "float" in (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
    )


def traced_fields(config_cls, static: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The fields of ``config_cls`` that reach the compiled round as traced values: its float
    fields minus ``static``."""
    return tuple(name for name in float_fields(config_cls) if name not in static)


_concrete_data: contextvars.ContextVar = contextvars.ContextVar("concrete_data", default=None)


@contextlib.contextmanager
def concrete_data(data):
    """Inside, :func:`concrete` answers ``data``: one experiment's concrete Federation, for the
    structural decisions an algorithm takes from data values (whether validation splits exist)
    while the experiments axis traces it with every experiment's data."""
    token = _concrete_data.set(data)
    try:
        yield
    finally:
        _concrete_data.reset(token)


def concrete(data):
    """``data`` itself, or when its arrays are traced, the concrete Federation of the same
    sweep set by :func:`concrete_data` (every experiment of a sweep shares such decisions:
    they follow from flags, not from the seed)."""
    if not any(is_traced(x) for x in jax.tree.leaves(data)):
        return data
    given = _concrete_data.get()
    if given is None:
        raise ValueError(
            "a traced Federation needs jaxfl.core.hparams.concrete_data(...) around it"
        )
    return given
