"""A fixed set of runs whose numbers must not change when the code is only reorganised.

Every algorithm on the embedded synthetic data, DP-FedAvg, faults, a seed sweep, a grid sweep,
FedBuff and a resumed run, each through ``scripts/run.py`` at a fixed seed. ``record`` writes every
run's metric records (times left out) to ``tests/data/behaviour.json``; ``tests/test_behaviour.py``
runs them again and compares. Record before a reorganisation, compare after::

    python tests/behaviour.py            # writes tests/data/behaviour.json
    python tests/behaviour.py moon       # records only the named runs (a new algorithm's)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxfl import configs

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "data" / "behaviour.json"

SMALL = ["--dataset", "synthetic_iid", "--clients", "8", "--rounds", "2", "--local-epochs", "1"]
SMALL += ["--public-per-round", "100", "--distill-epochs", "1", "--batch-size", "20"]
SMALL += ["--seed", "3"]

# every algorithm --algo offers: a new one fails tests/test_behaviour.py until it is recorded
ALGORITHMS = configs.ALGORITHMS

FAULTS = ["--dropout", "0.3", "--straggler-fraction", "0.25", "--straggler-work", "0.5"]
FAULTS += ["--adversary-fraction", "0.25"]

# name -> the flags after --algo; every one runs at SMALL's size
RUNS: dict[str, list[str]] = {algo: ["--algo", algo] for algo in ALGORITHMS}
RUNS |= {
    "fedavg_dp": ["--algo", "fedavg", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "dsfl_dp": ["--algo", "dsfl", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "fd_dp": ["--algo", "fd", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "fedmd_dp": ["--algo", "fedmd", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "ditto_dp": ["--algo", "ditto", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "perfedavg_dp": ["--algo", "perfedavg", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "incfl_dp": ["--algo", "incfl", "--dp-clip", "1.0", "--dp-noise", "0.5"],
    "moon_dp": ["--algo", "moon", "--dp-clip", "1.0", "--dp-noise", "0.5"],  # DP from uploads.py
    "fedavg_poisson_dp": [
        "--algo",
        "fedavg",
        "--participation",
        "poisson",
        "--dp-clip",
        "1.0",
        "--dp-noise",
        "0.5",
    ],  # fmt: skip
    "fedavg_faults": ["--algo", "fedavg", *FAULTS, "--attack", "scaled_update"],
    "dsfl_faults": ["--algo", "dsfl", *FAULTS, "--attack", "label_flip"],
    "fedavg_seeds": ["--algo", "fedavg", "--seeds", "2"],
    "dsfl_grid": ["--algo", "dsfl", "--sweep", "temperature=0.1,0.5"],
    "fedbuff_async": ["--algo", "fedbuff", "--concurrency", "6", "--buffer", "3"],
}
# rounds not applied (fewer than --min-received uploads arrive): what each algorithm keeps
GUARDED = ("fedavg", "dsfl", "fd", "ditto", "feddyn", "scaffold", "fednova", "hypcluster")
GUARDED += ("mrmtl", "feddf", "incfl", "moon", "perfedavg")
NOT_APPLIED = ["--dropout", "0.4", "--min-received", "3"]
RUNS |= {f"{algo}_not_applied": ["--algo", algo, *NOT_APPLIED] for algo in GUARDED}
RUNS["fedavg_dp_not_applied"] = [*RUNS["fedavg_dp"], *NOT_APPLIED]
RUNS["dsfl_dp_not_applied"] = [*RUNS["dsfl_dp"], *NOT_APPLIED]
VOLATILE = {"round_time_s", "elapsed_s", "time_s", "wall_s"}


def _records(out: Path) -> list[dict]:
    records = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.append({k: v for k, v in record.items() if k not in VOLATILE})
    return records


def run_one(name: str, tmp: Path) -> list[dict]:
    """One run of the set: its metric records without wall-clock times."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from jaxfl.cli import run

    out = tmp / name
    if name == "resumed":
        flags = ["--algo", "fedavg", *SMALL, "--rounds", "2", "--checkpoint-every", "1"]
        assert run.main([*flags, "--out", str(out)]) == 0
        assert run.main(["--resume", str(out), "--rounds", "3"]) == 0
        return _records(out)
    # a round not applied, then one that is: the state the guard kept is what it builds on
    more = ["--rounds", "3"] if name.endswith("_not_applied") else []
    assert run.main([*RUNS[name], *SMALL, *more, "--out", str(out)]) == 0, name
    return _records(out)


NAMES = (*RUNS, "resumed")


def versions() -> dict:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def record(tmp: Path, names=NAMES) -> None:
    """Record ``names`` (all by default); recording only some keeps the others, which needs
    the same jax version as the file's."""
    runs = {}
    if set(names) != set(NAMES):
        kept = json.loads(RECORD.read_text())
        assert kept["versions"] == versions(), "re-record every run with this jax version"
        runs = kept["runs"]
    runs |= {name: run_one(name, tmp) for name in names}
    runs = {name: runs[name] for name in NAMES}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({"versions": versions(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {len(names)} of {len(runs)} runs to {RECORD}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        record(Path(tmp), tuple(sys.argv[1:]) or NAMES)
