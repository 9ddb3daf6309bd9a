"""Privacy accounting for :mod:`jaxfl.mechanisms.privacy` with Google's ``dp-accounting``.

Nothing here is hand-written accounting: each round is described as a ``dp_accounting`` event
and one of the library's accountants composes it: Renyi DP (``--dp-accountant rdp``) or privacy
loss distributions (``pld``, tighter; for Poisson participation only).

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

**Poisson participation** (``--participation poisson``, the analysis of the DP-FedAvg
literature and of TensorFlow Privacy, Opacus and pfl-research): each client takes part with
probability q = m / C, the neighbouring relation is *add or remove one client*
(``NeighborRel.ADD_OR_REMOVE_ONE``), one client moves the sum by at most C_t, and the round is
``PoissonSampledDpEvent(q, Gaussian(z))`` (with adaptive clipping the update's and the count's
noise again compose to exactly z). The compiled round holds at most M clients
(:func:`jaxfl.mechanisms.client_round.poisson_capacity`, P(more than M drawn) <= beta =
1e-12 per round); a larger draw keeps a uniformly random M of them. The PLD accountant accounts
for exactly that, dp-accounting's ``TruncatedSubsampledGaussianDpEvent(C, q, M, z)``. The RDP
accountant has no such event: it accounts for untruncated Poisson sampling at delta' = delta -
r beta (1 + e^eps') (eps' its epsilon at delta / 2), since the truncated and the untruncated
runs differ only when some round overflows, on either neighbouring data set.

**After r rounds** the RDP of r self-composed rounds is r times one round's, so the accountant
composes one round once and :meth:`Accountant.epsilon` converts r times its RDP curve to
(epsilon, delta) with the library's ``compute_epsilon``; a test checks it equals composing the r
rounds directly. The PLD of r rounds is one round's PLD self-composed r times (the library's
``self_compose``, at a discretization of 1e-3: about 0.2 s per epsilon, within 1e-3 relative of
the library default's 1e-4 on the tests' settings). ``delta`` defaults to C^-1.1 (below 1/C, as
a per-user delta must be).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math

from jaxfl.mechanisms import privacy

MAX_NOISE = 1e4  # the largest noise multiplier --dp-epsilon's calibration considers
PLD_DISCRETIZATION = 1e-3  # the PLD accountant's value discretization (the library's: 1e-4)
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


def default_accountant(participation: str) -> str:
    """``--dp-accountant``'s default: PLD under Poisson participation (tighter: 3.27 against
    RDP's 3.84 at C = 50, q = 0.2, z = 1.1, 5 rounds, delta 1e-5), else RDP (dp-accounting has
    no PLD of fixed-size sampling)."""
    return "pld" if participation == "poisson" else "rdp"


def round_event(
    noise: float,
    num_clients: int,
    m: int,
    clip_count_noise: float | None = None,
    participation: str = "fixed",
    capacity: int | None = None,
):
    """The ``dp_accounting`` event of one round (see the module docstring).

    Args:
      noise: z, the round's total noise multiplier (``--dp-noise``).
      num_clients: C, the clients that may be sampled.
      m: clients sampled per round (Poisson: expected, q = m / C).
      clip_count_noise: sigma_b with adaptive clipping, else None.
      participation: ``fixed`` or ``poisson``.
      capacity: Poisson only: M, the cohort's capacity, for the truncated event (PLD); None
        gives untruncated Poisson sampling (RDP).
    """
    from dp_accounting import dp_event

    if participation == "poisson":  # the update's and the count's noise compose to exactly z
        q = m / num_clients
        if capacity is not None:
            return dp_event.TruncatedSubsampledGaussianDpEvent(num_clients, q, capacity, noise)
        return dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(noise))
    if clip_count_noise is None:
        inner = dp_event.GaussianDpEvent(noise / 2)
    else:
        z_update = (noise**-2 - (2 * clip_count_noise) ** -2) ** -0.5 if noise > 0 else 0.0
        inner = dp_event.ComposedDpEvent(
            [dp_event.GaussianDpEvent(z_update / 2), dp_event.GaussianDpEvent(clip_count_noise)]
        )
    return dp_event.SampledWithoutReplacementDpEvent(num_clients, m, inner)


def _accountant(participation: str = "fixed", kind: str = "rdp"):
    """A fresh dp-accounting accountant for ``participation``'s neighbouring relation."""
    from dp_accounting.pld import pld_privacy_accountant as pld
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    if participation == "poisson":
        if kind == "pld":
            return pld.PLDAccountant(pld.NeighborRel.ADD_OR_REMOVE_ONE, PLD_DISCRETIZATION)
        # the library's default orders: fast for Poisson sampling (ORDERS thins them for
        # sampling without replacement, whose fractional orders are slow)
        return rdp.RdpAccountant(neighboring_relation=rdp.NeighborRel.ADD_OR_REMOVE_ONE)
    if kind != "rdp":
        raise AccountingError(
            f"--dp-accountant {kind} is not allowed with --participation {participation}; "
            "allowed: rdp (dp-accounting has no PLD of fixed-size sampling; --participation "
            "poisson allows pld)"
        )
    return rdp.RdpAccountant(list(ORDERS), neighboring_relation=rdp.NeighborRel.REPLACE_ONE)


