"""scripts/run.py end to end, and every bad input stopping with a clear message."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from jaxfl.cli import config_flags, run  # noqa: E402

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
        (["--algo", "fedsgd"], "--algo 'fedsgd' is not allowed; allowed: fedavg, dsfl, local"),
        (
            ["--algo", "finetune", "--finetune-layers", "middle"],
            "--finetune-layers 'middle' is not allowed; allowed: all",
        ),
        (["--client-val-fraction", "1.5"], "--client-val-fraction 1.5"),
        (["--algo", "hypcluster", "--num-clusters", "0"], "--num-clusters 0"),
        (["--algo", "ditto", "--ditto-lambda", "-1"], "--ditto-lambda -1.0"),
        (["--algo", "perfedavg", "--batch-size", "1"], "--batch-size 1 is not allowed"),
        (["--algo", "local", "--dropout", "0.5"], "--dropout is not allowed for --algo local"),
        (
            ["--algo", "finetune", "--finetune-epochs", "0,2", "--client-val-fraction", "0"],
            "set --client-val-fraction > 0",
        ),
        (["--algo", "finetune", "--finetune-epochs", "two"], "--finetune-epochs 'two'"),
        (
            ["--algo", "fedavg", "--models", "mlp:1,logreg:1"],
            "only with --algo dsfl, local, fd, feddf, fedmd",
        ),
        (["--models", "mlp:1,logreg:1", "--model", "mlp"], "not both"),
        (["--models", "vgg:1"], "--models 'vgg:1'"),
        (["--algo", "fd", "--fd-beta", "-1"], "--fd-beta -1.0"),
        (["--clients-per-round", "9"], "--clients-per-round 9"),
        (["--temperature", "0"], "--temperature 0.0"),
        (["--dataset", "imagenet"], "--dataset 'imagenet'"),
        (["--partition", "pathological"], "--partition 'pathological'"),
        (["--model", "vgg"], "--model 'vgg'"),
        (["--aggregation", "median"], "--aggregation 'median'"),
        (["--partition", "shards", "--shards-per-client", "100000"], "--shards-per-client 100000"),
        (["--public-size", "10"], "distillation batch"),
        (["--lr", "nan"], "--lr nan is not allowed; allowed: a finite number"),
        (["--sweep", "lr=0.1,inf"], "every value must be a finite number"),
        (["--dataset", "mnist", "--data-dir", "/no/such/folder"], "does not exist"),
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


def _help(*argv: str) -> str:
    """run.py's --help as a user gets it (a fresh process), checking that it imported no JAX."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['run.py', *{list(argv)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'run.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('JAX IMPORTED' if 'jax' in sys.modules else 'no jax')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.rstrip().endswith("no jax"), out.stdout[-300:]
    return out.stdout


