"""Checkpoint and resume through scripts/run.py: bit-identical continuation, SIGKILL safety."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from jaxfl.cli import flags
from jaxfl.configs.run import RunConfig
from jaxfl.experiments import builder, checkpoint
from jaxfl.experiments.results import read_metrics

from .test_cli import SMALL, run

ROOT = Path(__file__).resolve().parents[1]


def _metrics(folder: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k != "round_time_s"}
        for r in read_metrics(folder / "metrics.jsonl")
    ]


# resuming is algorithm-blind; DS-FL's checkpoint is loaded in the SIGKILL test below
@pytest.mark.parametrize("algo", ["fedavg"])
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, algo):
    base = ["--algo", algo, *SMALL, "--checkpoint-every", "1"]
    assert run.main([*base, "--rounds", "4", "--out", str(tmp_path / "whole")]) == 0
    assert run.main([*base, "--rounds", "2", "--out", str(tmp_path / "part")]) == 0
    assert run.main(["--resume", str(tmp_path / "part"), "--rounds", "4"]) == 0
    whole, resumed = _metrics(tmp_path / "whole"), _metrics(tmp_path / "part")
    assert [r["round"] for r in resumed] == [1, 2, 3, 4]
    assert resumed == whole  # bit-identical on CPU
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4


def test_resume_drops_metrics_past_the_checkpoint_and_a_torn_line(tmp_path):
    out = tmp_path / "r"
    base = ["--algo", "fedavg", *SMALL, "--rounds", "3", "--checkpoint-every", "2"]
    assert run.main([*base, "--out", str(out)]) == 0
    before = _metrics(out)
    # as if the run died after writing round 3's metrics but before its checkpoint
    shutil.rmtree(out / "checkpoints" / "3")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "tor')
    assert run.main(["--resume", str(out)]) == 0  # continues after round 2
    assert _metrics(out) == before


def test_resume_rejects_flags_that_would_change_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert run.main(["--algo", "fedavg", *SMALL, "--out", str(out)]) == 0
    assert run.main(["--resume", str(out), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--resume takes only --rounds, --devices, --rounds-per-call" in err
    assert err.rstrip().endswith("got lr")
    assert run.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_sigkill_mid_run_leaves_complete_lines_and_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "killed"
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "run.py"),
        "--algo",
        "dsfl",
        *SMALL,
        "--rounds",
        "400",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(read_metrics(out / "metrics.jsonl")) < 4 and time.monotonic() < deadline:
            assert proc.poll() is None, "run.py ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.13)  # land somewhere inside a round or a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    assert [r["round"] for r in records] == list(range(1, len(records) + 1))
    last = checkpoint.latest_round(out / "checkpoints")
    assert last is not None and last >= len(records) - 1
    args = flags.parse(["--algo", "dsfl", *SMALL])
    algo = builder.build(RunConfig.from_flags(args)).algorithm
    state, meta = checkpoint.restore(
        out / "checkpoints", jax.eval_shape(algo.init, jax.random.key(0))
    )
    assert int(state.round) == last == meta["round"]
    # and the run continues from it
    assert run.main(["--resume", str(out), "--rounds", str(last + 2)]) == 0
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, last + 3))


def test_a_checkpoint_of_another_structure_is_refused_with_the_reason(tmp_path):
    """A state saved with a field the resuming version names otherwise (as 'dp' became
    'upload_state'): a one-line error that says why and what to do, not orbax's tree dump;
    the checkpoint is left as it was."""
    import jax.numpy as jnp

    checkpoint.save(tmp_path, 1, {"params": jnp.ones(3), "dp": jnp.zeros(())}, {"seed": 0})
    like = {"params": jnp.ones(3), "upload_state": jnp.zeros(())}
    with pytest.raises(checkpoint.CheckpointMismatchError, match="another version of jaxfl"):
        checkpoint.restore(tmp_path, like)
    state, meta = checkpoint.restore(tmp_path, {"params": jnp.ones(3), "dp": jnp.zeros(())})
    assert meta["round"] == 1 and float(state["params"][0]) == 1.0
