"""Run by tests/test_devices.py in a subprocess with two CPU devices (CI's default: one device
per core on a 2-core machine; XLA_FLAGS must be set before JAX starts, so this cannot run inside
the pytest process).

Every algorithm in ``algorithms.ALGORITHMS`` (so an algorithm added later is covered without
editing this file) runs ``scripts/run.py``'s ``main`` for one round twice: with the default
device count (every device: the clients split over 2) and with ``--devices 1``. Prints one JSON
object, algorithm -> {"exit": [code_default, code_one], "default": round-1 record,
"one": round-1 record, "error": stderr tail when a run failed}.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402

from jaxfl.algorithms import ALGORITHMS  # noqa: E402
from jaxfl.cli import run  # noqa: E402

# an embedded set, tiny: every algorithm's round 1 compiles and runs in a few seconds
SMALL = [
    "--dataset", "synthetic_iid", "--clients", "8", "--clients-per-round", "6",
    "--rounds", "1", "--local-epochs", "1", "--public-per-round", "100",
    "--distill-epochs", "1", "--batch-size", "20", "--seed", "3",
    "--checkpoint-every", "0",
]  # fmt: skip


def one_run(algo: str, out: Path, extra: list[str]) -> tuple[int, dict | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run.main(["--algo", algo, *SMALL, "--out", str(out), *extra])
    metrics = out / "metrics.jsonl"
    record = None
    if code == 0 and metrics.exists():
        record = json.loads(metrics.read_text().splitlines()[0])
    return code, record, err.getvalue()[-2000:]


def main() -> None:
    assert jax.device_count() == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    names = sys.argv[1:] or list(ALGORITHMS)
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in names:
            folder = Path(tmp)
            code_all, rec_all, err_all = one_run(algo, folder / f"{algo}-all", [])
            code_one, rec_one, err_one = one_run(algo, folder / f"{algo}-one", ["--devices", "1"])
            found[algo] = {
                "exit": [code_all, code_one],
                "default": rec_all,
                "one": rec_one,
                "error": err_all if code_all else err_one if code_one else "",
            }
    print(json.dumps(found))


if __name__ == "__main__":
    main()
