"""DS-FL's ERA - SA and ERA - FedAvg against participation and label skew, over seeds.

Each cell runs the DS-FL reproduction's three sweeps (ERA, SA, FedAvg; reproductions/dsfl.py at
the chosen scale) with the clients per round and the partition changed, and the study writes
DIR/dependence.json, DIR/dependence.md and DIR/dsfl_dependence.png (reproductions/dependence.py
says what is measured). A folder that holds finished cells continues from them.

  python scripts/dependence.py --scale cpu --data-dir ~/data/mnist
  python scripts/dependence.py --scale ci --participation 5,20 --skews classes2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # common.Context.run imports run.py

from reproductions import common, dependence  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_scale_flags(
        p,
        "the DS-FL entry's scale: ci (embedded blobs, 20 clients, seconds a cell), cpu "
        "(MNIST, 100 clients, 20 rounds, 3 seeds: 4 to 25 minutes a cell on 2 cores, growing "
        "with the clients per round), paper. Default ci",
    )
    p.add_argument(
        "--participation",
        default=None,
        help="clients sampled per round, comma separated, each 1..the entry's clients (20 at "
        "ci, 100 otherwise); default 10,30,100 (5,10,20 at ci)",
    )
    p.add_argument(
        "--skews",
        default=",".join(dependence.SKEWS),
        help=f"label skews, comma separated, of: {', '.join(dependence.SKEWS)} (2 classes per "
        "client; Dirichlet alpha 0.1; 1.0). Default all",
    )
    p.add_argument(
        "--out", default=None, help="results folder (default results/dependence-SCALE-TIMESTAMP)"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write the table and the figure of the cells --out's dependence.json "
        "holds (those a stopped study finished)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (TQDM_DISABLE=1)")
    args = p.parse_args(argv)
    if args.report and not (args.out and (Path(args.out) / "dependence.json").exists()):
        p.error("--report: --out must name a study's folder (one holding dependence.json)")
    ctx = common.Context(args.scale, Path("."), Path(args.data_dir))
    total = dependence.clients(ctx)
    default = "5,10,20" if args.scale == "ci" else ",".join(map(str, dependence.PARTICIPATION))
    try:
        args.participation = [int(v) for v in (args.participation or default).split(",")]
    except ValueError:
        p.error(f"--participation {args.participation!r}: integers, comma separated")
    for value in args.participation:
        if not 1 <= value <= total:
            p.error(f"--participation {value}: allowed 1..{total} (the entry's clients)")
    args.skews = [s.strip() for s in args.skews.split(",")]
    for skew in args.skews:
        if skew not in dependence.SKEWS:
            p.error(f"--skews {skew!r}: allowed {', '.join(dependence.SKEWS)}")
    common.check_scale_data(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    out = Path(args.out or f"results/dependence-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    ctx = common.Context(args.scale, out, Path(args.data_dir))
    start = time.perf_counter()
    if args.report:
        rows = json.loads((out / "dependence.json").read_text())
    else:
        try:
            rows = dependence.measure(ctx, args.skews, args.participation)
        except common.ReproductionError as err:
            print(f"error: {err}; finished cells are kept in {out}", file=sys.stderr)
            return 1
    minutes = (time.perf_counter() - start) / 60
    dependence.plot(rows, out / "dsfl_dependence.png", dependence.clients(ctx))
    setting = (
        f"Every row is the DS-FL entry's {args.scale}-scale runs ({dependence.SHARED[args.scale]}) "
        "with that row's clients per round and partition; ERA - SA and ERA - FedAvg are paired "
        "per seed (the same seed is the same partition and initialisation)."
    )
    command = (
        f"python scripts/dependence.py --scale {args.scale}"
        + (" --data-dir MNIST" if args.scale == "cpu" else "")
        + f" --participation {','.join(map(str, args.participation))} --skews "
        + ",".join(args.skews)
    )
    requested = {(s, n) for s in args.skews for n in args.participation}
    earlier = [f"{r['skew']} x {r['per_round']}" for r in rows
               if (r["skew"], r["per_round"]) not in requested]  # fmt: skip
    if args.report:
        cells = ", ".join(f"{r['skew']} x {r['per_round']}" for r in rows)
        command = f"python scripts/dependence.py --scale {args.scale} --report ({cells})"
    suffix = (
        ""
        if args.report or not earlier
        else (f" (and the folder's earlier cells: {', '.join(earlier)})")
    )
    provenance = (
        f"`{command}`{suffix} at commit {common.commit()}, {time.strftime('%Y-%m-%d')}, "
        f"{common.machine()}" + ("" if args.report else f"; {minutes:.1f} min")
    )
    (out / "dependence.md").write_text(dependence.markdown(rows, setting, provenance))
    for r in rows:
        era_sa, era_fedavg = r["era_minus_sa"], r["era_minus_fedavg"]
        print(
            f"{r['skew']:>8} {r['per_round']:>4} per round: ERA - SA {common.paired(era_sa)}, "
            f"ERA - FedAvg {common.paired(era_fedavg)}"
        )
    print(f"results in {out} (dependence.md, dependence.json, dsfl_dependence.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
