"""Where DS-FL's claims hinge on the setting: ERA minus SA, and DS-FL (ERA) minus FedAvg, against
participation and label skew, over seeds.

The DS-FL entry measures the paper's own setting (every client every round, 2 classes per
client). A reader whose setting differs needs to know how the two differences move with it:
each cell here is the entry's three sweeps (DS-FL with ERA, DS-FL with SA, FedAvg; seeds in one
compiled call each, the same seed the same partition, sampling and initialisation) with the
clients sampled per round and the partition changed, nothing else. Reported per cell: the final
server test accuracies and the paired per-seed differences with their 95% CI.

    python scripts/dependence.py --scale cpu --data-dir MNIST \\
        --participation 10,30,100 --skews classes2,dir0.1,dir1.0

A cell's folders are reused when finished, so a stopped study continues; the figure and table
show the cells measured so far, each with its seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from reproductions import common, dsfl

# label skew: the partition flags and how the figure names them
SKEWS = {
    "classes2": (["--partition", "classes", "--classes-per-client", "2"], "2 classes per client"),
    "dir0.1": (["--partition", "dirichlet", "--alpha", "0.1"], "Dirichlet 0.1"),
    "dir1.0": (["--partition", "dirichlet", "--alpha", "1.0"], "Dirichlet 1.0"),
}
PARTICIPATION = (10, 30, 100)
# what every cell shares at each scale: the DS-FL entry's runs (reproductions/dsfl.py) but for
# the clients per round and the partition
SHARED = {
    "ci": "blobs, 20 clients, MLP 32, 4 rounds, 500 open samples per round, 2 seeds",
    "cpu": "MNIST, 100 clients, 2NN, 20 rounds (evaluated every 2nd), 2 local epochs, 5 "
    "distillation epochs, 1,000 open samples per round from a 10,000-example open set, ERA "
    "temperature 0.1, 3 seeds",
    "paper": "MNIST (TFDS), 100 clients, LeNet-5, 100 rounds, 5 local epochs, 3 seeds",
}  # clients per round, of the entry's clients (100 at cpu scale)
ALGORITHMS = ("era", "sa", "fedavg")


def clients(ctx: common.Context) -> int:
    """The DS-FL entry's number of clients at this scale (its ``_base``: 20 at ci, else 100)."""
    return 20 if ctx.scale == "ci" else 100


def cell_runs(ctx: common.Context, skew: str, per_round: int) -> dict[str, list[str]]:
    """The DS-FL entry's three runs at this scale with ``per_round`` clients sampled per round
    and ``skew``'s partition (later flags override the entry's)."""
    flags, _ = SKEWS[skew]
    return {
        name: [*argv, "--clients-per-round", str(per_round), *flags]
        for name, argv in dsfl.runs(ctx).items()
    }


def run_cell(ctx: common.Context, skew: str, per_round: int) -> dict[str, list[float]]:
    """Final server test accuracy per seed of each algorithm in one cell (runs what is not
    finished yet)."""
    out = {}
    for name, argv in cell_runs(ctx, skew, per_round).items():
        folder = ctx.run(f"{skew}-{per_round}/{name}", argv)
        out[name] = common.finals(folder, "test_acc")
    return out


def summarize(skew: str, per_round: int, acc: dict[str, list[float]]) -> dict:
    """One cell's row: accuracies per seed, and the paired differences' statistics."""
    return {
        "skew": skew,
        "per_round": per_round,
        "accuracy": acc,
        "era_minus_sa": common.difference(acc["era"], acc["sa"]),
        "era_minus_fedavg": common.difference(acc["era"], acc["fedavg"]),
    }


def measure(ctx: common.Context, skews, participation) -> list[dict]:
    """Every requested cell, measured (or reused), together with the cells the folder's
    dependence.json already holds from earlier invocations (a study grown a column at a time),
    in order: skew as in SKEWS, then clients per round."""
    path = ctx.out / "dependence.json"
    cells = (
        {(r["skew"], r["per_round"]): r for r in json.loads(path.read_text())}
        if (path.exists())
        else {}
    )

    def ordered():
        return [cells[k] for k in sorted(cells, key=lambda k: (list(SKEWS).index(k[0]), k[1]))]

    for skew in skews:
        for per_round in participation:
            cells[skew, per_round] = summarize(skew, per_round, run_cell(ctx, skew, per_round))
            path.write_text(json.dumps(ordered(), indent=1))
    return ordered()


def plot(rows: list[dict], path: Path, total: int) -> str:
    """Two panels, ERA - SA and ERA - FedAvg against clients per round, one line per skew, with
    the paired 95% CI as error bars; a dotted line at 0."""
    plt, fig, axes = common.figure(2)
    panels = (("era_minus_sa", "DS-FL: ERA - SA"), ("era_minus_fedavg", "DS-FL (ERA) - FedAvg"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for offset, (skew, (_, label)) in zip((1.0, 0.96, 1.04), SKEWS.items(), strict=True):
            cells = [r for r in rows if r["skew"] == skew]
            if not cells:
                continue
            x = [r["per_round"] * offset for r in cells]  # apart, so error bars don't overlap
            mean = [r[key]["mean"] for r in cells]
            half = [r[key].get("ci95_half", 0.0) for r in cells]
            ax.errorbar(x, mean, yerr=half, marker="o", capsize=3, label=label)
        ax.axhline(0.0, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted({r["per_round"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel(f"clients per round (of {total})")
        ax.set_ylabel("final server test accuracy difference")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return common.save(plt, fig, path)


def markdown(rows: list[dict], setting: str, provenance: str) -> str:
    """The table of every measured cell, with the setting and how it was made."""
    lines = [
        "# DS-FL: dependence on participation and label skew",
        "",
        "Written by `scripts/dependence.py` (do not edit by hand). " + setting,
        "",
        "| skew | clients per round | ERA | SA | FedAvg | ERA - SA (paired) "
        "| ERA - FedAvg (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r["accuracy"]
        lines.append(
            f"| {SKEWS[r['skew']][1]} | {r['per_round']} | {common.fmt(acc['era'])} | "
            f"{common.fmt(acc['sa'])} | {common.fmt(acc['fedavg'])} | "
            f"{common.paired(r['era_minus_sa'])} | {common.paired(r['era_minus_fedavg'])} |"
        )
    lines += ["", "![dependence](dsfl_dependence.png)", "", f"*{provenance}*", ""]
    return "\n".join(lines)
