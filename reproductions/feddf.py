"""FedDF (Lin, Kong, Stich, Jaggi, NeurIPS 2020, Table 2): ensemble distillation beats FedAvg, more
so under stronger label skew.

Sweeps of FedDF and FedAvg at the paper's Dirichlet alphas 1.0 and 0.1, the same partitions
for both algorithms at each alpha and seed. Measured: the global model's test accuracy, FedDF -
FedAvg per alpha (paired over seeds), and whether the gain at alpha 0.1 exceeds the gain at 1.0
(the difference of the paired differences, over seeds). At cpu scale also: the gain against
alpha (10, 1, 0.3, 0.1, 0.03) as one figure, and the independent reference
(reproductions/references/feddf.py) at the paper's two alphas, same setting, its first 3 seeds.
"""

from __future__ import annotations

from reproductions import common

NAME = "feddf"
TITLE = "FedDF, ensemble distillation (Lin et al., NeurIPS 2020)"
CLAIM = (
    "FedDF's server-side ensemble distillation beats FedAvg, and more so at Dirichlet alpha 0.1 "
    "than at 1.0."
)
PAPER = (
    "CIFAR-10, ResNet-8, 20 clients, 40% per round: FedDF 80.7 vs FedAvg 76.0 at alpha 1 "
    "(+4.7); 71.4 vs 62.2 at alpha 0.1 (+9.2)"
)
HPARAMS = (
    "The paper's federation shape (20 clients, 8 per round, Dirichlet 1.0 / 0.1) and server "
    "distillation (Adam 1e-3, temperature 1, early stopping on a held-out part of the "
    "unlabeled set); on a CPU MNIST and LeNet-5 instead of CIFAR-10 and ResNet-8, 1 local "
    "epoch instead of 40, at most 200 distillation steps instead of 10,000 (patience 100), "
    "the unlabeled set held out of MNIST's train split."
)
SETTINGS = {
    "ci": "blobs, 10 clients, 4 per round, MLP 32, Dirichlet 1.0 / 0.1, 3 rounds, 2 seeds",
    "cpu": "MNIST, 20 clients, 8 per round, LeNet-5, Dirichlet 1.0 / 0.1, 1 local epoch, "
    "10 rounds (evaluated every 2nd), 5 seeds",
    "paper": "configs/feddf-cifar10.toml: CIFAR-10 (TFDS), ResNet-8, CIFAR-100 unlabeled, "
    "40 local epochs, 100 rounds, 5 seeds",
}
ALPHAS = ("1.0", "0.1")  # the paper's
# 5 seeds at cpu scale: with 3, FedDF - FedAvg at both paper alphas was undecided (issue 30)
SEEDS = {"ci": 2, "cpu": 5, "paper": 5}
# the independent reference keeps 3 seeds at cpu scale (its per-client LeNet-5 loop is 45 of the
# entry's minutes at 3): the agreement check is Welch's test, which takes unequal seed counts
REFERENCE_SEEDS = {"ci": 2, "cpu": 3, "paper": 3}
DEPENDENCE_ALPHAS = ("10.0", "1.0", "0.3", "0.1", "0.03")  # the gain's figure, at cpu scale

# the cpu scale's setting, shared by jaxfl's runs and the independent reference
REFERENCE = {
    "clients": 20,
    "per_round": 8,
    "unlabeled_size": 10000,  # jaxfl's default public set: a sixth of MNIST's train split
    "rounds": 10,
    "local_epochs": 1,
    "batch": 50,
    "lr": 0.1,
    "model": "lenet5",
    "distill_steps": 200,
    "check_every": 50,
    "patience": 100,
}


def _base(ctx: common.Context) -> list[str]:
    seeds = ["--seeds", str(SEEDS[ctx.scale])]
    if ctx.scale == "paper":
        return ["--config", str(common.ROOT / "configs" / "feddf-cifar10.toml"), *seeds]
    if ctx.scale == "ci":
        size = ["--clients", "10", "--clients-per-round", "4", "--model", "mlp-32"]
        size += ["--rounds", "3", "--server-distill-steps", "20", "--distill-check-every", "10"]
    else:
        size = ["--clients", "20", "--clients-per-round", "8", "--model", "lenet5"]
        size += ["--rounds", "10", "--local-epochs", "1", "--server-distill-steps", "200"]
        size += ["--distill-patience", "100", "--distill-check-every", "50", "--eval-every", "2"]
    return [*ctx.mnist(), "--partition", "dirichlet", *seeds, *size]


