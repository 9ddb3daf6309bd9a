"""The code of the README and docs/ runs as written: their Python blocks in order in one
session (as a reader pastes them; later blocks use the ``data``, ``model`` and ``algo`` of
earlier ones, and say so), at reduced sizes where the text's take minutes, and every
``scripts/run.py`` command of their bash blocks parses and passes the checks run before any
work; the quick start runs, smaller."""

import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from jaxfl.cli import run  # noqa: E402

# the README and the pages under docs/, in the order the README lists them (the order the text
# had as one file: a later page's blocks may use what an earlier page's built)
PAGES = ["README.md"] + [
    f"docs/{name}.md"
    for name in re.findall(
        r"\]\(docs/([\w-]+)\.md\)", (ROOT / "README.md").read_text().split("## Documentation", 1)[1]
    )
]
README = "\n".join((ROOT / page).read_text() for page in PAGES)

# README text -> the same at test size. Each must occur: a README edit that drops one fails here.
REDUCED = {
    "FederationSpec(num_clients=100, alpha=1.0)": "FederationSpec(num_clients=10, alpha=1.0)",
    '"--local-epochs", "1"]': '"--local-epochs", "1", "--distill-epochs", "1"]',
    "seeds = (0, 1, 2)": "seeds = (0, 1)",
    "for r in range(1, 11):": "for r in range(1, 3):",
    "algo.run_rounds(state, round_key, 11, 10)": "algo.run_rounds(state, round_key, 3, 2)",
    "num_rounds=3)": "num_rounds=1)",
    "rounds=100, eval_every=5": "rounds=10, eval_every=5",
}


def _blocks(language: str) -> list[str]:
    return [b for lang, b in re.findall(r"```(\w*)\n(.*?)```", README, re.S) if lang == language]


def _commands(script: str) -> list[list[str]]:
    """The argv of every ``python scripts/SCRIPT`` line of the bash blocks (comments dropped)."""
    found = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                words = shlex.split(command, comments=True)
                if words[:2] == ["python", f"scripts/{script}"]:
                    found.append(words[2:])
    return found


def test_the_readme_is_a_front_page_and_every_page_is_linked():
    """At most ~250 lines; every page under docs/ is in the README's documentation table."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert sorted(PAGES[1:]) == sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))


def test_the_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the events block checkpoints to ./ckpt
    blocks = _blocks("python")
    assert len(blocks) >= 9
    code = "\n\n".join(blocks)
    for text in REDUCED:
        assert text in code, f"the README no longer has {text!r}: update REDUCED"
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        for text, reduced in REDUCED.items():
            block = block.replace(text, reduced)
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)


def test_every_run_command_parses_and_the_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # --config configs/... is relative to the repository
    commands = _commands("run.py")
    assert len(commands) >= 6
    for argv in commands:
        args = run.flags.parse(argv)
        args.data_dir = None  # ~/data/mnist: a path on the reader's machine
        if args.resume is None:
            run.flags.validate(args)
    quick = commands[0]
    assert quick[:2] == ["--algo", "dsfl"] and "blobs" in quick
    out = tmp_path / "quick"
    smaller = ["--clients", "20", "--rounds", "2", "--local-epochs", "1", "--distill-epochs", "1"]
    smaller += ["--public-per-round", "100", "--out", str(out)]
    assert run.main([*quick, *smaller]) == 0
    # the results folder, as the README describes it
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["dataset"] == "blobs" and config["model"] == "mlp-64-64"
    assert config["communication_per_client_per_round"]["up_floats"] == 100 * 10
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["final"]["test_acc"] <= 1
    assert (out / "accuracy.png").stat().st_size > 1000
    # communication: soft labels on 100 public samples x 10 classes, float32, 20 clients, 2 rounds
    assert json.loads(lines[-1])["comm_up_bytes_total"] == 2 * 20 * 4 * 100 * 10