@contextlib.contextmanager
def _quiet_absl():
    """Silence absl's warnings while dp-accounting computes: for Poisson sampling its RDP of a
    few low fractional orders may not converge, and it then skips those orders (a WARNING per
    order, on stderr, that says nothing the user can act on)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def overflow_probability(num_clients: int, m: int, capacity: int) -> float:
    """beta = P(Binomial(C + 1, q) > M): a round draws more clients than the capacity, on
    either neighbouring data set (q = m / C)."""
    from scipy import stats

    return float(stats.binom.sf(capacity, num_clients + 1, m / num_clients))


@dataclasses.dataclass(frozen=True)
class Accountant:
    """Epsilon after any number of rounds of one DP setting.

    Attributes:
      noise: z; num_clients: C; m (Poisson: expected); delta; clip_count_noise: sigma_b or
      None; participation: ``fixed`` or ``poisson``; kind: ``rdp`` or ``pld``; capacity: M,
      the Poisson cohort's capacity (None with fixed participation).
    """

    noise: float
    num_clients: int
    m: int
    delta: float
    clip_count_noise: float | None = None
    participation: str = "fixed"
    kind: str = "rdp"
    capacity: int | None = None

    @functools.cached_property
    def _one_round(self):
        if self.kind == "pld":  # the truncated Poisson round's privacy loss distribution
            from dp_accounting.pld import privacy_loss_distribution as pld_lib

            return pld_lib.from_truncated_subsampled_gaussian_mechanism(
                dataset_size=self.num_clients,
                sampling_probability=self.m / self.num_clients,
                truncated_batch_size=self.capacity,
                noise_multiplier=self.noise,
                value_discretization_interval=PLD_DISCRETIZATION,
                neighboring_relation=_accountant("poisson", "pld").neighboring_relation,
            )
        accountant = _accountant(self.participation, self.kind)
        with _quiet_absl():
            accountant.compose(
                round_event(
                    self.noise, self.num_clients, self.m, self.clip_count_noise, self.participation
                )
            )
        return accountant.orders, accountant.rdp

    def _rdp_epsilon(self, rounds: int, delta: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        orders, one = self._one_round
        return float(rdp.compute_epsilon(orders, rounds * one, delta)[0])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (instances are few, cached by accountant())
    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (inf without noise)."""
        if rounds <= 0:
            return 0.0
        if self.noise <= 0:
            return math.inf
        if self.kind == "pld":
            return float(self._one_round.self_compose(rounds).get_epsilon_for_delta(self.delta))
        if self.participation != "poisson":
            return self._rdp_epsilon(rounds, self.delta)
        # untruncated Poisson at delta' = delta - r beta (1 + e^eps'), eps' at delta / 2
        beta = overflow_probability(self.num_clients, self.m, self.capacity)
        overflow = (
            rounds * beta * (1 + math.exp(min(self._rdp_epsilon(rounds, self.delta / 2), 700)))
        )
        if overflow > self.delta / 2:
            return math.inf
        return self._rdp_epsilon(rounds, self.delta - overflow)

    def describe(self) -> str:
        """How the epsilons were computed, for every place they appear: e.g. "Poisson q =
        0.2, add-or-remove, PLD" or "10 of 50 per round, replace-one, RDP"."""
        if self.participation == "poisson":
            how = f"Poisson q = {self.m / self.num_clients:.3g}, add-or-remove"
        else:
            how = f"{self.m} of {self.num_clients} per round, replace-one"
        return f"{how}, {self.kind.upper()}"


