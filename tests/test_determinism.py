"""Reproducibility: the same seed on the same machine gives the same run.

Two separate `python -m keras_adder.train` processes with --deterministic
with the same seed must write identical histories, test metrics and best weights.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def train_once(root):
    command = [
        sys.executable, "-m", "keras_adder.train", "--deterministic", "--epochs", "2",
        "--train-examples", "1024", "--batch-size", "64", "--seed", "7",
        "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "run" / "metrics.json").read_text())


def test_same_seed_gives_the_same_history_and_test_metrics(tmp_path, data_dir):
    import keras
    import numpy as np

    first = train_once(tmp_path / "first")
    second = train_once(tmp_path / "second")
    assert first["deterministic"] is True
    history = (tmp_path / "first" / "run" / "history.csv").read_text()
    assert len(history.splitlines()) == 3  # header + 2 epochs
    assert (tmp_path / "second" / "run" / "history.csv").read_text() == history
    assert first["test"] == second["test"]
    weights = [keras.saving.load_model(tmp_path / run / "run" / "best.keras").get_weights()
               for run in ("first", "second")]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
