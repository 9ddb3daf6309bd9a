"""scripts/run.py end to end, and every bad input stopping with a clear message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import run  # noqa: E402

SMALL = [
    "--dataset",
    "synthetic_iid",
    "--clients",
    "8",
    "--rounds",
    "2",
    "--local-epochs",
    "1",
    "--public-per-round",
    "100",
    "--distill-epochs",
    "1",
    "--batch-size",
    "20",
]


def test_run_writes_results_folder(tmp_path, capsys):
    out = tmp_path / "res"
    assert run.main(["--algo", "dsfl", *SMALL, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["dataset"] == "synthetic_iid" and config["model"] == "mlp"
    assert config["communication_per_client_per_round"]["up_floats"] == 100 * 10
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["final"]["test_acc"] <= 1
    assert (out / "accuracy.png").stat().st_size > 1000
    # communication: DS-FL sends soft labels, FedAvg whole models; both are recorded per round
    assert json.loads(lines[-1])["comm_up_bytes_total"] == 2 * 8 * 4 * 100 * 10


def test_same_seed_same_numbers(tmp_path):
    for name in ("a", "b"):
        assert run.main(["--algo", "fedavg", *SMALL, "--out", str(tmp_path / name)]) == 0
    strip = lambda p: [
        {k: v for k, v in json.loads(x).items() if k != "round_time_s"}
        for x in (p / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--algo", "fedprox"], "--algo 'fedprox' is not allowed; allowed: fedavg, dsfl"),
        (["--clients-per-round", "9"], "--clients-per-round 9"),
        (["--temperature", "0"], "--temperature 0.0"),
        (["--dataset", "imagenet"], "--dataset 'imagenet'"),
        (["--partition", "pathological"], "--partition 'pathological'"),
        (["--model", "vgg"], "--model 'vgg'"),
        (["--aggregation", "median"], "--aggregation 'median'"),
        (["--partition", "shards", "--shards-per-client", "100000"], "--shards-per-client 100000"),
        (["--public-size", "10"], "distillation batch"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, needle):
    out = tmp_path / "res"
    args = [*SMALL, *argv, "--out", str(out)]  # later flags win in argparse
    assert run.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not out.exists() or not any(out.iterdir())


def test_existing_results_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    assert run.main([*SMALL, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_nan_loss_stops_with_round_and_metric_and_keeps_results(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--algo", "fedavg", *SMALL, "--rounds", "6", "--lr", "1e30", "--out", str(out)]
    assert run.main(argv) == 3
    err = capsys.readouterr().err
    assert "round 1: metric 'train_loss' is nan" in err or "is inf" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "round" in summary["error"]
    assert (out / "config.json").exists()


def test_help_explains_every_flag():
    text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in [
        "--algo",
        "--clients",
        "--clients-per-round",
        "--dataset",
        "--data-dir",
        "--partition",
        "--alpha",
        "--model",
        "--rounds",
        "--local-epochs",
        "--batch-size",
        "--lr",
        "--public-size",
        "--public-per-round",
        "--temperature",
        "--aggregation",
        "--eval-every",
        "--seed",
        "--out",
        "--client-chunk",
        "--config",
        "--checkpoint-every",
        "--keep-checkpoints",
        "--resume",
        "--early-stop-patience",
        "--target",
        "--time-budget",
        "--tensorboard",
        "--dropout",
        "--min-received",
        "--straggler-fraction",
        "--adversary-fraction",
        "--attack",
    ]:
        assert flag in text


@pytest.mark.parametrize("name", ["faults-dsfl.toml", "faults-fedavg.toml"])
def test_fault_config_files_run(tmp_path, name):
    """The shipped fault configs, on the embedded data with a small population (CLI overrides)."""
    out = tmp_path / "res"
    small = ["--dataset", "synthetic_iid", "--clients", "10", "--clients-per-round", "8"]
    argv = ["--config", str(ROOT / "configs" / name), *small, "--rounds", "2", "--out", str(out)]
    argv += ["--local-epochs", "1", "--distill-epochs", "1", "--public-per-round", "100"]
    assert run.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["faults"]["dropout"] == 0.3 and config["faults"]["attack"] != "none"
    assert config["clients"] == 10  # the command line wins over the file
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["received"] <= 8 for r in records)


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('algo = "dsfl"\nlearning_rate = 0.1\n')
    assert run.main(["--config", str(bad), *SMALL, "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err
