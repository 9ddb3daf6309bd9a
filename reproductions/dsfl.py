"""DS-FL (Itahara et al., IEEE TMC 2021): similar accuracy to FedAvg under non-IID private data at
a small fraction of its traffic, and ERA beats SA.

Three sweeps on the same partitions (seeds in one compiled call each): DS-FL with ERA, DS-FL with
SA, FedAvg. Every client holds 2 classes (the paper's non-IID setting). Measured: the server
model's test accuracy, the bytes uploaded + downloaded until it first reaches the target accuracy
(per seed; FedAvg sends the model, DS-FL soft labels on the round's public sample), their ratio,
and ERA minus SA over seeds (paired: the same seed is the same data).
"""

from __future__ import annotations

import math

from reproductions import common

NAME = "dsfl"
TITLE = "DS-FL with ERA (Itahara et al., IEEE TMC 2021)"
CLAIM = (
    "Under non-IID private data (2 classes per client), DS-FL with ERA reaches accuracy similar "
    "to FedAvg's with up to 99% less communication, and ERA beats simple averaging (SA)."
)
PAPER = "up to 99% less communication than FedAvg at similar accuracy (MNIST, non-IID); ERA > SA"
HPARAMS = (
    "The paper's setting as far as it transfers: 2 classes per client, 1,000 public samples per "
    "round, 5 distillation epochs, ERA temperature 0.1 (the authors' lab code's default); "
    "FedAvg's 2NN (784-200-200-10) for both algorithms at cpu scale instead of the paper's CNN "
    "(a smaller model makes FedAvg's traffic, and so the saving, smaller: conservative)."
)
SETTINGS = {
    "ci": "blobs, 20 clients x 2 classes, all 20 per round, MLP 32, 4 rounds, 2 seeds",
    "cpu": "MNIST, 100 clients x 2 classes, every client every round (the authors' code: sample "
    "ratio 1.0), 2NN, 20 rounds (evaluated every 2nd), 2 local epochs, 5 distillation epochs, "
    "1,000 open samples per round from a 10,000-example open set, 3 seeds; the independent "
    "reference (reproductions/references/dsfl.py) on the same setting and seeds",
    "paper": "MNIST (TFDS), 100 clients x 2 classes, every client every round, LeNet-5, 100 "
    "rounds, 5 local epochs, 3 seeds",
}
DEVIATIONS = (
    "Not the paper's: 2 local epochs instead of the authors' code's 5 and 20 rounds (the cpu "
    "budget); the 2NN instead of the paper's CNN (a smaller model makes FedAvg's traffic, and "
    "so DS-FL's saving, smaller: conservative); the open set held out of MNIST's train split."
)
TARGET = {"ci": 0.35, "cpu": 0.8, "paper": 0.9}  # server test accuracy, fixed before measuring


def _base(ctx: common.Context) -> list[str]:
    if ctx.scale == "ci":
        size = ["--clients", "20", "--clients-per-round", "20", "--model", "mlp-32"]
        size += ["--rounds", "4", "--public-per-round", "500", "--distill-epochs", "2"]
    elif ctx.scale == "cpu":
        size = ["--clients", "100", "--clients-per-round", "100", "--model", "mlp"]
        size += ["--rounds", str(REFERENCE["rounds"]), "--eval-every", "2"]
        size += ["--local-epochs", str(REFERENCE["local_epochs"])]
        size += ["--public-size", str(REFERENCE["open_size"])]
    else:
        size = ["--clients", "100", "--clients-per-round", "100", "--model", "lenet5"]
        size += ["--rounds", "100", "--local-epochs", "5"]
    return [
        *ctx.mnist(),
        "--partition",
        "classes",
        "--classes-per-client",
        "2",
        "--seeds",
        str(ctx.seeds),
        *size,
    ]


# the cpu scale's setting, shared by jaxfl's runs and the independent reference
REFERENCE = {
    "clients": 100,
    "classes_per_client": 2,
    "open_size": 10000,
    "open_per_round": 1000,
    "rounds": 20,
    "local_epochs": 2,
    "distill_epochs": 5,
    "batch": 50,
    "lr": 0.1,
}