def test_help_is_grouped_needs_no_jax_and_shows_one_algorithms_own_flags():
    from jaxfl.cli import flag_help

    text = _help("--help")
    titles = [*flag_help.GROUPS, flag_help.ALGORITHM_GROUP]
    positions = [text.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    dsfl = _help("--algo", "dsfl", "--help")
    assert "dsfl's own flags:" in dsfl and "--temperature" in dsfl and "--aggregation" in dsfl
    assert "--ditto-lambda" not in dsfl and "--fedmd-lr" not in dsfl and "--rounds" in dsfl


def test_the_jax_free_specs_match_the_implementations():
    """jaxfl.configs' specs stand in for the algorithms when --help builds the flags: one per
    module, each module's SPEC is its spec, and --help's groups hold every other flag."""
    import argparse

    from jaxfl.algorithms import ALGORITHMS, PERSONALIZATION
    from jaxfl.cli import algorithm_flags, flag_help, flags
    from jaxfl.configs import PERSONALIZATION as SPEC_PERSONALIZATION
    from jaxfl.configs import SPECS

    assert tuple(ALGORITHMS) == tuple(SPECS) and SPEC_PERSONALIZATION == PERSONALIZATION
    for name, module in ALGORITHMS.items():
        assert module.SPEC is SPECS[name] and SPECS[name].module() is module, name
    parser = argparse.ArgumentParser()
    algorithm_flags.add_algorithm_arguments(parser.add_argument)
    own = {action.dest for action in parser._actions} - {"help"}
    grouped = [dest for dests in flag_help.GROUPS.values() for dest in dests]
    every = {action.dest for action in flags._parser()._actions} - {"help"}
    assert len(grouped) == len(set(grouped)) and set(grouped) == every - own


def test_help_explains_every_flag():
    text = _help("--help")
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
        "--client-val-fraction",
        "--compare-local",
        "--finetune-epochs",
        "--finetune-layers",
        "--finetune-lr",
        "--ditto-lambda",
        "--personal-epochs",
        "--personal-lr",
        "--mrmtl-lambda",
        "--num-clusters",
        "--cluster-warmup",
        "--meta-lr",
        "--personal-steps",
    ]:
        assert flag in text
    for action in run.flags._parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def _natural_files(dataset: str, folder) -> None:
    """Two clients of ``dataset`` in its published format (what validation looks for offline)."""
    import numpy as np

    from jaxfl.data.natural import fedjax_sqlite, tff_sqlite
    from jaxfl.data.natural.store import ClientColumns

    rng = np.random.default_rng(0)
    if dataset == "emnist62_federated":
        for split in ("train", "test"):
            examples = [
                {
                    "pixels": rng.random((3, 28, 28), dtype=np.float32),
                    "label": rng.integers(0, 62, 3).astype(np.int32),
                }
                for _ in range(2)
            ]
            store = ClientColumns.from_clients(["a", "b"], examples)
            fedjax_sqlite.write(folder / f"federated_emnist_{split}.sqlite", store)
    elif dataset == "cifar100_federated":
        examples = [
            {"image": rng.integers(0, 256, (3, 32, 32, 3)), "label": rng.integers(0, 100, 3)}
            for _ in range(2)
        ]
        store = ClientColumns.from_clients(["0", "1"], examples)
        tff_sqlite.write(folder / "cifar100.sqlite", {"train": store, "test": store})
    elif dataset == "shakespeare":
        snippets = [{"snippets": np.array([b"To be", b"or not"], dtype=object)} for _ in range(2)]
        store = ClientColumns.from_clients(["a", "b"], snippets)
        for split in ("train", "test"):
            fedjax_sqlite.write(folder / f"shakespeare_{split}.sqlite", store)
    elif dataset == "stackoverflow":
        tokens = [{"tokens": np.array([b"a b", b"c"], dtype=object)} for _ in range(2)]
        store = ClientColumns.from_clients(["a", "b"], tokens)
        for split in ("train", "test"):
            fedjax_sqlite.write(folder / f"stackoverflow_{split}.sqlite", store)
        (folder / "stackoverflow.word_count").write_text("a 3\nb 2\n")
    else:
        raise AssertionError(f"no fixture for {dataset}")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_every_shipped_config_file_parses_and_validates(name, tmp_path):
    """Each file's every value reaches the flags (a typo'd key or a bad value fails here); a
    setting the algorithm does not read (a shared file used with several --algo) is cleared.
    A natural federation's config is validated against two clients in its published format."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from jaxfl.core.names import EMBEDDED_DATASETS, NATURAL_DATASETS

    argv = ["--config", str(ROOT / "configs" / name)]
    dataset = tomllib.loads((ROOT / "configs" / name).read_text()).get("dataset")
    if dataset in NATURAL_DATASETS and dataset not in EMBEDDED_DATASETS:
        _natural_files(dataset, tmp_path)
        argv += ["--data-dir", str(tmp_path)]
    args = run.flags.parse(argv)
    run.flags.validate(args)
    own = config_flags.SETTINGS_OF[args.algo]
    for key, value in tomllib.loads((ROOT / "configs" / name).read_text()).items():
        dest = key.replace("-", "_")
        foreign = dest in config_flags.ALGORITHM_SETTINGS and dest not in own
        assert getattr(args, dest) == (None if foreign else value), (name, key)


@pytest.mark.parametrize(
    "name", [pytest.param("faults-dsfl.toml", marks=pytest.mark.slow), "faults-fedavg.toml"]
)
def test_fault_config_files_run(tmp_path, name):
    """The shipped fault configs, on the embedded data with a small population (CLI overrides);
    DS-FL's end to end only under -m slow (26 s; its faults against a loop: test_faults.py)."""
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


