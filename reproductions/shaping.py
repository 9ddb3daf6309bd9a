"""Accuracy shaping (Karimireddy, Guo, Jordan 2022, "Mechanisms that Incentivize Data Sharing in
Federated Learning"): the mechanism removes free riding.

The data-sharing game of :mod:`reproductions.incentives`: agents with marginal data costs c_i
choose how much data m_i to contribute; a model trained on total data m reaches accuracy a(m).
Under naive federation everyone gets the same model and the cheapest agent ends up contributing for
all (free riding); accuracy shaping serves each agent an accuracy that rises with its own
contribution. Claimed: the shaped equilibrium collects more data than the naive one, and every
agent's utility a_i - c_i m_i is at least what it gets training alone (individual rationality).

a(m) is measured by the simulator on the data set (logistic regression trained on nested
subsets of 10 sizes, :func:`reproductions.incentives.measure_accuracy_curve`), one curve per seed
(its own subsets and initialisation), and also taken from the paper's generalization bound. No
run.py runs: the curve is one compiled call of the local-only algorithm with one client per size.
"""

from __future__ import annotations

import numpy as np

from reproductions import common

NAME = "shaping"
TITLE = "Accuracy shaping (Karimireddy, Guo, Jordan 2022)"
CLAIM = (
    "Accuracy shaping removes free riding: the total data contributed is higher than under "
    "naive federation, and every agent's utility is at least its stand-alone utility."
)
PAPER = "shaping's equilibrium: more data than naive federation and individually rational "
PAPER += "(Theorems; no single number)"
HPARAMS = (
    "Costs c = 2e-5, 5e-5, 1e-4 per example (three agents), shaping margin eps = 1e-4, a(m) "
    "measured with logistic regression (1 epoch-equivalent of SGD 0.1, batch 50), and the "
    "bound a(m) with a_opt = 1, k = 10 and costs 1e-4, 2e-4, 5e-4."
)
SETTINGS = {
    "ci": "blobs, a(m) at 5 sizes, 2 seeds",
    "cpu": "MNIST, a(m) at 10 sizes from 20 to 60,000, 3 seeds",
    "paper": "MNIST (TFDS), a(m) at 10 sizes, 5 seeds",
}
COSTS = (2e-5, 5e-5, 1e-4)
BOUND_COSTS = (1e-4, 2e-4, 5e-4)
SEEDS = {"ci": 2, "cpu": 3, "paper": 5}


def runs(ctx: common.Context) -> dict[str, list[str]]:
    return {}  # a(m) is measured in analyze: no run.py runs


def _dataset(ctx: common.Context):
    from jaxfl.data import load_dataset

    if ctx.scale == "ci":
        return load_dataset("blobs", None)
    return load_dataset("mnist", str(ctx.data_dir) if ctx.scale == "cpu" else None)


def _outcomes(a, costs, m_max):
    from reproductions import incentives

    return {
        mech: incentives.equilibrium(a, costs, mech, eps=1e-4, m_max=m_max)
        for mech in incentives.MECHANISMS
    }


def analyze(ctx: common.Context, dirs: dict) -> common.Finding:
    from reproductions import incentives

    dataset = _dataset(ctx)
    n = 5 if ctx.scale == "ci" else 10
    sizes = np.unique(np.geomspace(20, len(dataset.train_y), n).astype(int))
    games, curves = [], []
    for seed in range(SEEDS[ctx.scale]):
        acc = incentives.measure_accuracy_curve(dataset, sizes, epochs=1, seed=seed)
        curves.append(acc)
        a = incentives.interpolated_accuracy(sizes, acc)
        games.append(_outcomes(a, COSTS, float(len(dataset.train_y))))
    bound = _outcomes(incentives.bound_accuracy(1.0, 10.0), BOUND_COSTS, 1e7)
    total = {m: [g[m].contributions.sum() for g in games] for m in incentives.MECHANISMS}
    rational = [bool(np.all(g["shaped"].utility >= g["local"].utility - 1e-9)) for g in games]
    more = [s > nv for s, nv in zip(total["shaped"], total["naive"], strict=True)]
    rows = [
        ("a(m) measured: accuracy at the smallest / largest size", "",
         f"{common.fmt([c[0] for c in curves])} / {common.fmt([c[-1] for c in curves])}"),
    ]  # fmt: skip
    for mech in incentives.MECHANISMS:
        rows.append((f"total data, {mech} (measured a(m))", "", common.fmt(total[mech], 0)))
    rows += [
        ("seeds where shaped total > naive total", "all", f"{sum(more)} of {len(more)}"),
        ("seeds where every agent's shaped utility >= alone", "all",
         f"{sum(rational)} of {len(rational)}"),
        ("bound a(m): total data alone / naive / shaped", "",
         " / ".join(f"{bound[m].contributions.sum():,.0f}" for m in incentives.MECHANISMS)),
        ("bound a(m): every agent's shaped utility >= alone", "yes",
         "yes" if np.all(bound["shaped"].utility >= bound["local"].utility - 1e-9) else "no"),
    ]  # fmt: skip
    bound_ok = bool(
        bound["shaped"].contributions.sum() > bound["naive"].contributions.sum()
        and np.all(bound["shaped"].utility >= bound["local"].utility - 1e-9)
    )
    ok = all(more) and all(rational) and bound_ok
    verdict = "holds" if ok else "holds partly" if any(more) or any(rational) else "does not hold"
    ratio = common.stats(np.array(total["shaped"]) / np.array(total["naive"]))["mean"]
    why = (
        f"with the measured a(m), shaping collected {ratio:.1f}x the naive total in "
        f"{sum(more)} of {len(more)} seeds and was individually rational in {sum(rational)} of "
        f"{len(rational)}; with the bound a(m) the totals are "
        + " / ".join(f"{bound[m].contributions.sum():,.0f}" for m in incentives.MECHANISMS)
        + " (alone / naive / shaped). The game is solved exactly given a(m); what varies over "
        "seeds is the measured curve."
    )
    return common.Finding(
        verdict,
        why,
        rows,
        learned=bool(np.mean([c[-1] - c[0] for c in curves]) > 0),
        headline=f"shaped / naive total data {ratio:.1f}x; individually rational in "
        f"{sum(rational)} of {len(rational)} seeds",
        plots=[_plot(ctx, sizes, curves, games)],
        data={
            "sizes": sizes.tolist(),
            "curves": [c.tolist() for c in curves],
            "totals": {m: [float(t) for t in v] for m, v in total.items()},
        },
    )


def _plot(ctx, sizes, curves, games) -> str:
    from reproductions import incentives

    plt, fig, (ax_curve, ax_data) = common.figure(2)
    common.plot_bands(ax_curve, sizes, np.asarray(curves), "measured a(m)")
    ax_curve.set_xscale("log")
    ax_curve.set_xlabel("training examples m")
    ax_curve.set_ylabel("test accuracy a(m)")
    ax_curve.legend()
    width = 0.25
    for i, mech in enumerate(incentives.MECHANISMS):
        per_agent = np.array([g[mech].contributions for g in games])  # (seeds, agents)
        ax_data.bar(np.arange(len(COSTS)) + (i - 1) * width, per_agent.mean(0), width,
                    label=mech)  # fmt: skip
    ax_data.set_xticks(np.arange(len(COSTS)), [f"c = {c:g}" for c in COSTS])
    ax_data.set_ylabel("data contributed m_i (mean over seeds)")
    ax_data.legend()
    return common.save(plt, fig, ctx.out / "shaping.png")
