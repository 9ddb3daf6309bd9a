"""Privacy accounting for :mod:`jaxfl.mechanisms.privacy` with Google's ``dp-accounting`` (RDP).

Nothing here is hand-written accounting: each round is described as a ``dp_accounting`` event
and the library's Renyi-DP accountant composes it.

**The event of one round.** The simulator samples exactly m of the C clients, uniformly without
replacement. Fixed-size sampling fixes the population size, so the neighbouring relation is
*replace one client* (``NeighborRel.REPLACE_ONE``) and the sampling is
``SampledWithoutReplacementDpEvent(C, m, ...)`` (Wang, Balle & Kasiviswanathan, AISTATS 2019).
Replacing one client's clipped upload (norm <= C_t) moves the sum by up to 2 C_t, so noise of
std z_D C_t is a Gaussian mechanism of noise multiplier z_D / 2 for this relation; the
adaptive clip's count query (bits in {0, 1}, sensitivity 1) adds one of multiplier sigma_b:

    round = SampledWithoutReplacement(C, m, Gaussian(z_D / 2) [+ Gaussian(sigma_b)])

(the two compose to exactly Gaussian(z / 2): that is how ``--dp-noise`` z is defined).
Epsilon is larger than the Poisson-sampling, add-or-remove figures of papers at the same z,
roughly as if z were halved: those count a client's *absence*, this counts its replacement.

**After r rounds** the RDP of r self-composed rounds is r times one round's, so the accountant
composes one round once and :meth:`Accountant.epsilon` converts r times its RDP curve to
(epsilon, delta) with the library's ``compute_epsilon``; a test checks it equals composing the r
rounds directly. ``delta`` defaults to C^-1.1 (below 1/C, as a per-user delta must be).
"""

from __future__ import annotations

import dataclasses
import functools
import math

from jaxfl.mechanisms import privacy

MAX_NOISE = 1e4  # the largest noise multiplier --dp-epsilon's calibration considers
# RDP orders: the library's default range, thinned (its 100 fractional orders below 11 and
# order 256 take most of the time for sampling without replacement); on the settings of
# tests/test_privacy.py and the README the epsilons equal the default orders' to 4 digits, in
# a third of the time
ORDERS = (1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40)
ORDERS += (48, 56, 64, 80, 96, 128, 192, 384, 512, 1024)


class AccountingError(ValueError):
    """A privacy target or setting that cannot be met; the message names the flag."""


def default_delta(num_clients: int) -> float:
    """--dp-delta's default: C^-1.1."""
    return float(num_clients) ** -1.1


def round_event(noise: float, num_clients: int, m: int, clip_count_noise: float | None = None):
    """The ``dp_accounting`` event of one round (see the module docstring).

    Args:
      noise: z, the round's total noise multiplier (``--dp-noise``).
      num_clients: C, the clients that may be sampled.
      m: clients sampled per round.
      clip_count_noise: sigma_b with adaptive clipping, else None.
    """
    from dp_accounting import dp_event

    if clip_count_noise is None:
        inner = dp_event.GaussianDpEvent(noise / 2)
    else:
        z_update = (noise**-2 - (2 * clip_count_noise) ** -2) ** -0.5 if noise > 0 else 0.0
        inner = dp_event.ComposedDpEvent(
            [dp_event.GaussianDpEvent(z_update / 2), dp_event.GaussianDpEvent(clip_count_noise)]
        )
    return dp_event.SampledWithoutReplacementDpEvent(num_clients, m, inner)


def _accountant():
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    return rdp.RdpAccountant(list(ORDERS), neighboring_relation=rdp.NeighborRel.REPLACE_ONE)


