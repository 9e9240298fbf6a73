"""notebooks/explore.ipynb runs top to bottom, headless, with small settings, and its
outputs are clean."""

import ast
import importlib
import json
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
# TensorFlow's C++ log lines ("I0000 00:00:... ", "E1129 17:48:21..."), its start-up
# messages about CUDA and absl, and Python logging's INFO lines.
TF_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d|cuInit|cudart_stub|cuda drivers|absl::InitializeLog|"
    r"oneDNN custom operations|^INFO:", re.MULTILINE)


def _output_texts(notebook):
    """(output type or stream name, text) of every output of every cell."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            kind = output.get("name", output["output_type"])
            texts.append((kind, output.get("text", "")))
            texts.append((kind, output.get("data", {}).get("text/plain", "")))
    return texts


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_top_to_bottom(data_dir, tmp_path, monkeypatch):
    # The kernel inherits this environment: one short epoch on a subset, a small
    # evaluation, every file it writes under tmp_path, no demo. TensorFlow's log level
    # is left unset, as a user's would be (conftest sets it for this process).
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("KERAS_ADDER_DATA", str(data_dir))
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_TRAIN_EXAMPLES", "5000")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_EVAL_IMAGES", "1000")
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_DIAGRAMS", str(tmp_path / "diagrams"))
    monkeypatch.setenv("KERAS_ADDER_NOTEBOOK_HEADLESS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The timeout catches a hung kernel; on a busy 2-core machine the train() cell alone
    # has taken over 10 minutes.
    NotebookClient(
        notebook, timeout=1800, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = _output_texts(notebook)
    noisy = [(kind, line) for kind, text in outputs for line in text.splitlines()
             if TF_LOG_LINE.search(line)]
    assert not noisy, f"TensorFlow log lines in the outputs: {noisy[:5]}"
    assert not [text for kind, text in outputs if kind == "stderr" and TF_LOG_LINE.search(text)]

    text = "\n".join(text for _, text in outputs)
    # The model built inline is the library's (the cell also asserts it).
    inline = re.search(r"model == build_model\('compact'\): True; \d+ layers, ([\d,]+) parameters",
                       text)
    assert inline, "the notebook should check its inline model against build_model('compact')"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert int(inline.group(1).replace(",", "")) == metrics["params"]  # train()'s model's
    assert "parameters" in text and "consistency" in text
    assert "same answers as the Keras model: True" in text
    assert "number 12 refused" in text
    assert '{"predictions": [' in text and '"digit_probabilities": [' in text  # REST answer
    assert "demo not launched" in text

    assert metrics["epochs"] == 1 and metrics["train_examples"] == 5_000
    assert Path(metrics["export_path"]).parent == tmp_path / "export"
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert (evaluation["images"], evaluation["pairs"]) == (1_000, 10_000)
    for arch in ("compact", "reference"):
        diagram = tmp_path / "diagrams" / f"model_{arch}.png"
        assert diagram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{diagram} is not a PNG"
    assert (REPO / "docs" / "images" / "model_compact.png").is_file()  # shown in the README
    shown = [output for cell in notebook.cells for output in cell.get("outputs", [])
             if "image/png" in output.get("data", {})]
    assert len(shown) >= 10, "the notebook should show its samples, diagrams and pictures"


def _notebook_imports():
    """(module, name) of every `from keras_adder... import name` in the notebook's code
    cells, in every branch (parsed, not run), and every `import keras_adder...`."""
    imports = []
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_adder"):
                imports += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                imports += [(alias.name, None) for alias in node.names
                            if alias.name.startswith("keras_adder")]
    return imports


def test_every_name_the_notebook_imports_exists():
    imports = _notebook_imports()
    # The demo cell's import sits in a branch a headless run never takes.
    assert ("keras_adder.serving.gradio_app", "build_app") in imports
    missing = []
    for module, name in imports:
        imported = importlib.import_module(module)  # gradio: requirements-demo.txt
        if name is None or hasattr(imported, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")  # a submodule not imported yet
        except ModuleNotFoundError:
            missing.append(f"{module}.{name}")
    assert not missing, f"the notebook imports names that do not exist: {missing}"
