"""Statistics over seeds and the reports of a sweep: summary, comparison table, curves.

Each metric of each algorithm and setting is reported over its seeds as n, mean, standard
deviation (ddof 1) and the 95% confidence interval of the mean from Student's t
(``scipy.stats.t``), for the final round and for each experiment's best round.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def describe(values) -> dict:
    """n, mean, std (ddof 1) and the 95% confidence interval of the mean (Student's t)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    n = len(v)
    if n == 0:
        return {"n": 0}
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    half = _t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    mean = float(v.mean())
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "ci95_half": half}


def band(mean, half, limits: tuple[float, float] | None = (0.0, 1.0)):
    """(lower, upper) of a confidence band mean +- half, clipped to the metric's range
    ``limits`` (accuracies and fractions: [0, 1]; the t-interval of a few seeds near 0 or 1
    would otherwise reach values the metric cannot take). ``None``: unclipped (differences)."""
    lower, upper = np.asarray(mean) - np.asarray(half), np.asarray(mean) + np.asarray(half)
    if limits is None:
        return lower, upper
    return np.clip(lower, *limits), np.clip(upper, *limits)


def summarize(history: list[dict], seeds) -> dict:
    """Per algorithm and setting: each final metric's and its best round's statistics over the
    experiments' seeds."""
    by_setting: dict[tuple, dict[int, list]] = {}
    for h in history:
        by_setting.setdefault((h["algo"], h["setting"]), {}).setdefault(h["experiment"], []).append(
            h
        )
    settings = []
    for (algo, setting), runs in by_setting.items():
        finals = [max(lines, key=lambda h: h["round"]) for lines in runs.values()]
        entry = {
            "algo": algo,
            "setting": setting,
            "hparams": finals[0]["hparams"],
            "seeds": sorted(h["seed"] for h in finals),
            "rounds": max(h["round"] for h in finals),
            "diverged": sum(h.get("diverged", False) for h in finals),
            "final": {},
            "best": {},
        }
        for metric in ("test_acc", "client_acc_mean", "client_acc_p10", "train_loss", "dp_epsilon"):
            if metric in finals[0]:
                entry["final"][metric] = describe(h[metric] for h in finals)
        for metric in ("test_acc", "client_acc_mean"):
            if metric in finals[0]:
                entry["best"][metric] = describe(
                    max(h[metric] for h in lines) for lines in runs.values()
                )
        settings.append(entry)
    return {"seeds": list(seeds), "settings": settings}


def _fmt(stats: dict | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    if stats["n"] == 1:
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} ± {stats['ci95_half']:.4f}"


def comparison_table(summary: dict) -> str:
    """Markdown: one row per algorithm and setting, mean ± 95% CI half-width over seeds (and
    the DP epsilon reached, in a DP sweep)."""
    private = any("dp_epsilon" in s["final"] for s in summary["settings"])
    lines = [
        "Mean ± half-width of the 95% confidence interval over seeds (Student's t).",
        "",
        "| algorithm | setting | seeds | rounds | final test_acc | best test_acc | "
        "final client_acc_mean | final train_loss |"
        + (f" DP epsilon ({summary.get('dp_epsilon_of', 'user level')}) |" if private else ""),
        "|---|---|---:|---:|---|---|---|---|" + ("---:|" if private else ""),
    ]
    for s in summary["settings"]:
        final, best = s["final"], s["best"]
        diverged = f" ({s['diverged']} diverged)" if s["diverged"] else ""
        epsilon = final.get("dp_epsilon", {}).get("mean")
        lines.append(
            f"| {s['algo']} | {s['setting']} | {len(s['seeds'])}{diverged} | {s['rounds']} | "
            f"{_fmt(final.get('test_acc'))} | {_fmt(best.get('test_acc'))} | "
            f"{_fmt(final.get('client_acc_mean'))} | {_fmt(final.get('train_loss'))} |"
            + ((f" {epsilon:.3g} |" if epsilon is not None else " inf |") if private else "")
        )
    return "\n".join(lines) + "\n"


def plot_curves(history: list[dict], path: Path) -> None:
    """Mean accuracy over rounds per algorithm and setting, with its 95% CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "test_acc" if history and "test_acc" in history[0] else "client_acc_mean"
    curves: dict[tuple, dict[int, list]] = {}
    for h in history:
        key = (h["algo"], h["setting"])
        curves.setdefault(key, {}).setdefault(h["round"], []).append(h.get(metric, float("nan")))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (algo, setting), by_round in curves.items():
        rounds = sorted(by_round)
        stats = [describe(by_round[r]) for r in rounds]
        mean = np.array([s.get("mean", np.nan) for s in stats])
        half = np.array([s.get("ci95_half", np.nan) for s in stats])
        label = algo if setting == "default" else f"{algo} {setting}"
        ax.plot(rounds, mean, marker="o", ms=3, label=f"{label} (n={stats[-1].get('n', 0)})")
        if np.isfinite(half).any():
            ax.fill_between(rounds, *band(mean, half), alpha=0.2)  # accuracies: in [0, 1]
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (mean, 95% CI band over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
