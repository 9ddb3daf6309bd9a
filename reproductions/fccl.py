"""FCCL (Huang, Ye, Du, CVPR 2022): on a multi-domain federation of different architectures, FCCL
improves both inter-domain ("learn from others") and intra-domain ("be yourself") accuracy over
FedMD, FedDF and local training.

Four sweeps on the same multi-domain federation: three domains (MNIST, inverted, rotated by 90
degrees; offline stand-ins for the paper's Digits domains), one model architecture per domain
(the i-th --models group is the i-th domain). Intra-domain: each client's model on its own
domain's test split (``client_acc_mean``). Inter-domain: each client's model on every domain's
test set (``others_acc_mean``; for FedDF, which serves one model per group, the groups' models on
that set, ``test_acc_i``, averaged over the equal-sized groups).
"""

from __future__ import annotations

import numpy as np

from reproductions import common

NAME = "fccl"
TITLE = "FCCL (Huang, Ye, Du, CVPR 2022)"
CLAIM = (
    "On a multi-domain federation with different architectures, FCCL improves both "
    "inter-domain (learn from others) and intra-domain (be yourself) accuracy over FedMD, "
    "FedDF and local training."
)
PAPER = "FCCL best on both views on Digits and Office-31 (its Tables 1-2), over FedMD, FedDF, "
PAPER += "FML, RCFL and local training"
HPARAMS = (
    "The authors' code: Adam 1e-3, public batch 512, lambda 0.0051, one collaborative step, "
    "one pretraining epoch; FedMD at its defaults (Adam 1e-3), FedDF's at 200 distillation "
    "steps; every algorithm 1 local epoch, batch 50."
)
SETTINGS = {
    "ci": "blobs, blobs:invert; 12 clients, 6 per round, MLP 32 / logreg, 3 rounds, 2 seeds; "
    "FCCL, FedMD and local only",
    "cpu": "MNIST, MNIST:invert, MNIST:rot90; 30 clients (10 per domain), 9 per round, "
    "2NN / MLP 64-64 / logreg, 12 rounds, 1 local epoch, 3 seeds; the independent reference "
    "(reproductions/references/fccl.py) for FCCL and local only on the same setting and seeds",
    "paper": "MNIST, MNIST:invert, MNIST:rot90, MNIST:flip (TFDS); 40 clients, all per "
    "round, LeNet-5 / 2NN / ResNet-8 / MLP 64-64, 50 rounds, 3 seeds",
}
ALGOS = ("fccl", "fedmd", "feddf", "local")

# the cpu scale's setting, shared by jaxfl's runs and the independent reference
REFERENCE = {
    "per_domain": 10,
    "per_round": 3,
    "models": ((200, 200), (64, 64), ()),  # the 2NN, MLP 64-64, logistic regression
    "rounds": 12,
    "public_size": 10000,  # jaxfl's default: a sixth of the first domain's train split
}


def reference(ctx: common.Context) -> dict[str, list[dict]]:
    """The independent reference's final views (``{"intra", "inter"}``) per seed for FCCL and
    local-only training, on the cpu scale's setting (cached in the entry's folder)."""
    from reproductions.references import fccl as ref

    return common.reference_runs(ctx, ref.run, ("fccl", "local"), ctx.seeds, **REFERENCE)


NAMES = {"fccl": "FCCL", "fedmd": "FedMD", "feddf": "FedDF", "local": "local only"}


def _base(ctx: common.Context) -> list[str]:
    if ctx.scale == "ci":
        domains, models = "blobs,blobs:invert", "mlp-32:1,logreg:1"
        size = ["--clients", "12", "--clients-per-round", "6", "--rounds", "3"]
        size += ["--public-per-round", "128", "--server-distill-steps", "20"]
        size += ["--distill-check-every", "10", "--fedmd-public-epochs", "1"]
    elif ctx.scale == "cpu":
        domains, models = "mnist,mnist:invert,mnist:rot90", "mlp:1,mlp-64-64:1,logreg:1"
        size = ["--clients", "30", "--clients-per-round", "9", "--rounds", "12"]
        size += ["--server-distill-steps", "200", "--distill-check-every", "50"]
        size += ["--public-per-round", "512"]
        size += ["--data-dir", str(ctx.data_dir)]
    else:
        domains = "mnist,mnist:invert,mnist:rot90,mnist:flip"
        models = "lenet5:1,mlp:1,resnet8:1,mlp-64-64:1"
        size = ["--clients", "40", "--rounds", "50", "--public-per-round", "512"]
    size += ["--local-epochs", "1"]
    size += ["--client-val-fraction", "0"]  # local training keeps every example too
    return ["--domains", domains, "--models", models, "--partition", "iid"] + [
        "--seeds",
        str(ctx.seeds),
        *size,
    ]


def _algos(ctx: common.Context) -> tuple[str, ...]:
    """At ci scale FedDF is left out for CI's time (its group path: tests/test_groups.py)."""
    return tuple(a for a in ALGOS if not (ctx.scale == "ci" and a == "feddf"))


