"""A virtual clock: client speeds, network latencies, and when a server moves on.

Each client c has a time per local step s_c and a network latency l_c (virtual seconds), drawn
once per run from named distributions (``--client-speed``, ``--client-latency``). One dispatch
of client c that runs ``steps`` local SGD steps lasts

    d_c = steps * s_c + l_c,        steps = ceil(work * E * ceil(n_c / B))

(``work`` < 1 for a straggler, :mod:`jaxfl.mechanisms.faults`). The draws use the run's init key
(``fold_in(key, CLOCK_STREAM)``), so a seed fixes them, two algorithms run with the same seed see
the same speeds, and on the experiments axis each seed has its own.

Distributions (``SPEC``): ``constant:V``, ``lognormal:SIGMA`` (exp(SIGMA * N(0, 1)), median 1),
``two-tier:FRACTION:FACTOR`` (exactly round(FRACTION * C) clients, drawn at random, are FACTOR
times slower than the rest, which take 1), ``uniform:LO:HI``, a bare number (constant), or a
file of per-client values (``.npy``, or text: numbers separated by commas, spaces or lines).

A synchronous round (:func:`move_on`) waits for every sampled client, for the first K of them
(over-selection, ``--round-first K``) or until a time budget (``--round-deadline T``): a client
it does not wait for counts as lost (``received`` False, as a dropout does), and the round lasts
until the last client it waits for arrives, or T when some client missed the deadline. FedBuff
(``jaxfl/algorithms/fedbuff.py``) orders arrivals on the same clock.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxfl.configs.shared import ClockFields as ClockFields  # the settings, defined without JAX
from jaxfl.core.names import SPEED_KINDS as SPEED_KINDS  # defined without JAX, for --help

CLOCK_STREAM = 0xC10C


class ClockSpecError(ValueError):
    """A --client-speed/--client-latency value that cannot be read; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A parsed SPEC: ``kind`` (one of SPEED_KINDS), its numeric ``params``, and for ``file``
    the per-client ``values`` (C,)."""

    kind: str
    params: tuple[float, ...] = ()
    values: tuple[float, ...] | None = None


_ARITY = {"constant": 1, "lognormal": 1, "two-tier": 2, "uniform": 2}
_FORMS = {
    "constant": "constant:V",
    "lognormal": "lognormal:SIGMA",
    "two-tier": "two-tier:FRACTION:FACTOR",
    "uniform": "uniform:LO:HI",
}


def allowed_text(flag: str) -> str:
    return (
        f"{', '.join(_FORMS.values())}, a number, or a file of one value per client "
        f"(.npy or text); see {flag} in --help"
    )


def parse(text: str, flag: str, num_clients: int | None = None, positive: bool = True):
    """Read a SPEC (see the module docstring); raise :class:`ClockSpecError` naming ``flag``.

    ``positive``: values must be > 0 (speeds) rather than >= 0 (latencies). A file must hold
    exactly ``num_clients`` values when that is given.
    """
    text = str(text).strip()
    low = "> 0" if positive else ">= 0"

    def bad(why: str):
        raise ClockSpecError(f"{flag} {text!r}: {why}; allowed: {allowed_text(flag)}")

    def ok(v: float) -> bool:
        return math.isfinite(v) and (v > 0 if positive else v >= 0)

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not ok(value):
            bad(f"a value must be {low}")
        return Distribution("constant", (value,))
    kind, _, rest = text.partition(":")
    if kind in _ARITY:
        try:
            params = tuple(float(p) for p in rest.split(":")) if rest else ()
        except ValueError:
            bad(f"the parameters of {kind} are numbers ({_FORMS[kind]})")
        if len(params) != _ARITY[kind]:
            bad(f"{kind} takes {_ARITY[kind]} parameter(s): {_FORMS[kind]}")
        if kind == "constant" and not ok(params[0]):
            bad(f"V must be {low}")
        if kind == "lognormal" and not params[0] >= 0:
            bad("SIGMA must be >= 0")
        if kind == "two-tier" and not (0 <= params[0] <= 1 and params[1] > 0):
            bad("FRACTION must be in 0..1 and FACTOR > 0")
        if kind == "uniform" and not (ok(params[0]) and params[0] <= params[1]):
            bad(f"LO must be {low} and LO <= HI")
        return Distribution(kind, params)
    path = Path(text)
    if not path.is_file():
        bad(f"unknown distribution {kind!r} and no such file")
    try:
        if path.suffix == ".npy":
            values = np.load(path).astype(np.float64).ravel()
        else:
            values = np.array(path.read_text().replace(",", " ").split(), np.float64)
    except (ValueError, OSError) as err:
        bad(f"the file could not be read as numbers ({err})")
    if num_clients is not None and values.size != num_clients:
        bad(f"the file holds {values.size} values, one per client is needed ({num_clients})")
    wrong = [i for i, v in enumerate(values) if not ok(float(v))]
    if wrong:
        bad(f"every value must be {low}; client {wrong[0]} has {values[wrong[0]]}")
    return Distribution("file", (), tuple(float(v) for v in values))


def draw(dist: Distribution, key: jax.Array, num_clients: int) -> jax.Array:
    """(C,) float32 per-client values of ``dist``."""
    if dist.kind == "constant":
        return jnp.full((num_clients,), dist.params[0], jnp.float32)
    if dist.kind == "lognormal":
        return jnp.exp(dist.params[0] * jax.random.normal(key, (num_clients,)))
    if dist.kind == "uniform":
        lo, hi = dist.params
        return jax.random.uniform(key, (num_clients,), minval=lo, maxval=hi)
    if dist.kind == "two-tier":
        fraction, factor = dist.params
        slow = jax.random.permutation(key, num_clients) < round(fraction * num_clients)
        return jnp.where(slow, factor, 1.0).astype(jnp.float32)
    values = np.asarray(dist.values, np.float32)
    if values.size != num_clients:
        raise ClockSpecError(f"a speed file holds {values.size} values for {num_clients} clients")
    return jnp.asarray(values)


def check_round(fields: ClockFields, clients_per_round: int) -> None:
    """ValueError naming the flag when a synchronous round's move-on setting cannot work."""
    first, deadline = fields.round_first, fields.round_deadline
    if first is not None and not 1 <= first <= clients_per_round:
        raise ValueError(
            f"--round-first {first} is not allowed; allowed: 1..--clients-per-round "
            f"({clients_per_round})"
        )
    if deadline is not None and isinstance(deadline, (int, float)) and not deadline > 0:
        raise ValueError(f"--round-deadline {deadline} is not allowed; allowed: a time > 0")


