"""Stopping a run or a sweep with Ctrl-C (SIGINT) or SIGTERM: the round or block in flight is
checkpointed, the summary says so, the exit status is 128 + the signal's number, and the resume
command printed works (real processes and real signals)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxfl.cli import run

ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_offers_the_resume_command_only_when_a_checkpoint_exists(tmp_path):
    import jax.numpy as jnp

    from jaxfl.experiments import checkpoint

    status, message = run.interrupted(tmp_path)  # stopped before its first checkpoint
    assert status["checkpoint"] is None and "--resume" not in message
    assert "nothing to resume" in message
    checkpoint.save(tmp_path / checkpoint.CHECKPOINT_DIR, 3, {"w": jnp.zeros(2)}, {})
    status, message = run.interrupted(tmp_path)
    assert status["checkpoint_round"] == 3 and status["resume"] in message
    assert f"--resume {tmp_path}" in message and "round 4" in message


@pytest.mark.parametrize(
    "signame,status",
    [("SIGINT", 130), pytest.param("SIGTERM", 143, marks=pytest.mark.slow)],
)
def test_ctrl_c_checkpoints_the_round_in_flight_and_its_resume_command_works(
    tmp_path, signame, status
):
    """A real process and SIGINT (Ctrl-C) or SIGTERM (a scheduler's or a preempted VM's): the
    run stops after the round in flight, checkpoints it (the periodic checkpoint is far away),
    exits with 128 + the signal's number and prints a resume command that runs."""
    import signal
    import time

    from jaxfl.experiments import checkpoint

    out = tmp_path / "res"
    command = [sys.executable, str(ROOT / "scripts" / "run.py"), "--algo", "fedavg"]
    command += ["--dataset", "blobs", "--model", "mlp-8", "--clients", "6", "--rounds", "100000"]
    command += ["--checkpoint-every", "100000", "--local-epochs", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no round finished in 10 minutes"
        time.sleep(0.1)
    process.send_signal(getattr(signal, signame))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    saved = checkpoint.latest_round(out / checkpoint.CHECKPOINT_DIR)
    assert saved is not None and saved >= 1, stderr
    assert f"python scripts/run.py --resume {out}" in stderr and f"round {saved + 1}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["checkpoint_round"] == saved
    assert run.main(["--resume", str(out), "--rounds", str(saved + 1)]) == 0
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds[-1] == saved + 1 and rounds == sorted(set(rounds))


def test_sigterm_in_a_sweep_checkpoints_every_experiment_and_resume_finishes_it(tmp_path):
    """A sweep (two seeds in one compiled call) in a real process gets SIGTERM: it finishes the
    block in flight, checkpoints it, writes an interrupted summary, exits with 143 and names the
    resume command; resuming continues both experiments from that round."""
    import signal
    import time

    from jaxfl.experiments import checkpoint

    out = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "scripts" / "run.py"), "--algo", "fedavg"]
    command += ["--dataset", "blobs", "--model", "mlp-8", "--clients", "6", "--rounds", "100000"]
    command += ["--seeds", "2", "--checkpoint-every", "0", "--local-epochs", "1"]
    command += ["--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no round finished in 10 minutes"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    saved = checkpoint.latest_round(out / checkpoint.CHECKPOINT_DIR / "fedavg-0")
    assert saved is not None and saved >= 1, stderr
    assert f"python scripts/run.py --resume {out}" in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stopped_at"]["round"] == saved
    assert run.main(["--resume", str(out), "--rounds", str(saved + 1)]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for seed in (0, 1):
        rounds = [r["round"] for r in records if r["seed"] == seed]
        assert rounds[-1] == saved + 1 and rounds == sorted(set(rounds)), rounds


def test_a_second_ctrl_c_quits_at_once():
    stops = []

    class Sim:
        round, history = 4, [{"round_time_s": 30.0}]

        def stop(self, reason):
            stops.append(reason)

    ctrl_c = run.CtrlC(Sim())
    ctrl_c.handle()  # the first asks the run to stop after round 5, the one in flight
    assert stops == [run.INTERRUPTED]
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.handle()


def test_a_second_signal_in_a_sweep_quits_at_once_and_says_what_resume_does(
    tmp_path, capsys, monkeypatch
):
    from jaxfl.experiments import sweep_runner

    def second_signal(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_runner, "run_sweep", second_signal)
    out = tmp_path / "sweep"
    args = run.parse_args(["--algo", "fedavg", "--seeds", "2", "--out", str(out)])
    assert run.run_sweep(args) == 130
    err = capsys.readouterr().err
    assert "quit at once" in err and f"--resume {out}" in err
    assert "before the first round" not in err
