#!/usr/bin/env python
"""Compare personalization algorithms on one data split, Motley style (per-client accuracy).

    python scripts/personalization.py --config configs/cross-device.toml --rounds 20

Runs each of ``--algos`` through scripts/run.py with the same flags (so the same split, seed and
local-only baseline), each into OUT/ALGO, then writes OUT/comparison.json and comparison.md (per
algorithm: mean, median, 10th/90th percentile of per-client accuracy, the fraction of clients
worse off than local-only training and better off than the FedAvg global model) and
OUT/client_acc_cdf.png, one CDF curve per algorithm. Every other flag is run.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxfl.algorithms import PERSONALIZATION  # noqa: E402
from jaxfl.cli import run  # noqa: E402
from jaxfl.configs import SPECS  # noqa: E402
from jaxfl.core.metrics import personalization_summary, summarize_clients  # noqa: E402
from jaxfl.experiments.results import check_results_dir, plot_client_cdf, write_json  # noqa: E402


def compare(out: Path, algos: list[str]) -> list[dict]:
    """The comparison table from the per-algorithm results folders under ``out``."""
    local = np.load(out / algos[0] / "local_client_acc.npy")
    global_file = next(
        (out / a / name for a in ("finetune", "fedavg") if a in algos
         for name in ("global_client_acc.npy", "client_acc.npy")
         if (out / a / name).exists()),
        None,
    )  # fmt: skip
    global_acc = np.load(global_file) if global_file else None
    rows, curves = [], {}
    if global_acc is not None:
        curves["FedAvg global model"] = global_acc
    for algo in algos:
        acc = np.load(out / algo / "client_acc.npy")
        curves[algo] = acc
        summary = json.loads((out / algo / "summary.json").read_text())
        rows.append(
            {
                "algo": algo,
                **summarize_clients(acc, "client_acc"),
                **personalization_summary(acc, global_acc, local),
                "test_acc": summary.get("final", {}).get("test_acc"),
                "wall_time_s": summary.get("wall_time_s"),
            }
        )
    plot_client_cdf(curves, out / "client_acc_cdf.png", title="Per-client accuracy by algorithm")
    return rows


def markdown(rows: list[dict]) -> str:
    cols = [
        ("algo", "algorithm", "{}"),
        ("client_acc_mean", "mean", "{:.3f}"),
        ("client_acc_median", "median", "{:.3f}"),
        ("client_acc_p10", "p10", "{:.3f}"),
        ("client_acc_p90", "p90", "{:.3f}"),
        ("frac_worse_than_local", "worse than local", "{:.2f}"),
        ("frac_better_than_global", "better than FedAvg", "{:.2f}"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument(
        "--algos",
        default=",".join(PERSONALIZATION),
        help=f"comma-separated algorithms to compare (default {','.join(PERSONALIZATION)})",
    )
    p.add_argument(
        "--out", default=None, help="results folder (default results/personalization-TIMESTAMP)"
    )
    args, run_argv = p.parse_known_args(argv)
    algos = [a for a in args.algos.split(",") if a]
    unknown = [a for a in algos if a not in SPECS]
    if unknown or not algos:
        allowed = ", ".join(SPECS)
        print(
            f"error: --algos {args.algos!r}: unknown {unknown}; allowed: {allowed}", file=sys.stderr
        )
        return 2
    out = Path(args.out or f"results/personalization-{time.strftime('%Y%m%d-%H%M%S')}")
    check_results_dir(out)
    for algo in algos:
        code = run.main([*run_argv, "--algo", algo, "--out", str(out / algo), "--compare-local"])
        if code != 0:
            print(
                f"error: --algo {algo} exited with {code}; results so far in {out}", file=sys.stderr
            )
            return code
    rows = compare(out, algos)
    write_json(out / "comparison.json", {"algos": algos, "flags": run_argv, "rows": rows})
    table = markdown(rows)
    (out / "comparison.md").write_text(table)
    print(table + f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
