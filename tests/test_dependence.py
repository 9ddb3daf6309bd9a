"""The DS-FL dependence study (scripts/dependence.py): each cell is the DS-FL entry's runs with
only the participation and the partition changed, the paired differences it reports, its
outputs, and its bad input."""

import json
import sys
from pathlib import Path

import pytest

from reproductions import common, dependence, dsfl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import dependence as dependence_script  # noqa: E402  (scripts/dependence.py)

from jaxfl.cli import run  # noqa: E402


@pytest.mark.parametrize("scale", ["ci", "cpu"])
def test_a_cell_changes_only_the_participation_and_the_partition(scale, tmp_path):
    mnist = tmp_path / "mnist"  # the four IDX file names (run.py checks they are there)
    mnist.mkdir()
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (mnist / f"{stem}-ubyte").touch()
    ctx = common.Context(scale, tmp_path, mnist)
    entry_runs = dsfl.runs(ctx)
    for skew in dependence.SKEWS:
        for name, argv in dependence.cell_runs(ctx, skew, 10).items():
            got = vars(run.parse_args([*argv, "--out", str(tmp_path / "a")]))
            base = vars(run.parse_args([*entry_runs[name], "--out", str(tmp_path / "a")]))
            changed = {k for k in got if got[k] != base[k]}
            assert got["clients_per_round"] == 10
            assert got["partition"] == ("classes" if skew == "classes2" else "dirichlet")
            if skew != "classes2":
                assert got["alpha"] == float(skew.removeprefix("dir"))
            assert changed <= {"clients_per_round", "partition", "alpha"}, (skew, changed)
            assert got["seeds"] == base["seeds"] and got["clients"] == dependence.clients(ctx)
    assert f"{dependence.clients(ctx)} clients" in dependence.SHARED[scale]


def test_a_cells_differences_are_paired_by_seed():
    acc = {"era": [0.8, 0.6, 0.7], "sa": [0.7, 0.55, 0.7], "fedavg": [0.9, 0.9, 0.8]}
    row = dependence.summarize("dir0.1", 30, acc)
    assert row["era_minus_sa"]["mean"] == pytest.approx((0.1 + 0.05 + 0.0) / 3)
    assert row["era_minus_fedavg"]["mean"] == pytest.approx((-0.1 - 0.3 - 0.1) / 3)
    # paired: a seed-wide shift in both algorithms leaves the difference's spread unchanged
    shifted = {
        k: [v + d for v, d in zip(vs, (0.0, -0.3, 0.2), strict=True)] for k, vs in acc.items()
    }
    again = dependence.summarize("dir0.1", 30, shifted)["era_minus_sa"]
    assert again["ci95_half"] == pytest.approx(row["era_minus_sa"]["ci95_half"])


def test_the_study_runs_a_cell_and_writes_its_table_plot_and_record(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--scale", "ci", "--participation", "20", "--skews", "classes2", "--quiet"]
    assert dependence_script.main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "dependence.json").read_text())
    assert [(r["skew"], r["per_round"]) for r in rows] == [("classes2", 20)]
    acc = rows[0]["accuracy"]
    assert set(acc) == {"era", "sa", "fedavg"} and all(len(v) == 2 for v in acc.values())
    assert all(0.2 < a <= 1 for v in acc.values() for a in v)  # learned (chance 0.1)
    config = json.loads((out / "classes2-20" / "era" / "config.json").read_text())["flags"]
    assert config["clients_per_round"] == 20 and config["partition"] == "classes"
    table = (out / "dependence.md").read_text()
    assert "| 2 classes per client | 20 |" in table and "dsfl_dependence.png" in table
    assert (out / "dsfl_dependence.png").stat().st_size > 10_000
    assert "classes2   20 per round: ERA - SA" in capsys.readouterr().out
    # a second call reuses the finished cell (its folders), and adds nothing
    stamp = (out / "classes2-20" / "sa" / "summary.json").stat().st_mtime_ns
    assert dependence_script.main([*argv, "--out", str(out)]) == 0
    assert (out / "classes2-20" / "sa" / "summary.json").stat().st_mtime_ns == stamp
    # --report writes the table and figure of the finished cells, running nothing
    (out / "dependence.md").unlink()
    assert dependence_script.main(["--scale", "ci", "--report", "--out", str(out)]) == 0
    assert "| 2 classes per client | 20 |" in (out / "dependence.md").read_text()
    assert "--report (classes2 x 20)" in (out / "dependence.md").read_text()
    # a study grown a column at a time keeps the folder's earlier cells (here a stand-in row)
    earlier = dict(rows[0], skew="dir1.0")
    (out / "dependence.json").write_text(json.dumps([earlier, rows[0]]))
    assert dependence_script.main([*argv, "--out", str(out)]) == 0
    merged = json.loads((out / "dependence.json").read_text())
    assert [(r["skew"], r["per_round"]) for r in merged] == [("classes2", 20), ("dir1.0", 20)]
    table = (out / "dependence.md").read_text()
    assert "| Dirichlet 1.0 | 20 |" in table and "earlier cells: dir1.0 x 20" in table


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--participation", "30"], "--participation 30: allowed 1..20"),
        (["--participation", "ten"], "integers, comma separated"),
        (["--skews", "iid"], "--skews 'iid': allowed classes2, dir0.1, dir1.0"),
        (["--report"], "--report: --out must name a study's folder"),
    ],
)
def test_bad_input_names_the_flag_and_the_allowed_values(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        dependence_script.main(["--scale", "ci", *flags, "--out", str(tmp_path / "a")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
