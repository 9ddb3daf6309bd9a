"""The flags of individual algorithms (DS-FL, FedAvg's server, the personalization baselines).

Kept apart from :mod:`jaxfl.cli.flags` (data, model, training and run flags) so each file stays
short. An algorithm's config class takes the values of the flags of the same names
(:func:`jaxfl.experiments.builder.config_from_args`); flags an algorithm does not use are ignored.
"""

from __future__ import annotations

from jaxfl.core.names import AGGREGATIONS, FINETUNE_LAYERS, INCFL_RULES

# the per-algorithm flags each algorithm reads (its CONFIG's fields among the flags below); kept
# here, without importing the algorithms, so that `run.py --algo X --help` needs no JAX. A test
# checks it against every algorithm's CONFIG.
ALGORITHM_FLAGS = {
    "fedavg": ("server_opt", "server_lr", "unseen_clients"),
    "dsfl": (
        "public_per_round",
        "distill_epochs",
        "distill_lr",
        "distill_batch_size",
        "temperature",
        "aggregation",
    ),
    "local": (),
    "finetune": (
        "server_opt",
        "server_lr",
        "unseen_clients",
        "finetune_epochs",
        "finetune_layers",
        "finetune_lr",
    ),
    "ditto": ("server_opt", "server_lr", "ditto_lambda", "personal_epochs", "personal_lr"),
    "mrmtl": ("mrmtl_lambda",),
    "hypcluster": ("num_clusters", "cluster_warmup"),
    "perfedavg": ("server_opt", "server_lr", "meta_lr", "personal_steps"),
    "incfl": (
        "server_opt",
        "server_lr",
        "unseen_clients",
        "incfl_rule",
        "incfl_c",
        "incfl_eps",
        "incfl_tau",
        "incfl_floor",
    ),
    "fd": ("fd_beta",),
    "feddf": (
        "distill_batch_size",
        "server_distill_steps",
        "server_distill_lr",
        "distill_temperature",
        "distill_patience",
        "distill_check_every",
        "distill_val_fraction",
    ),
    "fedmd": (
        "public_per_round",
        "fedmd_lr",
        "fedmd_digest_epochs",
        "fedmd_digest_batch",
        "fedmd_public_epochs",
        "fedmd_private_epochs",
    ),
    "fccl": (
        "public_per_round",
        "fccl_lr",
        "fccl_lambda",
        "fccl_collab_steps",
        "fccl_pretrain_epochs",
    ),
    "fedbuff": ("concurrency", "buffer", "staleness", "server_opt", "server_lr"),
    "fedprox": ("server_opt", "server_lr", "unseen_clients", "prox_mu"),
    "scaffold": ("server_lr",),
    "fednova": ("server_opt", "server_lr"),
    "feddyn": ("feddyn_alpha",),
    "moon": ("server_opt", "server_lr", "moon_mu", "moon_temperature"),
}


