"""What every reproduction entry shares: running scripts/run.py, reading its results over seeds,
statistics, plots and the verdict's wording.

An entry (one module per paper in this package) defines

    NAME, TITLE, CLAIM, PAPER, HPARAMS          what is claimed and where the settings come from
    SETTINGS = {"ci": ..., "cpu": ..., "paper": ...}   one line per scale: what runs
    runs(ctx) -> {run name: run.py argv}        the simulations (a sweep each: --seeds in one call)
    analyze(ctx, dirs) -> Finding               the measurements, plots and verdict

and scripts/reproduce.py runs the simulations, calls ``analyze`` with their results folders and
writes the findings. Nothing in a Finding is typed in: every number comes from the folders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from jaxfl.experiments import report
from jaxfl.experiments.report import describe

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = os.environ.get("JAXFL_MNIST", str(ROOT.parent / "shared" / "data" / "mnist"))


def add_scale_flags(parser, scale_help: str) -> None:
    """``--scale`` and ``--data-dir``, as scripts/reproduce.py and scripts/dependence.py take
    them; :func:`check_scale_data` checks them after parsing."""
    parser.add_argument("--scale", choices=SCALES, default="ci", help=scale_help)
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_MNIST,
        help="folder of the MNIST IDX files, for --scale cpu (default $JAXFL_MNIST or "
        "../shared/data/mnist beside the repository)",
    )


def check_scale_data(parser, args) -> None:
    """At ``--scale cpu``, a clear error (exit 2) unless ``--data-dir`` holds MNIST, before any
    folder is made."""
    if args.scale != "cpu":
        return
    from jaxfl.data.sources import check_data_dir

    try:
        check_data_dir(args.data_dir, "mnist")
    except Exception as err:  # noqa: BLE001 (its message names the missing files)
        parser.error(f"--data-dir {args.data_dir}: {err} (--scale cpu reads MNIST from it)")


SCALES = ("ci", "cpu", "paper")
VERDICTS = ("holds", "holds partly", "does not hold", "not judged")


class ReproductionError(RuntimeError):
    """A run of an entry failed (its exit code and folder are in the message)."""


@dataclasses.dataclass
class Context:
    """One entry's invocation: its scale, results folder and data.

    ``data_dir`` is the MNIST IDX folder (``cpu`` scale); ``seeds`` the number of seeds.
    """

    scale: str
    out: Path
    data_dir: Path | None = None

    @property
    def seeds(self) -> int:
        return 2 if self.scale == "ci" else 3

    def mnist(self) -> list[str]:
        """The flags of the entry's image data: the embedded blobs at ``ci`` (no download, CI
        has no MNIST), the MNIST IDX files at ``cpu``, TFDS's MNIST at ``paper``."""
        if self.scale == "ci":
            return ["--dataset", "blobs"]
        if self.scale == "cpu":
            return ["--dataset", "mnist", "--data-dir", str(self.data_dir)]
        return ["--dataset", "mnist"]

    def run(self, name: str, argv: list[str]) -> Path:
        """``scripts/run.py argv --out OUT/name`` in this process; a folder that already holds
        a finished run (:func:`finished`) is reused, so a stopped reproduction continues (an
        unfinished or interrupted one is run again)."""
        folder = self.out / name
        if finished(folder):
            return folder
        if folder.exists():  # a run stopped part-way: it starts again
            import shutil

            shutil.rmtree(folder)
        from jaxfl.cli import run as run_script  # what scripts/run.py runs

        code = run_script.main([*argv, "--checkpoint-every", "0", "--out", str(folder)])
        if code != 0:
            raise ReproductionError(f"run {name!r} exited with {code}: run.py {' '.join(argv)}")
        return folder


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a run.py results folder whose run completed (or stopped early by
    its own rule): a ``summary.json`` whose status is neither "interrupted" (Ctrl-C or SIGTERM:
    it wrote a summary too) nor "failed"."""
    path = folder / "summary.json"
    if not path.exists():
        return False
    return json.loads(path.read_text()).get("status") not in ("interrupted", "failed")


def reference_runs(ctx: Context, run, algorithms, seeds: int, **setting) -> dict[str, list]:
    """An entry's independent reference: ``run(data, algorithm=a, seed=s, **setting)`` for every
    algorithm and seed, on MNIST from ``ctx.data_dir``, each result cached in the entry's
    ``reference.json`` under "a/s" as soon as it is done (a stopped reproduction continues).
    Returns ``{algorithm: [result per seed]}``."""
    from reproductions.references import base

    path = ctx.out / "reference.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    data = None
    for algorithm in algorithms:
        for seed in range(seeds):
            key = f"{algorithm}/{seed}"
            if key in found:
                continue
            data = data or base.load_mnist(ctx.data_dir)
            found[key] = run(data, algorithm=algorithm, seed=seed, **setting)
            path.write_text(json.dumps(found))
    return {a: [found[f"{a}/{s}"] for s in range(seeds)] for a in algorithms}


@dataclasses.dataclass
class Finding:
    """What an entry measured, in the words and numbers RESULTS.md shows.

    rows: (quantity, paper's value or "", measured value) table rows.
    learned: whether the runs learned at all (``ci`` scale checks only this).
    data: the per-seed numbers behind the rows (JSON-able), kept in the entry's record.
    """

    verdict: str
    why: str
    rows: list[tuple[str, str, str]]
    learned: bool
    headline: str = ""  # the measured result in one line, for the summary table
    plots: list[str] = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}; allowed: {', '.join(VERDICTS)}")


# ---- reading results --------------------------------------------------------------------------


def history(folder: Path) -> list[dict]:
    """Every metrics line of a run or sweep folder."""
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_seed(folder: Path, algo: str | None = None) -> dict[int, list[dict]]:
    """A sweep's lines per seed (of ``algo`` when the sweep ran several), in round order."""
    out: dict[int, list[dict]] = {}
    for h in history(folder):
        if algo is None or h.get("algo") == algo:
            out.setdefault(h.get("seed", 0), []).append(h)
    return {s: sorted(lines, key=lambda h: h["round"]) for s, lines in sorted(out.items())}


def finals(folder: Path, metric: str, algo: str | None = None) -> list[float]:
    """Per seed, ``metric`` at the last evaluated round."""
    return [lines[-1][metric] for lines in by_seed(folder, algo).values()]


def curve(folder: Path, metric: str, algo: str | None = None):
    """(rounds (R,), values (seeds, R)) of ``metric`` over the evaluated rounds."""
    seeds = by_seed(folder, algo)
    rounds = np.array([h["round"] for h in next(iter(seeds.values()))])
    values = np.array([[h[metric] for h in lines] for lines in seeds.values()], np.float64)
    return rounds, values


def traffic_per_round(folder: Path, algo: str | None = None) -> float:
    """Bytes uploaded + downloaded per round, all sampled clients (a sweep's first line)."""
    h = next(iter(by_seed(folder, algo).values()))[0]
    return (h["comm_up_bytes_total"] + h["comm_down_bytes_total"]) / h["round"]


def first_reaching(rounds, values, target: float, costs=None) -> list[float]:
    """Per seed (row of ``values``), ``costs`` (default: the round) at the first evaluated
    round whose value reaches ``target``; NaN when it never does."""
    costs = rounds if costs is None else costs
    out = []
    for row, cost in zip(values, np.broadcast_to(costs, values.shape), strict=True):
        hit = np.nonzero(row >= target)[0]
        out.append(float(cost[hit[0]]) if len(hit) else math.nan)
    return out


# ---- statistics and wording -------------------------------------------------------------------


def stats(values) -> dict:
    """n, mean, std and the 95% CI half-width over seeds (Student's t; jaxfl.experiments.report)."""
    return describe(list(values))


def fmt(values, digits: int = 3, scale: float = 1.0) -> str:
    """ "mean ± 95% CI half-width (n = k)" over seeds; NaNs (not reached) counted apart."""
    values = [v * scale for v in values]
    finite = [v for v in values if math.isfinite(v)]
    missing = len(values) - len(finite)
    if not finite:
        return f"not reached in {len(values)} of {len(values)} seeds"
    s = stats(finite)
    text = f"{s['mean']:.{digits}f}"
    if s["n"] > 1:
        text += f" ± {s['ci95_half']:.{digits}f}"
    text += f" (n = {s['n']})"
    if missing:
        text += f"; not reached in {missing} of {len(values)} seeds"
    return text


def difference(a, b) -> dict:
    """Statistics of the paired per-seed difference a - b (the same seed's data for both)."""
    return stats([x - y for x, y in zip(a, b, strict=True)])


def unpaired(a, b) -> dict:
    """Welch's comparison of two independent samples (jaxfl's seeds against a reference's, whose
    partitions and initialisations differ): mean a - mean b and its 95% CI."""
    from jaxfl.experiments.report import _t_quantile

    sa, sb = stats(a), stats(b)
    if sa.get("n", 0) < 2 or sb.get("n", 0) < 2:
        return {"n": 0}
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    mean = sa["mean"] - sb["mean"]
    se = math.sqrt(va + vb)
    if se == 0:
        return {"n": min(sa["n"], sb["n"]), "mean": mean, "ci95": [mean, mean]}
    df = (va + vb) ** 2 / (va**2 / (sa["n"] - 1) + vb**2 / (sb["n"] - 1))
    half = _t_quantile(max(1, int(df))) * se
    return {"n": min(sa["n"], sb["n"]), "mean": mean, "ci95": [mean - half, mean + half]}


def agree(d: dict) -> bool:
    """Whether an unpaired difference's 95% CI contains 0 (jaxfl and its reference agree within
    the seeds' noise)."""
    return d.get("n", 0) > 1 and d["ci95"][0] <= 0 <= d["ci95"][1]


def paired(d: dict, digits: int = 3) -> str:
    """A paired difference's mean and 95% CI, signed."""
    if d.get("n", 0) < 2:
        return f"{d.get('mean', math.nan):+.{digits}f} (one seed)"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.{digits}f} (95% CI {lo:+.{digits}f} .. {hi:+.{digits}f})"


