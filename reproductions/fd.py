"""FD (Jeong et al. 2018): federated distillation improves on local training under non-IID data
at a tiny fraction of FedAvg's traffic.

Three sweeps on the same partitions (2 classes per client): FD, local-only training, FedAvg.
FD and local keep one model per client, so both are scored as the paper scores devices: every
client's model on the global test set (all classes; ``others_acc_mean``, on a fixed subset of
500 test examples) and on its own test split (its own classes; ``client_acc_mean``). FedAvg's
global model is the accuracy reference, its model upload the traffic reference.
"""

from __future__ import annotations

from reproductions import common

NAME = "fd"
TITLE = "FD, federated distillation (Jeong et al. 2018)"
CLAIM = (
    "Exchanging per-label mean logits (FD) improves the clients' models over local training "
    "under non-IID data, at a tiny fraction of FedAvg's traffic."
)
PAPER = (
    "FD's per-round payload is the L x L logit table, orders of magnitude below a model; it "
    "gains accuracy over standalone training on non-IID MNIST (its figures; with FAug, "
    "which jaxfl does not implement, more)"
)
HPARAMS = (
    "beta = 0.5 (weight of the distillation term; jaxfl's default, the paper does not fix one "
    "in its text), 2 classes per client, SGD 0.1, batch 50; the same for local and FedAvg."
)
SETTINGS = {
    "ci": "blobs, 20 clients x 2 classes, 10 per round, MLP 32, 4 rounds, 2 seeds",
    "cpu": "MNIST, 50 clients x 2 classes, 10 per round, 2NN, 30 rounds (evaluated every 3rd), "
    "3 seeds",
    "paper": "MNIST (TFDS), 100 clients x 2 classes, 10 per round, LeNet-5, 100 rounds, 3 seeds",
}


def _base(ctx: common.Context) -> list[str]:
    size = {
        "ci": ["--clients", "20", "--clients-per-round", "10", "--model", "mlp-32"]
        + ["--rounds", "4"],
        "cpu": ["--clients", "50", "--clients-per-round", "10", "--model", "mlp"]
        + ["--rounds", "30", "--eval-every", "3"],
        "paper": ["--clients", "100", "--clients-per-round", "10", "--model", "lenet5"]
        + ["--rounds", "100"],
    }[ctx.scale]
    return [*ctx.mnist(), "--partition", "classes", "--classes-per-client", "2"] + [
        "--seeds",
        str(ctx.seeds),
        *size,
    ]


def runs(ctx: common.Context) -> dict[str, list[str]]:
    base = _base(ctx)
    return {name: ["--algo", name, *base] for name in ("fd", "local", "fedavg")}


def analyze(ctx: common.Context, dirs: dict) -> common.Finding:
    glob = {k: common.finals(dirs[k], "others_acc_mean") for k in ("fd", "local")}
    own = {k: common.finals(dirs[k], "client_acc_mean") for k in ("fd", "local")}
    fedavg = common.finals(dirs["fedavg"], "test_acc")
    per_round = {k: common.traffic_per_round(dirs[k]) for k in ("fd", "fedavg")}
    ratio = per_round["fd"] / per_round["fedavg"]
    gain = common.difference(glob["fd"], glob["local"])
    gain_own = common.difference(own["fd"], own["local"])
    rows = [
        ("clients' models on the global test set, FD", "", common.fmt(glob["fd"])),
        ("clients' models on the global test set, local only", "", common.fmt(glob["local"])),
        ("FD - local, global test set (paired)", "> 0", _ci(gain)),
        ("clients' models on their own test split, FD", "", common.fmt(own["fd"])),
        ("clients' models on their own test split, local only", "", common.fmt(own["local"])),
        ("FD - local, own test split (paired)", "> 0", _ci(gain_own)),
        ("FedAvg's global model, test set", "", common.fmt(fedavg)),
        ("traffic per round, FD / FedAvg", "tiny",
         f"{ratio:.5f} ({common.mib(per_round['fd'])} vs {common.mib(per_round['fedavg'])})"),
    ]  # fmt: skip
    better = gain.get("n", 0) > 1 and gain["ci95"][0] > 0
    better_own = gain_own.get("n", 0) > 1 and gain_own["ci95"][0] > 0
    cheap = ratio < 0.01
    if better and cheap:
        verdict = "holds"
    elif (better or better_own) and cheap:
        verdict = "holds partly"
    else:
        verdict = "does not hold"
    why = (
        f"FD's traffic is {ratio:.2%} of FedAvg's per round; on the global test set FD is "
        f"{gain['mean']:+.3f} from local training"
        + common.significance(gain)
        + f", on the clients' own classes {gain_own['mean']:+.3f}"
        + common.significance(gain_own)
        + ". A client that never sees a class never predicts it: FD's table only regularizes "
        "the logits of the classes a client holds, so most of the global test set stays out of "
        f"reach (FedAvg's one model: {common.stats(fedavg)['mean']:.3f})."
    )
    plots = [_plot(ctx, dirs)]
    return common.Finding(
        verdict,
        why,
        rows,
        learned=common.learned(own["fd"], 0.5) and common.learned(fedavg, 0.1),
        headline=f"global test: FD - local {gain['mean']:+.3f} "
        f"({gain['ci95'][0]:+.3f} .. {gain['ci95'][1]:+.3f}); traffic {ratio:.2%} of FedAvg's",
        plots=plots,
        data={"global": glob, "own": own, "fedavg": fedavg, "traffic_ratio": ratio},
    )


def _ci(d: dict) -> str:
    return common.paired(d)


def _plot(ctx, dirs) -> str:
    plt, fig, (ax_global, ax_own) = common.figure(2)
    for key, label in (("fd", "FD"), ("local", "local only")):
        rounds, values = common.curve(dirs[key], "others_acc_mean")
        common.plot_bands(ax_global, rounds, values, label)
        rounds, values = common.curve(dirs[key], "client_acc_mean")
        common.plot_bands(ax_own, rounds, values, label)
    rounds, values = common.curve(dirs["fedavg"], "test_acc")
    common.plot_bands(ax_global, rounds, values, "FedAvg (global model)")
    ax_global.set_title("clients' models on the global test set")
    ax_own.set_title("on their own test splits")
    for ax in (ax_global, ax_own):
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.legend()
    return common.save(plt, fig, ctx.out / "fd.png")
