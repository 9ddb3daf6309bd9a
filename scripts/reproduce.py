#!/usr/bin/env python
"""Re-measure each paper's headline claim over seeds and write what was found.

    python scripts/reproduce.py all --scale cpu --data-dir ../shared/data/mnist
    python scripts/reproduce.py dsfl --scale ci

NAME is one entry of reproductions/ (dsfl, fd, feddf, fccl, motley, incfl, shaping), several
comma separated, or ``all``.
Scales: ``ci`` (seconds, embedded data: checks each entry runs and learns, judges nothing),
``cpu`` (at most 15 minutes per entry on a 2-core CPU, 3 seeds, real MNIST from --data-dir) and
``paper`` (the paper's own setting, for a GPU machine with TFDS). Every invocation writes a
results folder (default results/reproduce-SCALE-TIMESTAMP): one folder per entry with its runs
(scripts/run.py results folders), finding.json and plots, and RESULTS.md for what ran; given an
existing --out, finished runs are reused (a stopped reproduction continues). At
``cpu`` scale it also updates the repository's record, unless --no-record: the entry's
reproductions/findings/NAME.json and plot, reproductions/RESULTS.md (every entry's latest
finding) and the README's table between its reproductions markers. Every number in those files
comes from the runs; each section names the command, commit and machine that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from reproductions import NAMES, common, entry  # noqa: E402

RECORD = ROOT / "reproductions"
README_START = "<!-- reproductions: written by scripts/reproduce.py, do not edit -->"
README_END = "<!-- /reproductions -->"


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", help=f"an entry ({', '.join(NAMES)}), several comma separated, or all")
    common.add_scale_flags(
        p,
        "ci: seconds, embedded data, smoke test; cpu: <= 15 min per entry on 2 cores, "
        "3 seeds, MNIST from --data-dir; paper: the paper's setting (GPU, TFDS). Default ci",
    )
    p.add_argument(
        "--out", default=None, help="results folder (default results/reproduce-SCALE-TIMESTAMP)"
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help="at --scale cpu, do not update reproductions/RESULTS.md, findings/, plots/ and the "
        "README",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (TQDM_DISABLE=1)")
    args = p.parse_args(argv)
    names = list(NAMES) if args.name == "all" else [n.strip() for n in args.name.split(",")]
    for name in names:
        if name not in NAMES:
            p.error(
                f"NAME {name!r} is not a reproduction; allowed: {', '.join(NAMES)} (one, or "
                "several comma separated), all"
            )
    common.check_scale_data(p, args)
    return args, names


def main(argv: list[str] | None = None) -> int:
    args, names = parse(argv)
    if args.quiet:  # tqdm reads it: run.py's bars too
        os.environ["TQDM_DISABLE"] = "1"
    out = Path(args.out or f"results/reproduce-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/reproduce.py " + " ".join(
        [args.name, "--scale", args.scale]
        + (["--data-dir", "MNIST"] if args.scale == "cpu" else [])
    )
    records, failed = [], []
    for name in names:
        folder = out / name  # an existing one continues: its finished runs are reused
        folder.mkdir(parents=True, exist_ok=True)
        ctx = common.Context(args.scale, folder, Path(args.data_dir))
        try:
            record = reproduce(name, ctx, command)
        except common.ReproductionError as err:
            print(f"error: {name}: {err}; results so far in {folder}", file=sys.stderr)
            failed.append(name)
            continue
        records.append(record)
        print(f"{name}: {record['verdict']}: {record['headline']}")
    (out / "RESULTS.md").write_text(results_markdown(records, args.scale))
    if args.scale == "cpu" and not args.no_record and records:
        update_record(records, out)
    print(f"results in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def reproduce(name: str, ctx: common.Context, command: str) -> dict:
    """Run one entry's simulations, analyse them, write ``ctx.out/finding.json``."""
    module = entry(name)
    start = time.perf_counter()
    dirs = {key: ctx.run(key, argv) for key, argv in module.runs(ctx).items()}
    finding = module.analyze(ctx, dirs)
    previous = ctx.out / "finding.json"
    wall = time.perf_counter() - start
    if previous.exists():  # a resumed invocation: the runs' time was spent before
        wall = max(wall, json.loads(previous.read_text()).get("wall_time_s", 0.0))
    verdict, why = finding.verdict, finding.why
    if ctx.scale == "ci":  # tiny runs: they check that the entry runs and learns, nothing more
        verdict, why = "not judged", f"ci scale, a smoke test (would read: {verdict}; {why})"
    record = {
        "name": name,
        "title": module.TITLE,
        "claim": module.CLAIM,
        "paper": module.PAPER,
        "hparams": module.HPARAMS,
        "scale": ctx.scale,
        "setting": module.SETTINGS[ctx.scale],
        "verdict": verdict,
        "why": why,
        "headline": finding.headline,
        "rows": [list(r) for r in finding.rows],
        "learned": finding.learned,
        "plots": finding.plots,
        "data": finding.data,
        "wall_time_s": round(wall, 1),
        "machine": common.machine(),
        "commit": common.commit(),
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
    }
    from jaxfl.experiments.results import write_json

    write_json(ctx.out / "finding.json", record)
    return record


