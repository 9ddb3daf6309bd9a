"""DP-FedAvg's privacy-utility curve: test accuracy against epsilon, fixed-size and Poisson
participation, over seeds.

For each participation mode one sweep runs every noise multiplier and seed in one compiled call
(``scripts/run.py --sweep dp-noise=... --seeds N``); the study then draws each setting's final
test accuracy (mean and 95% CI over seeds) against its epsilon after the last round, each mode
with its own accounting (fixed: replace-one, RDP; Poisson: add-or-remove, PLD), and writes
DIR/privacy_utility.json, DIR/privacy_utility.md and DIR/privacy_utility.png. The sweeps' own
folders (DIR/fixed, DIR/poisson) hold their metrics; a finished one is not run again.

  python scripts/privacy_utility.py --data-dir ~/data/mnist        # MNIST, 100 clients
  python scripts/privacy_utility.py --tiny                           # seconds, embedded data
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("fixed", "poisson")
# DP-FedAvg on MNIST at 100 clients (Dirichlet 1.0), 20 per round (q = 0.2), MLP 64, a fixed
# clip S = 0.5 (adaptive clipping would take part of z for its count), 50 rounds
MNIST = [
    "--dataset", "mnist", "--clients", "100", "--clients-per-round", "20", "--model", "mlp-64",
    "--local-epochs", "1", "--batch-size", "20", "--rounds", "50", "--eval-every", "10",
    "--dp-clip", "0.5",
]  # fmt: skip
TINY = [
    "--dataset", "synthetic_iid", "--clients", "8", "--clients-per-round", "3", "--model",
    "logreg", "--rounds", "2", "--batch-size", "20", "--dp-clip", "0.5",
]  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default=None, help="MNIST's files (see ../shared/data/README)")
    p.add_argument(
        "--noise",
        default="0.5,0.7,1,1.5,2,4",
        help="noise multipliers z, comma separated (default 0.5,0.7,1,1.5,2,4)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per noise level (default 3)")
    p.add_argument("--tiny", action="store_true", help="embedded data, 8 clients, 2 rounds")
    p.add_argument(
        "--out", default=None, help="results folder (default results/privacy_utility-TIMESTAMP)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        args.noise = [float(z) for z in args.noise.split(",")]
    except ValueError:
        p.error(f"--noise {args.noise!r}: numbers, comma separated")
    if not all(z > 0 for z in args.noise):
        p.error("--noise: every multiplier > 0 (z = 0 has no finite epsilon)")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: allowed >= 1")
    if not args.tiny and args.data_dir is None:
        p.error("--data-dir is needed for MNIST (or --tiny for the embedded data)")
    args.out = Path(args.out or f"results/privacy_utility-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def sweep_argv(args, mode: str) -> list[str]:
    setting = TINY if args.tiny else [*MNIST, "--data-dir", str(args.data_dir)]
    noise = ",".join(f"{z:g}" for z in args.noise)
    argv = ["--algo", "fedavg", *setting, "--participation", mode, "--seeds", str(args.seeds)]
    argv += ["--sweep", f"dp-noise={noise}", "--out", str(args.out / mode)]
    return argv + (["--quiet"] if args.quiet else [])


def points(summary: dict) -> list[dict]:
    """One point per noise level: z, epsilon, final test accuracy (mean, 95% CI half-width)."""
    out = []
    for s in summary["settings"]:
        final = s["final"]
        out.append(
            {
                "noise": float(s["setting"].split("=")[1]),
                "epsilon": final["dp_epsilon"]["mean"],
                "test_acc": final["test_acc"]["mean"],
                "ci95_half": final["test_acc"].get("ci95_half", 0.0),
                "seeds": len(s["seeds"]),
            }
        )
    return sorted(out, key=lambda point: point["noise"])


def table(results: dict) -> str:
    lines = [
        "| participation | epsilon computed as | z | epsilon | test accuracy (mean ± 95% CI) |",
        "|---|---|---:|---:|---|",
    ]
    for mode, result in results.items():
        for point in result["points"]:
            lines.append(
                f"| {mode} | {result['epsilon_of']} | {point['noise']:g} | "
                f"{point['epsilon']:.3g} | {point['test_acc']:.4f} ± {point['ci95_half']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, result in results.items():
        pts = [p for p in result["points"] if math.isfinite(p["epsilon"])]
        ax.errorbar(
            [p["epsilon"] for p in pts],
            [p["test_acc"] for p in pts],
            yerr=[p["ci95_half"] for p in pts],
            marker="o",
            capsize=3,
            label=f"{mode}: {result['epsilon_of']}",
        )
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set(xlabel="epsilon after the last round (user level)", ylabel="final test accuracy")
    ax.set_title("DP-FedAvg: accuracy against privacy (mean, 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse(argv)
    from jaxfl.cli import run

    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in MODES:
        folder = args.out / mode
        done = folder / "summary.json"
        if not (done.exists() and json.loads(done.read_text()).get("status") is None):
            if folder.exists():  # an unfinished sweep: continue it
                code = run.main(["--resume", str(folder)])
            else:
                code = run.main(sweep_argv(args, mode))
            if code != 0:
                print(f"error: the {mode} sweep failed (exit {code}); see {folder}")
                return code
        summary = json.loads(done.read_text())
        results[mode] = {"epsilon_of": summary["dp_epsilon_of"], "points": points(summary)}
    (args.out / "privacy_utility.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "privacy_utility.md").write_text(table(results))
    plot(results, args.out / "privacy_utility.png")
    print(table(results))
    print(
        f"results in {args.out} (privacy_utility.md, .json, .png; the sweeps in fixed/, poisson/)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