def significance(d: dict) -> str:
    """ " (above 0, 95% CI)", " (below 0, 95% CI)" or " (not significant)" for a paired
    difference's statistics."""
    if d.get("n", 0) > 1 and d["ci95"][0] > 0:
        return " (significantly above 0)"
    if d.get("n", 0) > 1 and d["ci95"][1] < 0:
        return " (significantly below 0)"
    return " (not significant)"


def significantly_above(a, b) -> bool:
    """Whether a - b > 0 with the paired 95% CI entirely above 0."""
    d = difference(a, b)
    return d.get("n", 0) > 1 and d["ci95"][0] > 0


def learned(values, chance: float, margin: float = 0.05) -> bool:
    """Every seed's final accuracy at least ``margin`` above chance."""
    return bool(values) and min(values) > chance + margin


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


# ---- plots ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bands(ax, x, values, label: str, limits=(0.0, 1.0), **kw) -> None:
    """Mean over seeds (rows of ``values``) with its 95% CI band (:func:`stats` per column),
    clipped to the metric's range ``limits`` (accuracies: [0, 1]; None for differences)."""
    columns = [stats(column) for column in np.asarray(values, np.float64).T]
    mean = np.array([c.get("mean", np.nan) for c in columns])
    half = np.array([c.get("ci95_half", np.nan) for c in columns])
    ax.plot(x, mean, label=label, **kw)
    if np.isfinite(half).any():
        ax.fill_between(x, *report.band(mean, half, limits), alpha=0.2, **kw)


def figure(ncols: int = 1):
    plt = _plt()
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    return plt, fig, list(axes[0])


def save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ---- provenance -------------------------------------------------------------------------------


def commit() -> str:
    """The repository's commit, with ``+changes`` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def machine() -> str:
    """The CPU (model and cores) and the JAX backend the runs used."""
    import os

    import jax

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = jax.devices()
    backend = f"{devices[0].platform} x {len(devices)}"
    return f"{model}, {os.cpu_count()} cores; JAX {jax.__version__} on {backend}"