@dataclasses.dataclass(frozen=True)
class Accountant:
    """Epsilon after any number of rounds of one DP setting.

    Attributes:
      noise: z; num_clients: C; m; delta; clip_count_noise: sigma_b or None.
    """

    noise: float
    num_clients: int
    m: int
    delta: float
    clip_count_noise: float | None = None

    @functools.cached_property
    def _one_round(self):
        accountant = _accountant()
        event = round_event(self.noise, self.num_clients, self.m, self.clip_count_noise)
        accountant.compose(event)
        return accountant.orders, accountant.rdp

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (inf without noise)."""
        if rounds <= 0:
            return 0.0
        if self.noise <= 0:
            return math.inf
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        orders, one = self._one_round
        return float(rdp.compute_epsilon(orders, rounds * one, self.delta)[0])


@functools.lru_cache(maxsize=256)
def accountant(
    noise: float, num_clients: int, m: int, delta: float, clip_count_noise: float | None
) -> Accountant:
    """A cached :class:`Accountant` (one round's RDP takes about a second to compute)."""
    return Accountant(noise, num_clients, m, delta, clip_count_noise)


def for_config(config, num_clients: int, m: int, delta: float | None) -> Accountant | None:
    """The accountant of an algorithm config's DP setting: None without DP, and None without
    noise (clipping alone: epsilon is infinite, so no dp_epsilon is reported).

    ``num_clients``: the clients that may be sampled (C minus the unseen ones)."""
    if not privacy.enabled(config) or not float(config.dp_noise) > 0:
        return None
    sigma_b = float(privacy.count_noise(config, m)) if privacy.adaptive(config) else None
    delta = default_delta(num_clients) if delta is None else delta
    return accountant(float(config.dp_noise), num_clients, m, delta, sigma_b)


def check_delta(delta: float | None) -> None:
    if delta is not None and not 0 < delta < 1:
        raise AccountingError(f"--dp-delta {delta} is not allowed; allowed: 0 < delta < 1")


@functools.lru_cache(maxsize=64)
def calibrate_noise(
    target_epsilon: float,
    rounds: int,
    num_clients: int,
    m: int,
    delta: float,
    clip_count_noise: float | None = None,
) -> float:
    """The smallest noise multiplier z whose epsilon after ``rounds`` rounds is at most
    ``target_epsilon`` (``dp_accounting.mechanism_calibration``, to 0.1% of z: epsilon then
    lands within 1% of the target). With adaptive clipping z must stay below 2 sigma_b.

    Raises AccountingError naming ``--dp-epsilon`` when no noise level meets the target.
    """
    from dp_accounting import dp_event, mechanism_calibration

    if not target_epsilon > 0:
        raise AccountingError(
            f"--dp-epsilon {target_epsilon} is not allowed; allowed: a target epsilon > 0"
        )
    upper = MAX_NOISE if clip_count_noise is None else 2 * clip_count_noise * (1 - 1e-6)

    def rounds_event(z: float):
        return dp_event.SelfComposedDpEvent(
            round_event(z, num_clients, m, clip_count_noise), rounds
        )

    def epsilon(z: float) -> float:
        return _accountant().compose(rounds_event(z)).get_epsilon(delta)

    if epsilon(upper) > target_epsilon:
        limit = (
            f"the largest noise adaptive clipping allows (z < 2 sigma_b = {upper:.4g}; raise "
            "--dp-clip-count-noise)"
            if clip_count_noise is not None
            else f"z = {MAX_NOISE:g}"
        )
        raise AccountingError(
            f"--dp-epsilon {target_epsilon}: no noise level meets it within {rounds} rounds "
            f"({m} of {num_clients} clients per round, delta {delta:.3g}); even {limit} "
            "gives more. Raise --dp-epsilon or lower --rounds or --clients-per-round"
        )
    # a bracket [lo, hi] with epsilon(lo) > target >= epsilon(hi), from z = 1 outwards
    lo, hi = min(1.0, upper / 2), min(2.0, upper)
    while epsilon(hi) > target_epsilon:
        lo, hi = hi, min(2 * hi, upper)
    while lo > 1e-3 and epsilon(lo) <= target_epsilon:
        lo, hi = lo / 2, lo
    return float(
        mechanism_calibration.calibrate_dp_mechanism(
            _accountant,
            rounds_event,
            target_epsilon,
            delta,
            bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi),
            tol=1e-4 * lo,
        )
    )