def test_personalization_comparison_shares_one_cached_local_baseline(tmp_path):
    import personalization

    out = tmp_path / "cmp"
    argv = [*SMALL, "--algos", "local,finetune,hypcluster", "--out", str(out)]
    assert personalization.main(argv) == 0
    table = json.loads((out / "comparison.json").read_text())
    assert [r["algo"] for r in table["rows"]] == ["local", "finetune", "hypcluster"]
    local_row = table["rows"][0]
    assert local_row["frac_worse_than_local"] == 0.0  # local-only against itself
    assert (out / "client_acc_cdf.png").stat().st_size > 1000
    for algo in ("local", "finetune", "hypcluster"):
        record = json.loads((out / algo / "metrics.jsonl").read_text().splitlines()[-1])
        assert 0 <= record["frac_worse_than_local"] <= 1
        assert (out / algo / "client_acc_cdf.png").exists()
    # the baseline was trained once, on the same split, and reused by the other two runs
    cached = list((tmp_path / "cache" / "local_only").glob("*.npz"))
    assert len(cached) == 1
    np.testing.assert_array_equal(
        np.load(cached[0])["acc"], np.load(out / "local" / "client_acc.npy")
    )
    finetune_last = json.loads((out / "finetune" / "metrics.jsonl").read_text().splitlines()[-1])
    assert finetune_last["finetune_epochs"] in (0, 1, 2, 5)
    assert "frac_better_than_global" in finetune_last


@pytest.mark.parametrize("name", ["cross-device.toml", "cross-silo.toml"])
def test_personalization_config_files_run(tmp_path, name):
    extra = []
    if name == "cross-silo.toml":
        from tests.conftest import MNIST_DIR, mnist_available

        if not mnist_available():
            pytest.skip("needs MNIST: set JAXFL_MNIST")
        extra = ["--data-dir", str(MNIST_DIR), "--client-test-size", "50"]
    out = tmp_path / "res"
    argv = ["--config", str(ROOT / "configs" / name), "--algo", "ditto", "--rounds", "1"]
    argv += ["--clients", "10", "--checkpoint-every", "0", "--out", str(out), *extra]
    if name == "cross-device.toml":
        argv += ["--clients-per-round", "5"]
    assert run.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["client_val_fraction"] > 0 and config["data"]["client_val_size_mean"] > 0


