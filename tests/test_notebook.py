"""examples/characterize_pump.ipynb runs headless in a real Jupyter kernel, every cell without error."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "characterize_pump.ipynb"
# Per-cell bound: the characterization cell takes ~5 s against the emulator; kernel start-up adds a few.
CELL_TIMEOUT_S = 60


def _outputs(nb: object) -> list[dict[str, object]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_example_notebook_runs_in_a_real_kernel(tmp_path: Path) -> None:
    """Every cell runs (nbclient raises CellExecutionError otherwise); the characterization renders as an
    HTML summary, the plot as a PNG, and the report files are written next to the notebook's cwd."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [str(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {})]
    assert any("Safe ceiling for infusion pump" in h for h in html)  # Characterization._repr_html_
    assert any("infusion pump</b>" in h and "done" in h for h in html)  # NotebookProgress, updated in place
    assert any("image/png" in o.get("data", {}) for o in outputs)
    printed = "".join(str(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    assert "nmap -sT" in printed
    assert "Max simultaneous TCP sessions per host" in printed
    assert (tmp_path / "pump-report.html").exists()
    assert (tmp_path / "pump-report.png").exists()
