"""notebooks/explore.ipynb runs top to bottom, headless, with small settings."""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"


def _text_outputs(notebook):
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_top_to_bottom(data_dir, tmp_path, monkeypatch):
    # The kernel inherits this environment: one short epoch on a subset, a small
    # evaluation, and every file it writes under tmp_path.
    monkeypatch.setenv("KERAS_ADDER_DATA", str(data_dir))
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_TRAIN_EXAMPLES", "5000")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_EVAL_IMAGES", "1000")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_DIR", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()  # raises CellExecutionError, with the cell and traceback, on any error

    text = _text_outputs(notebook)
    assert "parameters" in text and "consistency" in text
    assert "same answers as the Keras model: True" in text
    assert "number 12 refused" in text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["train_examples"] == 5_000
    assert Path(metrics["export_path"]).parent == tmp_path / "export"
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert (evaluation["images"], evaluation["pairs"]) == (1_000, 10_000)
    shown = [output for cell in notebook.cells for output in cell.get("outputs", [])
             if "image/png" in output.get("data", {})]
    assert len(shown) >= 8, "the notebook should show its samples and pictures"