def add_algorithm_arguments(a) -> None:
    """Add the per-algorithm flags with ``a = parser.add_argument``."""
    add_async_arguments(a)
    a(
        "--public-per-round",
        type=int,
        default=1000,
        help="dsfl, fedmd, fccl: public samples drawn each round (default 1000; FedMD's "
        "authors 5000, FCCL's public batch 512)",
    )
    a("--distill-epochs", type=int, default=5, help="DS-FL: distillation epochs (default 5)")
    a("--distill-lr", type=float, default=None, help="DS-FL: distillation lr (default: --lr)")
    a(
        "--distill-batch-size",
        type=int,
        default=None,
        help="dsfl, feddf: distillation batch size (default: --batch-size)",
    )
    a(
        "--temperature",
        type=float,
        default=0.1,
        help="DS-FL: ERA softmax temperature T > 0 (default 0.1)",
    )
    a(
        "--aggregation",
        default="era",
        help=f"DS-FL soft-label aggregation: {', '.join(AGGREGATIONS)} (era: entropy reduction, "
        "sa: simple average; default era)",
    )
    a(
        "--server-opt",
        default="sgd",
        help="fedavg, fedprox, fednova, moon, finetune, ditto, perfedavg: server optimizer: sgd "
        "(FedAvg), momentum (FedAvgM), adam (FedAdam)",
    )
    a("--server-lr", type=float, default=1.0, help="server learning rate (default 1.0)")
    a(
        "--server-distill-steps",
        type=int,
        default=500,
        help="feddf: the most server distillation steps per group and round (paper 10,000; "
        "default 500)",
    )
    a(
        "--server-distill-lr",
        type=float,
        default=1e-3,
        help="feddf: server Adam lr, cosine-decayed over the steps (default 1e-3)",
    )
    a(
        "--distill-temperature",
        type=float,
        default=1.0,
        help="feddf: temperature tau of the ensemble distillation KL (default 1)",
    )
    a(
        "--distill-patience",
        type=int,
        default=100,
        help="feddf: stop distilling after this many steps without a lower validation KL "
        "(paper 1,000; default 100)",
    )
    a(
        "--distill-check-every",
        type=int,
        default=50,
        help="feddf: measure the validation KL every N distillation steps (default 50)",
    )
    a(
        "--distill-val-fraction",
        type=float,
        default=0.1,
        help="feddf: fraction of the public set held out to validate distillation (default 0.1)",
    )
    a(
        "--fedmd-lr",
        type=float,
        default=1e-3,
        help="fedmd: Adam lr of transfer learning, digest and revisit (default 1e-3)",
    )
    a(
        "--fedmd-digest-epochs",
        type=int,
        default=1,
        help="fedmd: epochs regressing the consensus on the round's public sample (default 1)",
    )
    a(
        "--fedmd-digest-batch",
        type=int,
        default=256,
        help="fedmd: digest batch size (default 256)",
    )
    a(
        "--fedmd-public-epochs",
        type=int,
        default=1,
        help="fedmd: transfer learning at init, epochs on the labeled public set (default 1)",
    )
    a(
        "--fedmd-private-epochs",
        type=int,
        default=1,
        help="fedmd: transfer learning at init, then epochs on private data (default 1)",
    )
    a(
        "--fccl-lr",
        type=float,
        default=1e-3,
        help="fccl: Adam lr of pretraining, the collaborative step and local training "
        "(default 1e-3)",
    )
    a(
        "--fccl-lambda",
        type=float,
        default=0.0051,
        help="fccl: weight of the off-diagonal cross-correlation terms (default 0.0051)",
    )
    a(
        "--fccl-collab-steps",
        type=int,
        default=1,
        help="fccl: cross-correlation steps on the round's public batch (default 1)",
    )
    a(
        "--fccl-pretrain-epochs",
        type=int,
        default=1,
        help="fccl: epochs of private pretraining at init; the result is the frozen "
        "intra-domain teacher (default 1)",
    )
    a(
        "--fd-beta",
        type=float,
        default=0.5,
        help="fd: weight beta of KL(softmax(global logits of y) || softmax(f(x))) in the local "
        "loss (default 0.5)",
    )
    a(
        "--unseen-clients",
        type=int,
        default=0,
        help="fedavg, finetune, incfl: the last U clients never train and are only evaluated "
        "(generalization to unseen clients; default 0)",
    )
    a(
        "--incfl-rule",
        choices=INCFL_RULES,
        default=INCFL_RULES[0],
        help="incfl: the aggregation rule. maxfl (default): MaxFL's q_k = s(1 - s), "
        "s = sigmoid(c x_k), x_k = F_k(w_t) - F_k(local), step eta_g (--server-lr) "
        "sum q_k (w_k - w_t) / (sum q_k + eps); bump: the earlier n_k-weighted bump of "
        "width --incfl-tau with floor --incfl-floor",
    )
    a(
        "--incfl-c",
        type=float,
        default=1.0,
        help="incfl maxfl: sharpness c of the sigmoid, in 1/loss units (default 1)",
    )
    a(
        "--incfl-eps",
        type=float,
        default=1e-3,
        help="incfl maxfl: eps added to sum_k q_k in the step's denominator (default 1e-3)",
    )
    a(
        "--incfl-tau",
        type=float,
        default=0.5,
        help="incfl bump: width tau (in loss units) of the weight bump around F_k(w) = "
        "F_k(local) (default 0.5)",
    )
    a(
        "--incfl-floor",
        type=float,
        default=0.05,
        help="incfl bump: the smallest aggregation weight, as a fraction of n_k (default 0.05; 1 "
        "is FedAvg)",
    )
    a(
        "--finetune-epochs",
        default="0,1,2,5",
        help="finetune: candidate fine-tuning epochs, comma-separated; the one with the best mean "
        "accuracy on the clients' validation splits is used (0 = no fine-tuning; default "
        "0,1,2,5)",
    )
    a(
        "--finetune-layers",
        default="all",
        help=f"finetune: layers to fine-tune: {', '.join(FINETUNE_LAYERS)} (last: the output "
        "layer only; default all)",
    )
    a("--finetune-lr", type=float, default=None, help="finetune: fine-tuning lr (default: --lr)")
    a(
        "--prox-mu",
        type=float,
        default=0.01,
        help="fedprox: mu of the proximal term (mu/2)||w - w_t||^2 added to every local loss "
        "(the paper tries 0.001 to 1; default 0.01)",
    )
    a(
        "--feddyn-alpha",
        type=float,
        default=0.01,
        help="feddyn: alpha of the dynamic regularizer -<g_k, w> + alpha/2 ||w - w_t||^2 "
        "(the paper uses 0.1, 0.01, 0.001; default 0.01)",
    )
    a(
        "--moon-mu",
        type=float,
        default=1.0,
        help="moon: mu, the weight of the model-contrastive loss (the paper: 5 on CIFAR-10, 1 "
        "on CIFAR-100; default 1)",
    )
    a(
        "--moon-temperature",
        type=float,
        default=0.5,
        help="moon: tau, the contrastive loss's temperature (default 0.5)",
    )
    a(
        "--ditto-lambda",
        type=float,
        default=0.1,
        help="ditto: lambda of the personal objective f_k(v) + lambda/2 ||v - w||^2 (default 0.1)",
    )
    a(
        "--personal-epochs",
        type=int,
        default=None,
        help="ditto: epochs of the personal update per round (default: --local-epochs)",
    )
    a("--personal-lr", type=float, default=None, help="ditto: personal-update lr (default: --lr)")
    a(
        "--mrmtl-lambda",
        type=float,
        default=0.1,
        help="mrmtl: lambda of f_k(v) + lambda/2 ||v - mean of the personal models||^2 "
        "(default 0.1)",
    )
    a("--num-clusters", type=int, default=2, help="hypcluster: cluster models K (default 2)")
    a(
        "--cluster-warmup",
        type=float,
        default=0.0,
        help="hypcluster: fraction of --rounds in which clients join a random cluster before "
        "choosing by loss (default 0)",
    )
    a(
        "--meta-lr",
        type=float,
        default=None,
        help="perfedavg: inner (personalization) step size alpha (default: --lr)",
    )
    a(
        "--personal-steps",
        type=int,
        default=1,
        help="perfedavg: gradient steps a client takes from the global model before it is "
        "evaluated (default 1)",
    )


def add_async_arguments(a) -> None:
    """FedBuff's flags (``jaxfl/algorithms/fedbuff.py``)."""
    a(
        "--concurrency",
        type=int,
        default=None,
        help="fedbuff: M, clients training at once, each from the model version it downloaded "
        "(default --clients-per-round, else every client)",
    )
    a(
        "--buffer",
        type=int,
        default=None,
        help="fedbuff: K, the server applies an update when K uploads have arrived (1..M; "
        "1 is FedAsync; default max(1, M // 5))",
    )
    a(
        "--staleness",
        default="polynomial:0.5",
        help="fedbuff: staleness weight s(tau) of an update tau server steps old: constant, "
        "polynomial:A ((1+tau)^-A), hinge:A:B (1 up to B, then 1/(A(tau-B)+1)) "
        "(default polynomial:0.5, FedBuff's)",
    )