# DS-FL, FedDF and FedMD with groups: their rounds against a loop in tests/test_groups.py,
# FedDF end to end on real MNIST in tests/test_learning.py
@pytest.mark.parametrize("algo", ["fd", pytest.param("fccl", marks=pytest.mark.slow)])
def test_mixed_architecture_groups_run_end_to_end(tmp_path, algo):
    out = tmp_path / "res"
    argv = ["--algo", algo, *SMALL, "--models", "mlp:3,logreg:1", "--clients-per-round", "4"]
    assert run.main([*argv, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert [(g["model"], g["size"], g["per_round"]) for g in config["model_groups"]] == [
        ("mlp", 6, 3),
        ("logreg", 2, 1),
    ]
    assert len(np.load(out / "client_acc.npy")) == 8


@pytest.mark.slow  # the file's values: the parse test above; FedDF's round: test_experiments
def test_feddf_paper_config_parses_and_runs_scaled_down(tmp_path):
    """The GPU config file, with the data and sizes swapped for offline ones (CI has no CIFAR)."""
    out = tmp_path / "res"
    argv = ["--config", str(ROOT / "configs" / "feddf-cifar10.toml")]
    argv += ["--dataset", "synthetic_iid", "--public-dataset", "synthetic", "--model", "mlp"]
    argv += ["--clients", "5", "--clients-per-round", "2", "--rounds", "1", "--local-epochs", "1"]
    argv += ["--server-distill-steps", "20", "--distill-check-every", "10", "--public-size", "200"]
    assert run.main([*argv, "--out", str(out), "--checkpoint-every", "0"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "feddf" and config["algorithm_config"]["distill_patience"] == 1000


def test_the_divergence_hint_names_only_the_algorithms_own_learning_rates():
    from jaxfl.experiments.simulation import divergence_hint

    assert divergence_hint("dsfl") == "try a smaller --lr or --distill-lr"
    assert divergence_hint("fedavg") == "try a smaller --lr or --server-lr"
    assert divergence_hint("my_fedavg") == "try a smaller learning rate"  # not a known algorithm


def test_the_round_time_estimate_warns_of_a_model_too_slow_for_the_device(monkeypatch):
    from jaxfl.cli import printout
    from jaxfl.experiments import flops

    monkeypatch.setattr(flops, "estimate_round_seconds", lambda exp: (150.0, 1.2e13, 8e10))
    line = printout.round_time_estimate(None, rounds=20)
    assert "at least 150.0 s per round" in line and "12,000 GFLOP" in line and "80 GFLOP/s" in line
    assert "50 min for 20 rounds" in line and "slow on this device" in line and "--model" in line
    monkeypatch.setattr(flops, "estimate_round_seconds", lambda exp: (0.5, 4e10, 8e10))
    assert "slow" not in printout.round_time_estimate(None, rounds=20)


def _not_a_note(line: str) -> bool:
    """Not one of the notes on flags the algorithm ignores (SMALL serves every algorithm)."""
    return not line.startswith("note: ")


def test_an_unexpected_failure_is_one_line_with_the_traceback_saved(tmp_path, capsys, monkeypatch):
    """A failure no check foresaw (here raised inside the rounds) reaches the user as one line
    naming the exception and where its traceback is; the results folder keeps what was written,
    with status "failed"."""

    def broken(self, *args, **kwargs):
        raise RuntimeError("the round broke\nsecond line of the cause")

    monkeypatch.setattr(run.Simulation, "run", broken)
    out = tmp_path / "res"
    assert run.main(["--algo", "fedavg", *SMALL, "--out", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if _not_a_note(line)]
    assert len(err) == 1 and err[0].startswith("error: RuntimeError: the round broke ("), err
    assert "Traceback" not in err[0] and str(out / run.CRASH_FILE) in err[0]
    saved = (out / run.CRASH_FILE).read_text()
    assert "Traceback" in saved and "second line of the cause" in saved
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_failure_before_the_results_folder_leaves_the_out_folder_usable(
    tmp_path, capsys, monkeypatch
):
    def broken(args):
        raise KeyError("no such thing")

    monkeypatch.setattr(run, "setup", broken)
    out = tmp_path / "res"
    assert run.main(["--algo", "fedavg", *SMALL, "--out", str(out)]) == 1
    err = "\n".join(filter(_not_a_note, capsys.readouterr().err.strip().splitlines()))
    assert err.startswith("error: KeyError: 'no such thing' (") and "\n" not in err
    saved = Path(err.split("full traceback in ")[1].split(":")[0])
    assert saved.exists() and "Traceback" in saved.read_text()
    saved.unlink()
    assert not out.exists() or not any(out.iterdir())


def test_the_jaxfl_command_dispatches_and_names_what_it_knows(capsys):
    """``jaxfl run|reproduce|bench``: an unknown command is a clear error; ``reproduce`` and
    ``bench`` run the checkout's scripts (here: their --help)."""
    from jaxfl.cli import main

    assert main.main(["nosuch"]) == 2
    assert "allowed: run, reproduce, bench" in capsys.readouterr().err
    assert main.main([]) == 2 and "usage: jaxfl" in capsys.readouterr().out
    assert main.main(["reproduce", "--help"]) == 0
    assert "--scale" in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-m", "jaxfl.cli.main", "run", "--algo", "moon", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert (
        done.returncode == 0 and "moon's own flags:" in done.stdout and "--moon-mu" in done.stdout
    )
