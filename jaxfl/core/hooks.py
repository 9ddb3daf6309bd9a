"""Customisation hooks inside the compiled round: what they are given, and how.

An algorithm's ``make`` takes pure functions that replace one step of its round (FedAvg's
``aggregate_updates``, DS-FL's ``aggregate_soft_labels``, both algorithms' ``client_loss_term``).
Real customisations need more than the arrays they act on: differential privacy adds noise (a
PRNG key), a robust aggregate may want ERA's temperature or the learning rate (the
hyperparameters). So a hook may take two keyword-only arguments besides its positional ones:

- ``key``: a PRNG key of its own, ``fold_in(round_key, HOOK_STREAM)`` (the round's other draws
  are unchanged by it), different every round; a hook that does not ask for it changes nothing.
- ``hparams``: the algorithm's config (its ``XConfig`` dataclass) as the round was bound with
  it. Inside a sweep (:mod:`jaxfl.experiments.axis`) its float fields are this experiment's traced
  values, so a hook that reads ``hparams.temperature`` follows the swept value.

A hook declares what it wants by naming it in its signature, e.g.
``def noisy_mean(deltas, weights, *, key, hparams): ...``; :func:`bind` inspects the signature
once, when the algorithm is made, never inside the traced round.

Optimizers are pieces of the same kind: every algorithm's ``make`` takes its optimizer roles
(``client_optimizer``, and where the algorithm has them ``server_optimizer``,
``personal_optimizer``, ``distill_optimizer``) as optax transformations, or as functions of the
hyperparameters (:func:`optimizer`); the flags (``--lr``, ``--server-opt``, ...) are shortcuts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import optax

# what an algorithm's ``make`` takes for an optimizer role (see :func:`optimizer`)
OptimizerArg = optax.GradientTransformation | Callable

HOOK_STREAM = 0x400C  # fold_in constant of the hooks' key, apart from every other stream

EXTRAS = ("key", "hparams")


def wants(hook: Callable) -> frozenset[str]:
    """Which of ``key``/``hparams`` the hook accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: positional arguments only
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(EXTRAS)
    return frozenset(p.name for p in params if p.name in EXTRAS and p.kind is not p.POSITIONAL_ONLY)


def bind(hook: Callable | None, hparams) -> Callable | None:
    """``hook`` as ``f(*args, key=None)``: it receives ``hparams`` and the key if its signature
    names them (see the module docstring); None stays None."""
    if hook is None:
        return None
    wanted = wants(hook)

    def call(*args, key=None):
        extras = {}
        if "key" in wanted:
            if key is None:
                raise ValueError(f"hook {hook!r} asks for a key that this call site cannot give")
            extras["key"] = key
        if "hparams" in wanted:
            extras["hparams"] = hparams
        return hook(*args, **extras)

    return call


def round_key(key: jax.Array) -> jax.Array:
    """The hooks' key of the round whose key is ``key`` (one per round and experiment)."""
    return jax.random.fold_in(key, HOOK_STREAM)


def optimizer(given, hparams, shortcut: Callable[[], optax.GradientTransformation]):
    """The optax transformation one optimizer role of an algorithm uses.

    Args:
      given: what the caller passed to ``make`` (e.g. ``client_optimizer=``): an
        ``optax.GradientTransformation``; or a function ``hparams -> GradientTransformation``,
        called with the config when the round is bound, so an optimizer built from
        ``hparams.lr`` follows a swept learning rate (a transformation built from a Python float
        does not: sweeping ``lr`` then changes nothing); or None for the flags' shortcut.
      hparams: the algorithm's config.
      shortcut: builds the flags' optimizer (e.g. ``optax.sgd(config.lr)``).
    """
    if given is None:
        return shortcut()
    if isinstance(given, optax.GradientTransformation):
        return given
    if callable(given):
        built = given(hparams)
        if isinstance(built, optax.GradientTransformation):
            return built
        raise TypeError(
            f"an optimizer factory must return an optax.GradientTransformation, got {built!r}"
        )
    raise TypeError(
        "an optimizer must be an optax.GradientTransformation or a function hparams -> one, "
        f"got {given!r}"
    )