def reference(ctx: common.Context) -> dict[str, list[float]]:
    """The independent reference's final server accuracy per seed for ERA, SA and FedAvg, on
    the cpu scale's setting (cached in the entry's folder: a stopped reproduction continues)."""
    from reproductions.references import dsfl as ref

    found = common.reference_runs(ctx, ref.run, ("era", "sa", "fedavg"), ctx.seeds, **REFERENCE)
    return {a: [history[-1] for history in found[a]] for a in found}


def runs(ctx: common.Context) -> dict[str, list[str]]:
    base = _base(ctx)
    return {
        "era": ["--algo", "dsfl", "--aggregation", "era", *base],
        "sa": ["--algo", "dsfl", "--aggregation", "sa", *base],
        "fedavg": ["--algo", "fedavg", *base],
    }


def _bytes(folder):
    rounds, acc = common.curve(folder, "test_acc")
    _, up = common.curve(folder, "comm_up_bytes_total")
    _, down = common.curve(folder, "comm_down_bytes_total")
    return rounds, acc, up + down


def analyze(ctx: common.Context, dirs: dict) -> common.Finding:
    target = TARGET[ctx.scale]
    acc = {k: common.finals(dirs[k], "test_acc") for k in ("era", "sa", "fedavg")}
    traffic, curves = {}, {}
    for k in ("era", "fedavg"):
        rounds, values, total = _bytes(dirs[k])
        curves[k] = (rounds, values, total)
        traffic[k] = common.first_reaching(rounds, values, target, total)
    ratios = [d / f for d, f in zip(traffic["era"], traffic["fedavg"], strict=True)]
    per_round = {k: common.traffic_per_round(dirs[k]) for k in curves}
    era_sa = common.difference(acc["era"], acc["sa"])
    gap = common.difference(acc["era"], acc["fedavg"])
    rows = [
        ("server test accuracy, DS-FL (ERA)", "", common.fmt(acc["era"])),
        ("server test accuracy, DS-FL (SA)", "", common.fmt(acc["sa"])),
        ("test accuracy, FedAvg", "", common.fmt(acc["fedavg"])),
        ("traffic per round (up + down, all sampled clients)", "",
         f"DS-FL {common.mib(per_round['era'])}, FedAvg {common.mib(per_round['fedavg'])}"),
        (f"MiB to reach {target:.0%}, DS-FL (ERA)", "", common.fmt(traffic["era"], 2, 2**-20)),
        (f"MiB to reach {target:.0%}, FedAvg", "", common.fmt(traffic["fedavg"], 2, 2**-20)),
        ("DS-FL / FedAvg traffic to the target", "<= 0.01 (up to 99% less)",
         common.fmt(ratios, 4)),
        ("ERA - SA, final accuracy (paired)", "> 0",
         f"{era_sa['mean']:+.3f} (95% CI {era_sa['ci95'][0]:+.3f} .. {era_sa['ci95'][1]:+.3f})"),
    ]  # fmt: skip
    ref = reference(ctx) if ctx.scale == "cpu" else None
    if ref is not None:
        ref_era_sa = common.difference(ref["era"], ref["sa"])
        vs_ref = {k: common.unpaired(acc[k], ref[k]) for k in ("era", "sa", "fedavg")}
        rows += [
            ("reference: server test accuracy, DS-FL (ERA)", "", common.fmt(ref["era"])),
            ("reference: server test accuracy, DS-FL (SA)", "", common.fmt(ref["sa"])),
            ("reference: test accuracy, FedAvg", "", common.fmt(ref["fedavg"])),
            ("reference: ERA - SA (paired)", "> 0", common.paired(ref_era_sa)),
        ] + [
            (f"jaxfl - reference, {label} (unpaired)", "0 within the CI", common.paired(vs_ref[k]))
            for k, label in (("era", "ERA"), ("sa", "SA"), ("fedavg", "FedAvg"))
        ]  # fmt: skip
    plots = [_plot(ctx, dirs, curves, target)]
    finite = [r for r in ratios if math.isfinite(r)]
    saving = bool(finite) and len(finite) == len(ratios) and max(finite) < 0.1
    era_wins = era_sa["ci95"][0] > 0
    close = gap["mean"] > -0.05  # "similar accuracy": within 5 points of FedAvg, on average
    reached = {k: sum(math.isfinite(v) for v in traffic[k]) for k in traffic}
    n = len(ratios)
    if finite:
        first = f"where both reached {target:.0%}, DS-FL used {1 - max(finite):.1%} to "
        first += f"{1 - min(finite):.1%} less traffic ({len(finite)} of {n} seeds)"
    else:
        first = f"DS-FL (ERA) reached {target:.0%} in {reached['era']} of {n} seeds, FedAvg in "
        first += f"{reached['fedavg']}, so no traffic ratio could be taken"
    parts = [
        first,
        f"DS-FL's per-round traffic is {per_round['era'] / per_round['fedavg']:.1%} of FedAvg's",
        f"its final accuracy is {gap['mean']:+.3f} from FedAvg's",
        "ERA beat SA (paired CI above 0)"
        if era_wins
        else f"ERA did not beat SA significantly ({era_sa['mean']:+.3f})",
    ]
    verdict = (
        "holds"
        if saving and era_wins and close
        else "holds partly"
        if saving or era_wins
        else "does not hold"
    )
    why = "; ".join(parts) + "."
    if ref is not None:
        agreed = [label for k, label in (("era", "ERA"), ("sa", "SA"), ("fedavg", "FedAvg"))
                  if common.agree(vs_ref[k])]  # fmt: skip
        why += (
            f" The independent reference (reproductions/references/dsfl.py: its own data "
            f"pipeline, partition, initialisation and per-client loop) gives ERA "
            f"{common.fmt(ref['era'])}, SA {common.fmt(ref['sa'])}, FedAvg "
            f"{common.fmt(ref['fedavg'])}; ERA - SA {common.paired(ref_era_sa)}; jaxfl and the "
            f"reference agree within the seeds' 95% CI for "
            f"{', '.join(agreed) if agreed else 'none of the three'}"
            f"{'' if len(agreed) == 3 else ' (see the rows for the gaps)'}."
        )
    if ctx.scale == "cpu":
        why += " " + DEVIATIONS
    chance = 0.1
    return common.Finding(
        verdict,
        why,
        rows,
        learned=common.learned(acc["era"], chance) and common.learned(acc["fedavg"], chance),
        headline=f"accuracy ERA {common.fmt(acc['era'])} vs FedAvg {common.fmt(acc['fedavg'])}; "
        f"{target:.0%} reached by DS-FL in {reached['era']} of {n} seeds, FedAvg in "
        f"{reached['fedavg']}; traffic per round {per_round['era'] / per_round['fedavg']:.1%} of "
        f"FedAvg's; ERA - SA {era_sa['mean']:+.3f}",
        plots=plots,
        data={
            "accuracy": acc,
            "traffic_to_target": traffic,
            "ratio": ratios,
            "target": target,
            "reference": ref,
        },  # fmt: skip
    )


def _plot(ctx, dirs, curves, target) -> str:
    plt, fig, (ax_round, ax_bytes) = common.figure(2)
    labels = (("era", "DS-FL (ERA)"), ("sa", "DS-FL (SA)"), ("fedavg", "FedAvg"))
    for i, (key, label) in enumerate(labels):  # one colour per algorithm in both panels
        rounds, values = common.curve(dirs[key], "test_acc")
        common.plot_bands(ax_round, rounds, values, label, color=f"C{i}")
        if key in curves:
            x = curves[key][2].mean(0) / 2**20
            common.plot_bands(ax_bytes, x, values, label, color=f"C{i}")
    for ax in (ax_round, ax_bytes):
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("server test accuracy")
        ax.legend()
    ax_round.set_xlabel("round")
    ax_bytes.set_xlabel("MiB uploaded + downloaded (log)")
    ax_bytes.set_xscale("log")
    fig.suptitle("DS-FL vs FedAvg, 2 classes per client (mean, 95% CI over seeds)")
    return common.save(plt, fig, ctx.out / "dsfl.png")