def runs(ctx: common.Context) -> dict[str, list[str]]:
    base = _base(ctx)
    return {algo: ["--algo", algo, *base] for algo in _algos(ctx)}


def _views(folder, algo) -> tuple[list[float], list[float]]:
    intra = common.finals(folder, "client_acc_mean")
    if algo == "feddf":  # one model per group: its accuracy on every domain's test set
        lines = [lines[-1] for lines in common.by_seed(folder).values()]
        keys = sorted(k for k in lines[0] if k.startswith("test_acc_"))
        inter = [float(np.mean([h[k] for k in keys])) for h in lines]
    else:
        inter = common.finals(folder, "others_acc_mean")
    return inter, intra


def analyze(ctx: common.Context, dirs: dict) -> common.Finding:
    algos = _algos(ctx)
    views = {a: _views(dirs[a], a) for a in algos}
    rows = []
    for a in algos:
        rows.append((f"{NAMES[a]}: inter-domain (all domains' test set)", "",
                     common.fmt(views[a][0])))  # fmt: skip
        rows.append((f"{NAMES[a]}: intra-domain (own domain's test split)", "",
                     common.fmt(views[a][1])))  # fmt: skip
    wins, worse = {}, []
    for other in algos[1:]:
        for v, view in enumerate(("inter", "intra")):
            d = common.difference(views["fccl"][v], views[other][v])
            wins[(other, view)] = d.get("n", 0) > 1 and d["ci95"][0] > 0
            if d.get("n", 0) > 1 and d["ci95"][1] < 0:
                worse.append(f"{NAMES[other]} ({view}, {d['mean']:+.3f})")
            rows.append((f"FCCL - {NAMES[other]}, {view} (paired)", "> 0", common.paired(d)))
    won = [k for k, w in wins.items() if w]
    # holds: better in every comparison; partly: in at least half of them
    verdict = (
        "holds"
        if len(won) == len(wins)
        else "holds partly"
        if 2 * len(won) >= len(wins)
        else "does not hold"
    )
    why = f"FCCL is significantly better in {len(won)} of {len(wins)} comparisons" + (
        " (" + ", ".join(f"{NAMES[o]} {view}" for o, view in won) + ")" if won else ""
    )
    why += f"; significantly worse than {', '.join(worse)}." if worse else "."
    ref = reference(ctx) if ctx.scale == "cpu" else None
    if ref is not None:
        agreed, compared, ref_gain = [], 0, {}
        for a in ("fccl", "local"):
            for v, view in enumerate(("inter", "intra")):
                theirs = [r[view] for r in ref[a]]
                rows.append((f"reference: {NAMES[a]}: {view}-domain", "", common.fmt(theirs)))
                d = common.unpaired(views[a][v], theirs)
                compared += 1
                agreed += [f"{NAMES[a]} {view}"] if common.agree(d) else []
                rows.append((f"jaxfl - reference, {NAMES[a]}, {view} (unpaired)",
                             "0 within the CI", common.paired(d)))  # fmt: skip
        for view in ("inter", "intra"):
            ref_gain[view] = common.difference(
                [r[view] for r in ref["fccl"]], [r[view] for r in ref["local"]]
            )
            rows.append((f"reference: FCCL - local only, {view} (paired)", "> 0",
                         common.paired(ref_gain[view])))  # fmt: skip
        why += (
            " The independent reference (reproductions/references/fccl.py: its own domains, "
            "splits, models, Adam and per-client loop) gives FCCL - local only "
            + ", ".join(f"{view} {common.paired(ref_gain[view])}" for view in ("inter", "intra"))
            + f"; jaxfl and the reference agree within the seeds' 95% CI in {len(agreed)} of "
            f"{compared} views" + ("" if len(agreed) == compared else " (see the rows)") + "."
        )
    return common.Finding(
        verdict,
        why,
        rows,
        learned=all(common.learned(views[a][1], 0.1) for a in algos),
        headline=f"FCCL inter {common.stats(views['fccl'][0])['mean']:.3f} / intra "
        f"{common.stats(views['fccl'][1])['mean']:.3f}; significantly ahead in {len(won)} of "
        f"{len(wins)} comparisons",
        plots=[_plot(ctx, views)],
        data={
            "inter": {a: views[a][0] for a in algos},
            "intra": {a: views[a][1] for a in algos},
            "reference": ref,
        },
    )


def _plot(ctx, views) -> str:
    plt, fig, (ax,) = common.figure(1)
    for a in views:
        inter, intra = (np.asarray(v) for v in views[a])
        ax.errorbar(
            intra.mean(), inter.mean(), xerr=_half(intra), yerr=_half(inter), fmt="o",
            capsize=3, label=NAMES[a],
        )  # fmt: skip
    ax.set_xlabel("intra-domain accuracy (be yourself)")
    ax.set_ylabel("inter-domain accuracy (learn from others)")
    ax.set_title("final round, mean and 95% CI over seeds")
    ax.legend()
    return common.save(plt, fig, ctx.out / "fccl.png")


def _half(values) -> float:
    s = common.stats(values)
    return s["ci95_half"] if s.get("n", 0) > 1 else 0.0
