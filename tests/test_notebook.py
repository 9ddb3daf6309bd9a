"""The Colab notebook runs top to bottom in a real Jupyter kernel on a CPU, at reduced size
(nbclient, the Jupyter project's notebook runner): install check, accelerator report, the main
job with its inline plot, the research-code cell and the seeds sweep."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "jaxfl_colab.ipynb"
SMALL = """CLIENTS = 10
ROUNDS = 2
SEEDS = 2
EXTRA_FLAGS = ["--local-epochs", "1", "--distill-epochs", "1", "--public-per-round", "100"]"""


# slow (67 s): CI's suite is near its 35-minute limit; the same code paths (run.main on blobs,
# dsfl.make and run_rounds, a seeds sweep) run in tests/test_readme.py by default
@pytest.mark.slow
def test_the_colab_notebook_runs_on_a_cpu(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [parameters] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = SMALL
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # a checkout, as after the clone
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "backend cpu: 1 device(s)" in text and "devices used:" in text
    assert "server test accuracy:" in text and "soft-label entropy by round:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the inline plot
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "fedavg" in shown and "dsfl" in shown  # the seeds comparison
    assert (tmp_path / "results" / "colab-dsfl" / "summary.json").exists()
