"""Reproductions: every entry runs and learns at ci scale, plans valid runs at every scale, the
statistics it reports, the record's consistency, and scripts/reproduce.py's bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reproductions import NAMES, common, entry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce  # noqa: E402

from jaxfl.cli import run  # noqa: E402

# Two entries at ci scale in the default suite (CI's time budget): sweeps over seeds with
# first-reaching, traffic and paired per-seed differences (dsfl), no runs but the data-sharing
# game (shaping). Every entry's runs pass run.py's checks at every scale (below) and its
# algorithms have tests of their own; all seven at ci scale (3.6 min on CI's machine; the
# per-seed single runs of incfl and motley only there) run under -m slow.
OF_EACH_KIND = ("dsfl", "shaping")


def test_an_entry_of_each_kind_runs_and_learns_at_ci_scale(tmp_path):
    check_ci_scale(tmp_path, OF_EACH_KIND)


@pytest.mark.slow
def test_every_entry_runs_and_learns_at_ci_scale(tmp_path):
    check_ci_scale(tmp_path, NAMES)


def check_ci_scale(tmp_path, names):
    """`reproduce.py NAMES --scale ci`, as CI's smoke test: each entry runs, learns, writes its
    finding, plot and RESULTS.md section, judges nothing, and leaves the repository's record
    alone. In a subprocess compiled without XLA's optimization passes (about 35% less compile
    time; nothing here is compared at float tolerance)."""
    record = (ROOT / "reproductions" / "RESULTS.md").read_bytes()
    out = tmp_path / "ci"
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    script = str(ROOT / "scripts" / "reproduce.py")
    cmd = [sys.executable, script, ",".join(names), "--scale", "ci"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--quiet"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = (out / "RESULTS.md").read_text()
    for name in names:
        finding = json.loads((out / name / "finding.json").read_text())
        assert finding["learned"], (name, finding["rows"])
        assert finding["verdict"] == "not judged" and finding["scale"] == "ci"
        assert f"## {finding['title']}" in results
        for plot in finding["plots"]:
            assert (out / name / plot).stat().st_size > 1000
        assert finding["rows"] and all(len(row) == 3 for row in finding["rows"])
    assert (ROOT / "reproductions" / "RESULTS.md").read_bytes() == record


@pytest.mark.parametrize("scale", common.SCALES)
def test_every_entry_plans_runs_that_run_py_accepts(scale, tmp_path):
    mnist = tmp_path / "mnist"  # the four IDX file names (run.py checks they are there)
    mnist.mkdir()
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (mnist / f"{stem}-ubyte").touch()
    for name in NAMES:
        ctx = common.Context(scale, tmp_path, mnist)
        for key, argv in entry(name).runs(ctx).items():
            args = run.parse_args([*argv, "--out", str(tmp_path / key)])
            assert args.seeds or "--seed" in argv, (name, key)  # several seeds, always
        module = entry(name)
        assert module.SETTINGS[scale] and module.CLAIM and module.PAPER and module.HPARAMS


def test_bad_input_names_the_argument_and_the_allowed_values(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["fedprox", "--out", str(tmp_path / "a")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "NAME 'fedprox' is not a reproduction" in err and "dsfl" in err and "all" in err
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["dsfl", "--scale", "huge"])
    assert stop.value.code == 2 and "--scale: invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["dsfl", "--scale", "cpu", "--data-dir", str(tmp_path / "none")])
    assert stop.value.code == 2 and "--data-dir" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before any folder is made


def test_the_readme_reproduce_commands_parse(tmp_path):
    from tests.test_readme import _commands

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (mnist / f"{stem}-ubyte").touch()
    commands = _commands("reproduce.py")
    assert commands
    for argv in commands:
        if "--data-dir" in argv:  # ~/data/mnist: a path on the reader's machine
            argv[argv.index("--data-dir") + 1] = str(mnist)
        args, names = reproduce.parse(argv)
        assert set(names) <= set(NAMES)


def test_statistics_on_hand_made_seeds():
    rounds = np.array([1, 2, 3, 4])
    values = np.array([[0.1, 0.5, 0.8, 0.9], [0.2, 0.3, 0.4, 0.5]])
    costs = np.array([[10.0, 20.0, 30.0, 40.0]] * 2)
    got = common.first_reaching(rounds, values, 0.8, costs)
    assert got[0] == 30.0 and math.isnan(got[1])  # seed 2 never reaches 0.8
    assert common.first_reaching(rounds, values, 0.5) == [2.0, 4.0]
    # mean 0.5, std 0.1, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert common.fmt([0.4, 0.5, 0.6]) == "0.500 ± 0.248 (n = 3)"
    assert common.fmt([1.0, math.nan]) == "1.000 (n = 1); not reached in 1 of 2 seeds"
    assert common.significantly_above([0.9, 0.8, 0.85], [0.5, 0.45, 0.52])
    assert not common.significantly_above([0.9, 0.4, 0.85], [0.5, 0.45, 0.52])


def test_the_recorded_results_are_what_the_command_writes_from_its_records():
    """reproductions/RESULTS.md and docs/reproductions.md's table are regenerated from the entries'
    recorded findings exactly (nothing typed in; the DS-FL dependence study's record is the
    last section), and every entry has a cpu-scale record."""
    records = [
        json.loads((ROOT / "reproductions" / "findings" / f"{n}.json").read_text()) for n in NAMES
    ]
    assert all(r["scale"] == "cpu" and r["commit"] != "unknown" for r in records)
    assert (ROOT / "reproductions" / "RESULTS.md").read_text() == reproduce.results_markdown(
        records, "cpu"
    ) + reproduce.dependence_section()
    assert (
        "## DS-FL: dependence on participation and label skew"
        in (ROOT / "reproductions" / "RESULTS.md").read_text()
    )
    readme = (ROOT / "docs" / "reproductions.md").read_text()
    block = readme.split(reproduce.README_START, 1)[1].split(reproduce.README_END, 1)[0]
    assert block == "\n" + reproduce.summary_table(records)
    for r in records:
        for plot in r["plots"]:
            assert (ROOT / "reproductions" / "plots" / plot).exists()


def test_accuracy_bands_stay_inside_zero_and_one():
    """Three seeds near 0 give a t-interval reaching below 0; the drawn band is clipped to the
    accuracy's range, a difference's band is not."""
    from jaxfl.experiments.report import band, describe

    near_zero = describe([0.01, 0.02, 0.30])
    lower, upper = band(near_zero["mean"], near_zero["ci95_half"])
    assert near_zero["ci95"][0] < 0 and lower == 0.0 and 0 < upper <= 1
    unclipped, _ = band(near_zero["mean"], near_zero["ci95_half"], None)
    assert unclipped == near_zero["ci95"][0]


def test_a_stopped_reproduction_reuses_finished_runs_only(tmp_path):
    """An interrupted run writes summary.json too (status "interrupted"): a reproduction that
    continues in the same folder must run it again, not read its partial numbers."""
    import json

    from reproductions import common

    for name, summary in (
        ("done", {"status": "completed"}),
        ("sweep", {"seeds": [0, 1]}),  # a finished sweep's summary
        ("early", {"status": "stopped early"}),
        ("stopped", {"status": "interrupted", "stopped_at": {"round": 1}}),
        ("failed", {"status": "failed"}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "partial").mkdir()
    found = {p.name: common.finished(p) for p in tmp_path.iterdir()}
    assert found == {"done": True, "sweep": True, "early": True, "stopped": False,
                     "failed": False, "partial": False}  # fmt: skip