def _alphas(ctx: common.Context) -> tuple[str, ...]:
    return DEPENDENCE_ALPHAS if ctx.scale == "cpu" else ALPHAS


def runs(ctx: common.Context) -> dict[str, list[str]]:
    base = _base(ctx)
    return {
        f"{algo}-alpha{alpha}": [*base, "--algo", algo, "--alpha", alpha]
        for alpha in _alphas(ctx)
        for algo in ("feddf", "fedavg")
    }


def reference(ctx: common.Context) -> dict[str, list[float]]:
    """The independent reference's final test accuracy per seed, ``{"feddf-alpha1.0": [...],
    ...}`` at the paper's alphas, on the cpu scale's setting (cached in the entry's folder)."""
    from reproductions.references import feddf as ref

    def run(data, algorithm, seed, **setting):  # "feddf-alpha0.1" -> FedDF at alpha 0.1
        name, alpha = algorithm.split("-alpha")
        return ref.run(data, algorithm=name, alpha=float(alpha), seed=seed, **setting)

    names = [f"{a}-alpha{alpha}" for alpha in ALPHAS for a in ("feddf", "fedavg")]
    found = common.reference_runs(ctx, run, names, REFERENCE_SEEDS[ctx.scale], **REFERENCE)
    return {k: [history[-1] for history in found[k]] for k in found}


def analyze(ctx: common.Context, dirs: dict) -> common.Finding:
    acc = {k: common.finals(folder, "test_acc") for k, folder in dirs.items()}
    gains = {
        a: [x - y for x, y in zip(acc[f"feddf-alpha{a}"], acc[f"fedavg-alpha{a}"], strict=True)]
        for a in ALPHAS
    }
    stronger = common.difference(gains["0.1"], gains["1.0"])
    rows = []
    for a in ALPHAS:
        g = common.stats(gains[a])
        paper = {"1.0": "+4.7 points (CIFAR-10)", "0.1": "+9.2 points (CIFAR-10)"}[a]
        rows += [
            (f"FedDF, alpha {a}", "", common.fmt(acc[f"feddf-alpha{a}"])),
            (f"FedAvg, alpha {a}", "", common.fmt(acc[f"fedavg-alpha{a}"])),
            (f"FedDF - FedAvg, alpha {a} (paired)", paper, _ci(g)),
        ]
    rows.append(("gain at 0.1 - gain at 1.0", "+4.5 points", _ci(stronger)))
    ref = reference(ctx) if ctx.scale == "cpu" else None
    vs_ref = {}
    if ref is not None:
        for a in ALPHAS:
            ref_gain = common.difference(ref[f"feddf-alpha{a}"], ref[f"fedavg-alpha{a}"])
            rows += [
                (f"reference: FedDF, alpha {a}", "", common.fmt(ref[f"feddf-alpha{a}"])),
                (f"reference: FedAvg, alpha {a}", "", common.fmt(ref[f"fedavg-alpha{a}"])),
                (f"reference: FedDF - FedAvg, alpha {a} (paired)", "", _ci(ref_gain)),
            ]
            for algo, label in (("feddf", "FedDF"), ("fedavg", "FedAvg")):
                k = f"{algo}-alpha{a}"
                vs_ref[k] = common.unpaired(acc[k], ref[k])
                rows.append((f"jaxfl - reference, {label}, alpha {a} (unpaired)",
                             "0 within the CI", _ci(vs_ref[k])))  # fmt: skip
    wins = {a: common.stats(gains[a])["ci95"][0] > 0 for a in ALPHAS}
    more = stronger.get("n", 0) > 1 and stronger["ci95"][0] > 0
    same_way = common.stats(gains["0.1"])["mean"] > 0 and stronger["mean"] > 0
    if all(wins.values()) and more:
        verdict = "holds"
    elif any(wins.values()) or more or same_way:  # the paper's direction, if not all shown
        verdict = "holds partly"
    else:
        verdict = "does not hold"
    why = (
        "; ".join(
            f"at alpha {a} FedDF is {common.stats(gains[a])['mean'] * 100:+.1f} points from FedAvg"
            + common.significance(common.stats(gains[a]))
            for a in ALPHAS
        )
        + f"; the gain grows by {stronger['mean'] * 100:+.1f} points from alpha 1.0 to 0.1"
        + common.significance(stronger)
        + "."
    )
    if same_way and not (all(wins.values()) and more):
        why += " The means go the paper's way, but not beyond the noise of these seeds."
    if ref is not None:
        agreed = [k for k, d in vs_ref.items() if common.agree(d)]
        why += (
            " The independent reference (reproductions/references/feddf.py: its own partition, "
            "LeNet-5, per-client loop and Adam) gives FedDF - FedAvg "
            + ", ".join(
                f"{_ci(common.difference(ref[f'feddf-alpha{a}'], ref[f'fedavg-alpha{a}']))} at "
                f"alpha {a}"
                for a in ALPHAS
            )
            + f"; jaxfl and the reference agree within the seeds' 95% CI in {len(agreed)} of "
            f"{len(vs_ref)} runs"
            + ("" if len(agreed) == len(vs_ref) else " (see the rows for the gaps)")
            + "."
        )
    if ctx.scale == "cpu":
        gains_by_alpha = {
            a: common.difference(acc[f"feddf-alpha{a}"], acc[f"fedavg-alpha{a}"])
            for a in DEPENDENCE_ALPHAS
        }
        why += (
            " Against alpha (figure): "
            + ", ".join(f"{a}: {g['mean'] * 100:+.1f}" for a, g in gains_by_alpha.items())
            + " points."
        )
        why += (
            " MNIST with 1 local epoch drifts far less than CIFAR-10 with 40, so there is less"
            " for the ensemble to correct; and distillation runs 200 steps, not 10,000."
        )
    return common.Finding(
        verdict,
        why,
        rows,
        learned=all(common.learned(v, 0.1) for v in acc.values()),
        headline="FedDF - FedAvg: "
        + ", ".join(f"alpha {a} {common.stats(gains[a])['mean'] * 100:+.1f} pts" for a in ALPHAS),
        plots=[_plot(ctx, dirs)] + ([_plot_alpha(ctx, acc)] if ctx.scale == "cpu" else []),
        data={"accuracy": acc, "gain": gains, "reference": ref},
    )


