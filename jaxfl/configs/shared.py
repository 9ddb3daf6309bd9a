"""The settings many algorithms share, declared once: each is a function returning the field (so
an algorithm may give its own default, e.g. DS-FL's 5 local epochs) or a mixin dataclass of fields
(differential privacy, the virtual clock, FedAvg's server optimizer).

Every help text and check here is the only one: the command line, ``--help`` and the library's
checks read them (:mod:`jaxfl.configs.fields`).
"""

from __future__ import annotations

import dataclasses

from jaxfl.configs.fields import setting
from jaxfl.core.names import ATTACKS, PARTICIPATIONS, SERVER_OPTS

SPEED_HELP = (
    "constant:V, lognormal:SIGMA (median 1), two-tier:FRACTION:FACTOR (that fraction of the "
    "clients FACTOR times slower than 1), uniform:LO:HI, a number, or a file of one value per "
    "client (.npy or text)"
)


def clients_per_round(default_help: str = "all C"):
    """m, the clients sampled per round (None: every client)."""
    return setting(
        None,
        "m, clients sampled per round: exactly m, uniform without replacement (with "
        "--participation poisson: m in expectation)",
        check=">= 1",
        default_help=default_help,
    )


def local_epochs(default: int = 1):
    return setting(default, "local epochs on private data", check=">= 1")


def batch_size(default: int = 50):
    return setting(default, "local minibatch size", check=">= 1")


def lr(default: float = 0.1):
    return setting(default, "client SGD learning rate", check="> 0")


def client_chunk():
    return setting(
        None,
        "process sampled clients K at a time (per device) inside the jitted round to bound "
        "memory; with uneven clients sorted by size (FedAvg's client side), the widest chunk of "
        "a schedule whose chunks narrow as sizes grow",
        check=">= 1",
        default_help="cache-sized chunks on a CPU; on accelerators the largest chunk whose round "
        "fits in 80% of device memory, measured from the compiled round",
    )


def public_per_round(default: int):
    return setting(
        default,
        "public samples drawn each round (FedMD's authors 5000, FCCL's public batch 512)",
        check=">= 1",
    )


def unseen_clients():
    return setting(
        0,
        "the last U clients never train and are only evaluated (generalization to unseen clients)",
        check=">= 0",
    )


def server_lr(default: float = 1.0):
    return setting(default, "server learning rate", check="> 0")


def server_opt():
    return setting(
        "sgd",
        "server optimizer: sgd (FedAvg), momentum (FedAvgM), adam (FedAdam), yogi (FedYogi)",
        choices=SERVER_OPTS,
    )


def server_momentum():
    return setting(0.9, "momentum of --server-opt momentum", check="[0, 1)")


def server_epsilon():
    return setting(
        None,
        "epsilon of --server-opt adam or yogi (Reddi et al.'s tau, the degree of adaptivity: "
        "their best EMNIST-62 FedAdam value is 1e-4, CIFAR-100's 0.1)",
        check="> 0",
        default_help="optax's: 1e-8 for adam, 1e-3 for yogi",
    )


def distill_batch_size():
    return setting(None, "distillation batch size", check=">= 1", default_help="--batch-size")


@dataclasses.dataclass(frozen=True)
class LocalTrainingFields:
    """The client-side settings every algorithm on the standard client side shares: m, E, B and
    the clients' learning rate, and the chunk of clients vmapped at once."""

    clients_per_round: int | None = clients_per_round()
    local_epochs: int = local_epochs()
    batch_size: int = batch_size()
    lr: float = lr()
    client_chunk: int | None = client_chunk()


@dataclasses.dataclass(frozen=True)
class ServerOptFields:
    """FedAvg's server optimizer (Reddi et al., ICLR 2021), read by
    :func:`jaxfl.algorithms.fedavg.flag_server_optimizer`."""

    server_opt: str = server_opt()
    server_lr: float = server_lr()
    server_momentum: float = server_momentum()
    server_epsilon: float | None = server_epsilon()


