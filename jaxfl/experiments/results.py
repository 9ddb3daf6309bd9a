"""The results folder of a run: config.json, metrics.jsonl, summary.json and plots (accuracy over
rounds, and the CDF of per-client accuracy).

``metrics.jsonl`` gets one complete line per evaluated round, written with one ``write`` and
fsynced, so a run that stops early (even by SIGKILL) keeps every line it reached. An existing
non-empty folder is never overwritten; a resumed run (``resume_round``) keeps the lines of rounds
up to its checkpoint and drops the rest, which the resumed run writes again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


class ResultsExistError(FileExistsError):
    """The results folder already holds files."""


def default_results_dir(algo: str, dataset: str, root: str | Path = "results") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{algo}-{dataset}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def check_results_dir(path: str | Path) -> Path:
    """Fail early (before any expensive work) if ``path`` already holds files."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ResultsExistError(
            f"--out {path} already exists and is not empty; choose a new --out (nothing was "
            "overwritten)"
        )
    return path


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict]:
    """The complete records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(path)
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class ResultsWriter:
    """Writes a run's results folder; attach it to a Simulation with :meth:`attach`.

    Args:
      path: the results folder (must not exist or be empty, unless resuming).
      config: every resolved setting, written to config.json.
      resume_round: continue the run in ``path`` after this round: metrics of later rounds are
        dropped (the resumed run writes them again).
    """

    def __init__(self, path: str | Path, config: dict, resume_round: int | None = None):
        self.path = Path(path)
        self.algo = config.get("algo", "this run")
        self.history: list[dict] = []
        if resume_round is None:
            check_results_dir(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            kept = [
                r for r in read_metrics(self.path / "metrics.jsonl") if r["round"] <= resume_round
            ]
            tmp = self.path / "metrics.jsonl.tmp"
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            os.replace(tmp, self.path / "metrics.jsonl")
            self.history = kept
        write_json(self.path / "config.json", config)
        self.epsilon_of = (config.get("privacy") or {}).get("epsilon_of")
        self.metrics_file = (self.path / "metrics.jsonl").open("a")

    def attach(self, sim) -> ResultsWriter:
        sim.on("evaluate", lambda record, **_: self.log(record))
        return self

    def log(self, record: dict) -> None:
        self.history.append(record)
        self.metrics_file.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
        self.metrics_file.flush()
        os.fsync(self.metrics_file.fileno())

    def finish(
        self,
        summary: dict,
        client_acc: np.ndarray | None = None,
        global_client_acc: np.ndarray | None = None,
        local_client_acc: np.ndarray | None = None,
    ) -> None:
        """Write summary.json and the plots; close the metrics file.

        The per-client accuracies (C,) of the last evaluation are saved as .npy and drawn as a
        CDF: the run's own (personal) accuracies, its global model's on the same splits, and
        the local-only baseline's, where given.
        """
        self.metrics_file.close()
        curves = {}
        for name, values, label in (
            ("client_acc", client_acc, f"{self.algo} (each client's model)"),
            ("global_client_acc", global_client_acc, "global model"),
            ("local_client_acc", local_client_acc, "local-only training"),
        ):
            if values is not None:
                np.save(self.path / f"{name}.npy", np.asarray(values))
                curves[label] = np.asarray(values)
        write_json(self.path / "summary.json", summary)
        if self.history:
            plot_history(self.history, self.path / "accuracy.png", self.epsilon_of)
        if curves:
            plot_client_cdf(curves, self.path / "client_acc_cdf.png")


def plot_client_cdf(curves: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """Empirical CDF of per-client accuracy, one curve per entry of ``curves`` ((C,) arrays).

    A curve further right is better; where two cross, one method helps some clients and hurts
    others (Motley's point: averages hide this).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        v = np.sort(np.asarray(values, dtype=np.float64))
        ax.step(
            v,
            np.arange(1, len(v) + 1) / len(v),
            where="post",
            label=f"{label} (mean {v.mean():.3f})",
        )
    ax.set(
        xlabel="accuracy on the client's own test split",
        ylabel="fraction of clients (CDF)",
        title=title or "Per-client accuracy",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: list[dict], path: Path, epsilon_of: str | None = None) -> None:
    """Accuracy over rounds (server/global and client mean) and cumulative communication."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    timed = "sim_time" in history[-1]  # the virtual clock: accuracy against simulated time too
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(16 if timed else 11, 4))
    ax_acc, ax_comm = axes[0], axes[1]
    if timed:
        points = [h for h in history if "test_acc" in h and "sim_time" in h]
        axes[2].plot([h["sim_time"] for h in points], [h["test_acc"] for h in points], marker="o",
                     ms=3, label="global/server model, test set")  # fmt: skip
        axes[2].set(xlabel="simulated time (virtual seconds)", ylabel="accuracy",
                    title="Accuracy over simulated time")  # fmt: skip
        axes[2].grid(alpha=0.3)
        axes[2].legend(loc="lower right")
    for key, label in (
        ("test_acc", "global/server model, test set"),
        ("client_acc_mean", "clients, own test split (mean)"),
    ):
        if key in history[0]:
            ax_acc.plot(rounds, [h[key] for h in history], marker="o", ms=3, label=label)
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="upper left")
    if "dp_epsilon" in history[-1]:  # the privacy spent, on its own axis
        ax_eps = ax_acc.twinx()
        points = [(h["round"], h["dp_epsilon"]) for h in history if "dp_epsilon" in h]
        ax_eps.plot(*zip(*points, strict=True), "k--", lw=1, label="DP epsilon (right axis)")
        ax_eps.set_ylabel(
            "epsilon (user-level DP" + (f";\n{epsilon_of})" if epsilon_of else ")"), fontsize=8
        )
        ax_eps.legend(loc="lower right")
    up = [h["comm_up_bytes_total"] / 2**20 for h in history]
    down = [h["comm_down_bytes_total"] / 2**20 for h in history]
    ax_comm.plot(rounds, up, label="uplink (all clients)")
    ax_comm.plot(rounds, down, label="downlink (all clients)")
    ax_comm.set(xlabel="round", ylabel="MiB (cumulative)", title="Communication")
    ax_comm.grid(alpha=0.3)
    ax_comm.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_staleness(counts: list[int], path: Path) -> None:
    """Bar chart of how many arrived updates had each staleness (server steps since the
    client's download); the last bar counts every staleness from its value up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max((i for i, c in enumerate(counts) if c), default=0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(last + 1), counts[: last + 1], color="tab:blue")
    total = sum(counts)
    mean = sum(i * c for i, c in enumerate(counts)) / max(total, 1)
    ax.set(xlabel="staleness (server steps)", ylabel="updates",
           title=f"Staleness of {total:,} arrived updates (mean {mean:.2f})")  # fmt: skip
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