@struct.dataclass
class ClockState:
    """``time`` () float32: virtual seconds elapsed; ``step_time`` (C,) and ``latency`` (C,)
    float32: each client's s_c and l_c."""

    time: jax.Array
    step_time: jax.Array
    latency: jax.Array


def init(fields: ClockFields, key: jax.Array, num_clients: int) -> ClockState:
    """The clock at time 0, with every client's speed and latency drawn from ``key`` (the run's
    init key; the draws use a stream of their own)."""
    k_speed, k_latency = jax.random.split(jax.random.fold_in(key, CLOCK_STREAM))
    speed = parse(fields.client_speed, "--client-speed", num_clients)
    latency = parse(fields.client_latency, "--client-latency", num_clients, positive=False)
    return ClockState(
        jnp.zeros((), jnp.float32),
        draw(speed, k_speed, num_clients),
        draw(latency, k_latency, num_clients),
    )


def durations(clock: ClockState, clients: jax.Array, steps: jax.Array) -> jax.Array:
    """(m,) float32 d_c = steps * s_c + l_c of ``clients`` (m,) running ``steps`` (m,)."""
    return steps.astype(jnp.float32) * clock.step_time[clients] + clock.latency[clients]


def move_on(
    duration: jax.Array,
    received: jax.Array,
    deadline: float | None = None,
    first: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Which uploads a synchronous round uses, and how long it lasts.

    Args:
      duration: (m,) float32, each sampled client's d_c.
      received: (m,) bool, uploads not lost to dropout (a lost upload is noticed when it would
        have arrived).
      deadline: T or None; a client with d_c > T is not waited for.
      first: K or None; only the K earliest received uploads are used (ties: lower position).

    Returns:
      (kept (m,) bool, round_time () float32): round_time is the K-th earliest received arrival
      (every sampled client's max d_c when all are waited for or fewer than K arrive), capped at
      T.
    """
    kept = received
    round_time = jnp.max(duration)
    if first is not None and first < duration.shape[0]:
        arrival = jnp.where(received, duration, jnp.inf)
        order = jnp.argsort(arrival, stable=True)
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
        kept = kept & (rank < first)
        kth = arrival[order[first - 1]]
        round_time = jnp.where(jnp.isfinite(kth), kth, round_time)
    if deadline is not None:
        kept = kept & (duration <= deadline)
        round_time = jnp.minimum(round_time, deadline)
    return kept, round_time.astype(jnp.float32)


def staleness_weights(spec: str, staleness: jax.Array) -> jax.Array:
    """s(tau) of :func:`parse_staleness`'s SPEC for integer staleness ``staleness`` (K,)."""
    kind, params = parse_staleness(spec)
    tau = staleness.astype(jnp.float32)
    if kind == "constant":
        return jnp.ones_like(tau)
    if kind == "polynomial":
        return (1.0 + tau) ** (-params[0])
    a, b = params
    return jnp.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))


STALENESS_FORMS = ("constant", "polynomial:A", "hinge:A:B")


def parse_staleness(spec: str) -> tuple[str, tuple[float, ...]]:
    """``--staleness``: ``constant`` (s = 1), ``polynomial:A`` (s = (1 + tau)^-A, A >= 0; FedBuff
    uses A = 0.5), ``hinge:A:B`` (s = 1 for tau <= B, else 1 / (A (tau - B) + 1); FedAsync)."""
    kind, _, rest = str(spec).strip().partition(":")
    arity = {"constant": 0, "polynomial": 1, "hinge": 2}
    allowed = f"allowed: {', '.join(STALENESS_FORMS)}"
    if kind not in arity:
        raise ClockSpecError(f"--staleness {spec!r}: unknown weighting {kind!r}; {allowed}")
    try:
        params = tuple(float(p) for p in rest.split(":")) if rest else ()
    except ValueError:
        params = None
    if params is None or len(params) != arity[kind] or any(not p >= 0 for p in params):
        raise ClockSpecError(
            f"--staleness {spec!r}: {kind} takes {arity[kind]} parameter(s), each a number "
            f">= 0; {allowed}"
        )
    return kind, params