@functools.lru_cache(maxsize=256)
def accountant(
    noise: float,
    num_clients: int,
    m: int,
    delta: float,
    clip_count_noise: float | None,
    participation: str = "fixed",
    kind: str | None = None,
) -> Accountant:
    """A cached :class:`Accountant` (one round's RDP takes about a second to compute);
    ``kind`` None: :func:`default_accountant`."""
    kind = kind or default_accountant(participation)
    _accountant(participation, kind)  # refuses PLD with fixed participation
    capacity = None
    if participation == "poisson":
        from jaxfl.mechanisms.client_round import poisson_capacity

        capacity = poisson_capacity(num_clients, m / num_clients)
        clip_count_noise = None  # the pair composes to z (jaxfl.mechanisms.privacy)
    return Accountant(noise, num_clients, m, delta, clip_count_noise, participation, kind, capacity)


def for_config(
    config, num_clients: int, m: int, delta: float | None, kind: str | None = None
) -> Accountant | None:
    """The accountant of an algorithm config's DP setting: None without DP, and None without
    noise (clipping alone: epsilon is infinite, so no dp_epsilon is reported).

    ``num_clients``: the clients that may be sampled (C minus the unseen ones); ``kind``:
    ``--dp-accountant`` (None: :func:`default_accountant` of the config's participation)."""
    if not privacy.enabled(config) or not float(config.dp_noise) > 0:
        return None
    sigma_b = float(privacy.count_noise(config, m)) if privacy.adaptive(config) else None
    delta = default_delta(num_clients) if delta is None else delta
    participation = "poisson" if privacy.poisson(config) else "fixed"
    return accountant(float(config.dp_noise), num_clients, m, delta, sigma_b, participation, kind)


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
    participation: str = "fixed",
    kind: str | None = None,
) -> float:
    """The smallest noise multiplier z whose epsilon after ``rounds`` rounds is at most
    ``target_epsilon`` (``dp_accounting.mechanism_calibration``, to 0.1% of z: epsilon then
    lands within 1% of the target). With adaptive clipping z must stay below 2 sigma_b
    (Poisson: sigma_b). ``participation`` and ``kind`` as :func:`accountant`'s; Poisson with
    RDP calibrates at the delta left after the overflow term (the module docstring).

    Raises AccountingError naming ``--dp-epsilon`` when no noise level meets the target.
    """
    from dp_accounting import dp_event, mechanism_calibration

    if not target_epsilon > 0:
        raise AccountingError(
            f"--dp-epsilon {target_epsilon} is not allowed; allowed: a target epsilon > 0"
        )
    kind = kind or default_accountant(participation)
    share = 1 if participation == "poisson" else 2  # the count's noise in the update's units
    upper = MAX_NOISE if clip_count_noise is None else share * clip_count_noise * (1 - 1e-6)
    capacity = None
    if participation == "poisson":
        from jaxfl.mechanisms.client_round import poisson_capacity

        capacity = poisson_capacity(num_clients, m / num_clients)
        if kind == "rdp":  # the overflow term at the target, taken off delta
            beta = overflow_probability(num_clients, m, capacity)
            delta = delta - rounds * beta * (1 + math.exp(min(target_epsilon, 700)))
            if not delta > 0:
                raise AccountingError(
                    f"--dp-epsilon {target_epsilon}: too large for RDP's overflow term; "
                    "use --dp-accountant pld"
                )

    def rounds_event(z: float):
        return dp_event.SelfComposedDpEvent(
            round_event(
                z,
                num_clients,
                m,
                clip_count_noise,
                participation,
                capacity if kind == "pld" else None,
            ),
            rounds,
        )

    def fresh():
        return _accountant(participation, kind)

    def epsilon(z: float) -> float:
        with _quiet_absl():
            return fresh().compose(rounds_event(z)).get_epsilon(delta)

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
    with _quiet_absl():
        return float(
            mechanism_calibration.calibrate_dp_mechanism(
                fresh,
                rounds_event,
                target_epsilon,
                delta,
                bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi),
                tol=1e-4 * lo,
            )
        )
