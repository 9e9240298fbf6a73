"""Crash recovery: a training process killed with SIGKILL mid-epoch resumes where it stopped.

A real `python -m keras_adder.train` is killed once its first epoch is backed up, then
the same command is run again. The resumed run must train each epoch exactly once,
finish with metrics and one export, match an uninterrupted run with the same seed, and
a third start of the finished run must not train at all.
"""

import json
import os
import signal

import pytest

from helpers import (
    EPOCHS, assert_same_run, history, run_to_end, start_until_first_backup, train_command,
)

pytestmark = pytest.mark.slow


def kill_after_first_backup(command, run_dir, log):
    """Start training, SIGKILL it as soon as epoch 1 is backed up; the epochs it logged."""
    with log.open("wb") as stderr:
        process = start_until_first_backup(command, run_dir, stderr)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    return len(history(run_dir))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_dir):
    """(root, epochs logged when killed, stdout of the resumed run)."""
    root = tmp_path_factory.mktemp("resumed")
    logged = kill_after_first_backup(train_command(root), root / "run", root / "killed.log")
    assert not (root / "run" / "metrics.json").exists()
    return root, logged, run_to_end(train_command(root))


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


def test_resumed_run_matches_an_uninterrupted_one(resumed, uninterrupted_run):
    # The best checkpoint carried over the crash: the same weights were kept.
    assert_same_run(resumed[0], uninterrupted_run)


def test_finished_run_is_not_trained_again(resumed):
    root = resumed[0]
    # The lock file is rewritten by every process that takes the lock.
    before = {p: p.read_bytes() for p in (root / "run").iterdir()
              if p.is_file() and p.name != ".lock"}
    stdout = run_to_end(train_command(root))
    assert "is a finished run" in stdout and "not training again" in stdout
    assert "Epoch 1/" not in stdout
    assert {p: p.read_bytes() for p in (root / "run").iterdir()
            if p.is_file() and p.name != ".lock"} == before
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]