def results_markdown(records: list[dict], scale: str) -> str:
    """RESULTS.md: the summary table, then one section per entry."""
    lines = [
        "# Reproductions",
        "",
        "Written by `scripts/reproduce.py` (do not edit by hand): each section names the command, "
        "commit and machine that produced it. Mean ± half-width of the 95% confidence interval "
        "over seeds (Student's t); paired differences use the same seed's data for both sides.",
        "",
        summary_table(records),
    ]
    for r in records:
        lines += [
            f"## {r['title']}",
            "",
            f"**Claim.** {r['claim']}",
            "",
            f"**Paper.** {r['paper']}",
            "",
            f"**Setting ({r['scale']} scale).** {r['setting']}.",
            "",
            f"**Hyperparameters.** {r['hparams']}",
            "",
            "| quantity | paper | measured |",
            "|---|---|---|",
            *(f"| {q} | {p or '-'} | {m} |" for q, p, m in r["rows"]),
            "",
            f"**Verdict: {r['verdict']}.** {r['why']}",
            "",
            *(f"![{r['name']}](plots/{plot})" for plot in r["plots"]),
            "",
            f"*`{r['command']}` at commit {r['commit']}, {r['date']}, {r['machine']}; "
            f"{r['wall_time_s'] / 60:.1f} min.*",
            "",
        ]
    return "\n".join(lines) + ("\n" if scale else "")


def dependence_section() -> str:
    """The DS-FL dependence study's record (reproductions/dependence/dependence.md, written by
    scripts/dependence.py), as RESULTS.md's last section; empty if it has not been run."""
    path = RECORD / "dependence" / "dependence.md"
    if not path.exists():
        return ""
    text = path.read_text().replace("](dsfl_dependence.png)", "](dependence/dsfl_dependence.png)")
    return "\n#" + text.lstrip()  # its title one level down, a section of RESULTS.md


def summary_table(records: list[dict]) -> str:
    lines = ["| paper | claim | measured | verdict |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['title']} | {r['paper']} | {r['headline']} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def update_record(records: list[dict], out: Path) -> None:
    """The repository's record: findings/NAME.json, plots/, RESULTS.md and the verdict table of
    docs/reproductions.md."""
    from jaxfl.experiments.results import write_json

    (RECORD / "findings").mkdir(exist_ok=True)
    (RECORD / "plots").mkdir(exist_ok=True)
    for r in records:
        write_json(RECORD / "findings" / f"{r['name']}.json", r)
        for plot in r["plots"]:
            shutil.copyfile(out / r["name"] / plot, RECORD / "plots" / plot)
    write_record()


def write_record() -> None:
    """reproductions/RESULTS.md and docs/reproductions.md's table from every recorded finding."""
    every = [
        json.loads((RECORD / "findings" / f"{n}.json").read_text())
        for n in NAMES
        if (RECORD / "findings" / f"{n}.json").exists()
    ]
    (RECORD / "RESULTS.md").write_text(results_markdown(every, "cpu") + dependence_section())
    readme = ROOT / "docs" / "reproductions.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        block = f"{README_START}\n{summary_table(every)}{README_END}"
        readme.write_text(head + block + tail)


if __name__ == "__main__":
    sys.exit(main())
