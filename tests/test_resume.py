"""Crash recovery: a training process killed with SIGKILL mid-epoch resumes where it stopped.

A real `python -m keras_adder.train` is killed once its first epoch is backed up, then
the same command is run again. The resumed run must train each epoch exactly once,
finish with metrics and one export, match an uninterrupted run with the same seed, and
a third start of the finished run must not train at all.
"""

import json
import sys

import pytest

from training_runs import history, kill_after_first_backup, run_to_end

pytestmark = pytest.mark.slow

EPOCHS = 3
# Enough images that an epoch lasts seconds, so the kill lands inside the second epoch.
TRAIN_EXAMPLES = 2048


def train_command(root):
    return [
        sys.executable, "-m", "keras_adder.train", "--deterministic", "--epochs", str(EPOCHS),
        "--train-examples", str(TRAIN_EXAMPLES),
        "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
    ]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_dir):
    """(root, epochs logged when killed, stdout of the resumed run)."""
    root = tmp_path_factory.mktemp("resumed")
    logged = kill_after_first_backup(train_command(root), root / "run")
    assert not (root / "run" / "metrics.json").exists()
    return root, logged, run_to_end(train_command(root))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(train_command(root))
    return root


def test_killed_run_resumes_and_trains_each_epoch_once(resumed):
    root, logged, stdout = resumed
    assert 1 <= logged < EPOCHS  # killed after epoch 1, before the last one ended
    assert f"after epoch {logged} of {EPOCHS}" in stdout
    assert [int(row["epoch"]) for row in history(root / "run")] == list(range(EPOCHS))
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["digit_accuracy"] <= 1
    assert 0 <= metrics["test"]["sum_accuracy"] <= 1
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]
    assert metrics["export_path"] == str(root / "export" / "1")
    assert not (root / "run" / "backup").exists()  # deleted once the run is finished


def test_resumed_run_matches_an_uninterrupted_one(resumed, uninterrupted):
    import keras
    import numpy as np

    root = resumed[0]
    assert history(root / "run") == history(uninterrupted / "run")
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    reference = json.loads((uninterrupted / "run" / "metrics.json").read_text())
    assert metrics["test"] == reference["test"]
    # The best checkpoint carried over the crash: the same weights were kept.
    best = keras.saving.load_model(root / "run" / "best.keras")
    expected = keras.saving.load_model(uninterrupted / "run" / "best.keras")
    for got, want in zip(best.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_finished_run_is_not_trained_again(resumed):
    root = resumed[0]
    before = {p: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()}
    stdout = run_to_end(train_command(root))
    assert "is a finished run" in stdout and "not training again" in stdout
    assert "Epoch 1/" not in stdout
    assert {p: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]