def _ci(d: dict) -> str:
    if d.get("n", 0) < 2:
        return f"{d.get('mean', float('nan')) * 100:+.1f} points"
    lo, hi = d["ci95"]
    return f"{d['mean'] * 100:+.1f} points (95% CI {lo * 100:+.1f} .. {hi * 100:+.1f})"


def _plot(ctx, dirs) -> str:
    plt, fig, axes = common.figure(len(ALPHAS))
    for ax, a in zip(axes, ALPHAS, strict=True):
        for algo, label in (("feddf", "FedDF"), ("fedavg", "FedAvg")):
            rounds, values = common.curve(dirs[f"{algo}-alpha{a}"], "test_acc")
            common.plot_bands(ax, rounds, values, label)
        ax.set_title(f"Dirichlet alpha {a}")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.legend()
    return common.save(plt, fig, ctx.out / "feddf.png")


def _plot_alpha(ctx, acc) -> str:
    """FedDF - FedAvg (paired, 95% CI over seeds) against alpha, log scale, the paper's two
    CIFAR-10 gains beside it."""
    plt, fig, (ax,) = common.figure(1)
    alphas = [float(a) for a in DEPENDENCE_ALPHAS]
    stats = [
        common.difference(acc[f"feddf-alpha{a}"], acc[f"fedavg-alpha{a}"])
        for a in DEPENDENCE_ALPHAS
    ]
    mean = [100 * d["mean"] for d in stats]
    err = [
        [100 * (d["mean"] - d["ci95"][0]) for d in stats],
        [100 * (d["ci95"][1] - d["mean"]) for d in stats],
    ]
    ax.errorbar(alphas, mean, yerr=err, marker="o", capsize=3, label="MNIST, LeNet-5 (jaxfl)")
    ax.plot([1.0, 0.1], [4.7, 9.2], "s", color="grey", label="paper: CIFAR-10, ResNet-8")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("Dirichlet alpha (more skew to the right)")
    ax.set_ylabel("FedDF - FedAvg, test accuracy points")
    ax.set_title("gain against label skew (mean, 95% CI over seeds)")
    ax.legend()
    return common.save(plt, fig, ctx.out / "feddf_alpha.png")
