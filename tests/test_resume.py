"""Crash recovery: a training process killed with SIGKILL mid-epoch resumes where it stopped.

A real `python -m keras_adder.train` is killed once its first epoch is backed up, then
the same command is run again. The resumed run must train each epoch exactly once,
finish with metrics and one export, match an uninterrupted run with the same seed (so
this is also the test that two seeded processes give the same run), and a third start
of the finished run must not train at all.

A second run is killed after its second epoch, with a history that says its first
epoch was the best and a row for an epoch that was never backed up: the resumed run
must drop that row and keep best.keras, since its new epoch is worse.
"""

import csv
import json

import pytest
from conftest import recount_test_accuracy
from training_runs import (
    EPOCHS,
    assert_same_run,
    backed_up_epochs,
    history,
    kill_after_backup,
    run_to_end,
    train_command,
)

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_dir):
    """(root, epochs logged when killed, stdout of the resumed run)."""
    root = tmp_path_factory.mktemp("resumed")
    logged = kill_after_backup(train_command(root), root / "run")
    assert not (root / "run" / "metrics.json").exists()
    return root, logged, run_to_end(train_command(root))


def test_killed_run_resumes_and_trains_each_epoch_once(resumed, mnist):
    import keras

    root, logged, stdout = resumed
    assert 1 <= logged < EPOCHS  # killed after epoch 1, before the last one ended
    assert f"after epoch {logged} of {EPOCHS}" in stdout
    assert [int(row["epoch"]) for row in history(root / "run")] == list(range(EPOCHS))
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    _, (test_images, test_labels) = mnist  # the test figures are those of best.keras
    recounted = recount_test_accuracy(keras.saving.load_model(root / "run" / "best.keras"),
                                      test_images, test_labels, seed=metrics["seed"])
    for head in ("digit_accuracy", "sum_accuracy"):
        assert metrics["test"][head] == pytest.approx(recounted[head], abs=1e-6)
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]
    assert metrics["export_path"] == str(root / "export" / "1")
    assert not (root / "run" / "backup").exists()  # deleted once the run is finished


def test_resumed_run_matches_an_uninterrupted_one(resumed, uninterrupted_run):
    # The best checkpoint carried over the crash: the same weights were kept.
    assert_same_run(resumed[0], uninterrupted_run)


def test_finished_run_is_not_trained_again(resumed):
    root = resumed[0]
    before = {p: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()}
    stdout = run_to_end(train_command(root))
    assert "is a finished run" in stdout and "not training again" in stdout
    assert "Epoch 1/" not in stdout
    assert {p: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]


# --- A crash after a later epoch, in a run whose earlier epoch is the best -----------------

BEST_VAL_LOSS = 1e-9  # what the doctored history says epoch 1 reached: no epoch beats it
UNBACKED_VAL_LOSS = 99.0  # a row logged for an epoch whose backup was never written


@pytest.fixture(scope="module")
def resumed_after_a_worse_epoch(tmp_path_factory, data_dir):
    """A run killed once epoch 2 of 3 is backed up, its history doctored so that epoch 1
    is the best and epoch 3 was logged but not backed up, then resumed to the end.

    Returns (root, best.keras bytes before the resume, stdout of the resumed run).
    """
    root = tmp_path_factory.mktemp("worse-epoch")
    run_dir = root / "run"
    assert kill_after_backup(train_command(root), run_dir, epochs=2) == 2
    assert backed_up_epochs(run_dir) == 2, "the kill came too late: epoch 3 ended"
    rows = history(run_dir)
    rows[0]["val_loss"] = str(BEST_VAL_LOSS)
    rows.append({**rows[-1], "epoch": "2", "val_loss": str(UNBACKED_VAL_LOSS)})
    with (run_dir / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best_before = (run_dir / "best.keras").read_bytes()
    return root, best_before, run_to_end(train_command(root))


def test_a_resumed_run_keeps_the_better_checkpoint_from_before_the_crash(
        resumed_after_a_worse_epoch):
    root, best_before, stdout = resumed_after_a_worse_epoch
    assert f"after epoch 2 of {EPOCHS}" in stdout
    # Epoch 3's val_loss is worse than epoch 1's (as history.csv says): best.keras stays.
    assert (root / "run" / "best.keras").read_bytes() == best_before


def test_history_rows_past_the_backup_are_replaced_by_the_resumed_epochs(
        resumed_after_a_worse_epoch):
    rows = history(resumed_after_a_worse_epoch[0] / "run")
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))
    assert float(rows[0]["val_loss"]) == BEST_VAL_LOSS  # rows the backup holds are kept
    assert BEST_VAL_LOSS < float(rows[2]["val_loss"]) != UNBACKED_VAL_LOSS