@dataclasses.dataclass(frozen=True)
class DPFields:
    """The DP settings, inherited by the config of every algorithm that supports DP
    (:mod:`jaxfl.mechanisms.privacy`).

    Attributes:
      dp_clip: S, the clip norm C_0 of each client's upload (None: no DP).
      dp_noise: z, the round's total noise multiplier (noise std z_D * C_t on the sum).
      dp_clip_quantile: gamma; set, the clip norm follows the gamma-quantile of the upload
        norms (adaptive clipping); None keeps C_t = S.
      dp_clip_lr: eta_C of the geometric clip update.
      dp_clip_count_noise: sigma_b, the noise of the clipped-count query (None: m / 20, the
        paper's recommendation).
    """

    dp_clip: float | None = setting(
        None,
        "user-level DP (DP-FedAvg): clip each client's upload (model update, or soft labels/"
        "logits) to this L2 norm S, weigh every client the same, add Gaussian noise to the sum",
        check="> 0",
        allowed="a clip norm > 0",
        default_help="no DP",
    )
    dp_noise: float = setting(
        0.0,
        "DP noise multiplier z: noise std z*S on the sum of the clipped uploads, divided by the "
        "clients per round (0: clipping only, epsilon infinite)",
        check=">= 0",
        allowed="a noise multiplier >= 0",
    )
    dp_clip_quantile: float | None = setting(
        None,
        "adaptive clipping (Andrew et al. 2021): the clip norm follows this quantile of the "
        "clients' upload norms, estimated privately (e.g. 0.5)",
        check="(0, 1)",
        allowed="0 < quantile < 1",
        default_help="fixed --dp-clip",
    )
    dp_clip_lr: float = setting(
        0.2,
        "adaptive clipping: learning rate of the geometric clip update",
        check="> 0",
        allowed="a learning rate > 0",
    )
    dp_clip_count_noise: float | None = setting(
        None,
        "adaptive clipping: noise std of the clipped-count query; part of --dp-noise's budget, "
        "so it must exceed --dp-noise / 2",
        check="> 0",
        allowed="a noise std > 0",
        default_help="clients per round / 20",
    )


@dataclasses.dataclass(frozen=True)
class ParticipationFields:
    """How the clients of a round are drawn (:mod:`jaxfl.mechanisms.client_round`), inherited by
    the config of every algorithm that can draw a cohort of varying size.

    Attributes:
      participation: ``fixed``, exactly m of the C clients, uniform without replacement; or
        ``poisson``, each client independently with probability q = m / C (the sampling of
        the DP-FedAvg literature's epsilons, accounted under add-or-remove adjacency).
    """

    participation: str = setting(
        "fixed",
        "how clients take part in a round: fixed (exactly --clients-per-round of C, uniform "
        "without replacement) or poisson (each client independently with probability q = "
        "--clients-per-round / C: a cohort of varying size, as DP-FedAvg's analysis assumes)",
        choices=PARTICIPATIONS,
    )


@dataclasses.dataclass(frozen=True)
class ClockFields:
    """The virtual clock's settings, inherited by the config of every algorithm that keeps a
    clock (:mod:`jaxfl.mechanisms.clock`).

    Attributes:
      client_speed: SPEC of each client's virtual seconds per local step.
      client_latency: SPEC of each client's network latency per dispatch (virtual seconds).
      round_deadline: T, a synchronous round's time budget (None: no deadline).
      round_first: K, a synchronous round moves on after the first K arrivals (None: all).
    """

    client_speed: str = setting(
        "constant:1",
        "each client's virtual seconds per local SGD step, drawn once from the seed: "
        f"{SPEED_HELP}; a dispatch lasts steps x this + --client-latency",
    )
    client_latency: str = setting(
        "0",
        f"each client's network latency per dispatch, virtual seconds: {SPEED_HELP} (values >= 0)",
    )
    round_deadline: float | None = setting(
        None,
        "synchronous rounds: move on at this virtual time; clients not back by then count as "
        "dropped",
        check="> 0",
        allowed="a virtual time > 0",
        default_help="wait for every sampled client",
    )
    round_first: int | None = setting(
        None,
        "synchronous rounds: over-selection, move on when the first K sampled clients are back; "
        "the rest count as dropped",
        check=">= 1",
        default_help="wait for all",
    )


@dataclasses.dataclass(frozen=True)
class FaultFields:
    """The fault settings every algorithm takes (:mod:`jaxfl.mechanisms.faults`)."""

    dropout: float = setting(
        0.0,
        "faults: probability that a sampled client's upload is lost each round; aggregation uses "
        "only received updates",
    )
    min_received: int = setting(
        1, "faults: apply a round only if at least this many updates arrive", check=">= 1"
    )
    straggler_fraction: float = setting(
        0.0, "faults: fraction of the sampled clients that are stragglers each round"
    )
    straggler_work: float = setting(
        0.5, "faults: fraction of its local steps a straggler completes"
    )
    adversary_fraction: float = setting(
        0.0,
        "faults: fraction of all clients that are adversarial, a fixed set drawn from --seed",
    )
    attack: str = setting(
        "none",
        "faults: what adversaries do (label_flip: any algorithm; random_logits, scaled_logits: "
        "dsfl; scaled_update: fedavg, fedprox, fedbuff)",
        choices=ATTACKS,
    )
    attack_scale: float = setting(
        10.0, "faults: the factor of scaled_update/scaled_logits, the std of random_logits"
    )
