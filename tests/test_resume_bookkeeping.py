"""Resume bookkeeping, without MNIST: the history kept after a crash, the best score
carried over it, the backup kept until the run is finished, and workers that must agree.

tests/test_resume.py kills real training processes; these tests take each promise
alone, with made-up histories and a toy model fitted with the run's own callbacks.
"""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.recipe import make_recipe
from keras_adder.fitting import distribution, keras_path
from keras_adder.fitting import run_directory as resume
from keras_adder.fitting.callbacks import make_callbacks, run_writes
from keras_adder.fitting.run_directory import BACKUP_FILES, RunDirectory


def write_history(run, val_losses):
    """history.csv as CSVLogger writes it, one row per epoch."""
    run.path.mkdir(parents=True, exist_ok=True)
    with run.history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_loss"])
        for epoch, val_loss in enumerate(val_losses):
            writer.writerow([epoch, 1.0, val_loss])


def test_rows_past_the_backup_are_dropped_and_the_best_kept_row_returned(tmp_path):
    run = RunDirectory(tmp_path / "run")
    # Epoch 4 (0.1) was logged, then the process died before its backup was written.
    write_history(run, [0.5, 0.2, 0.4, 0.1])
    assert run.keep_history(3) == 0.2
    assert [row["val_loss"] for row in run.history_rows()] == ["0.5", "0.2", "0.4"]
    assert run.keep_history(3) == 0.2  # a second crash and resume: nothing more dropped


def test_a_crash_before_the_first_backup_keeps_no_row(tmp_path):
    run = RunDirectory(tmp_path / "run")
    write_history(run, [0.3])
    assert run.keep_history(0) is None
    assert run.history_rows() == []
    assert run.history.read_text() == ""  # CSVLogger writes its header again
    assert RunDirectory(tmp_path / "new").keep_history(0) is None


def toy_model():
    """A linear model that answers 0 and that SGD with rate 0 never changes: with targets
    of 1, every epoch's val_loss (mean squared error) is exactly 1."""
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(1, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    return model


def fit_with_run_callbacks(run, best_val_loss, epochs=2):
    """Fit the toy model with the run's callbacks."""
    run.path.mkdir(exist_ok=True)  # as RunDirectory.start does
    x = np.arange(16, dtype="float32").reshape(8, 2)
    y = np.ones((8, 1), "float32")
    history = toy_model().fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0,
                              callbacks=make_callbacks(run, best_val_loss=best_val_loss))
    assert history.history["val_loss"] == [1.0] * epochs


@pytest.mark.parametrize("best_before_crash, saved", [
    (None, True),  # a new run
    (2.0, True),  # the epochs before the crash were worse
    (0.5, False),  # one of them was better: its checkpoint stays
])
def test_a_resumed_run_replaces_the_checkpoint_only_with_a_better_epoch(
        tmp_path, best_before_crash, saved):
    run = RunDirectory(tmp_path / "run")
    fit_with_run_callbacks(run, best_val_loss=best_before_crash)
    assert run.best_model.exists() == saved


class CallbacksMade(Exception):
    """Ends `train` as soon as it has made its callbacks."""


def test_train_hands_the_best_loss_before_the_crash_to_the_checkpoint(tmp_path, monkeypatch):
    recipe = make_recipe("fast", epochs=3, train_examples=64)
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(json.dumps({"recipe": "fast", **recipe.as_dict()}))
    # Two epochs backed up; a third logged before the process died.
    write_history(run, [0.5, 0.2, 0.1])
    run.backup.mkdir()
    (run.backup / "training_metadata.json").write_text(json.dumps({"epoch": 2}))
    images = np.zeros((5_100, 28, 28), np.uint8)
    labels = np.zeros(5_100, np.uint8)
    monkeypatch.setattr(keras_path.pipeline, "load_mnist",
                        lambda data_dir: ((images, labels), (images[:100], labels[:100])))
    made = {}

    def make_and_stop(*args, **kwargs):
        made["callbacks"] = make_callbacks(*args, **kwargs)
        raise CallbacksMade

    monkeypatch.setattr(keras_path, "make_callbacks", make_and_stop)
    with pytest.raises(CallbacksMade):
        keras_path.train(recipe, recipe_name="fast", run_dir=run.path,
                         export_dir=tmp_path / "export", strategy="auto")
    (checkpoint,) = [callback for callback in made["callbacks"]
                     if isinstance(callback, keras.callbacks.ModelCheckpoint)]
    assert checkpoint.best == 0.2  # the best of the kept epochs, not 0.1 nor a fresh start


def test_the_backup_outlives_the_last_epoch_until_metrics_are_written(tmp_path, monkeypatch):
    run = RunDirectory(tmp_path / "run")
    fit_with_run_callbacks(run, best_val_loss=None, epochs=2)
    assert run.completed_epochs() == 2  # a crash while testing or exporting resumes here
    backup = sorted(p.name for p in run.backup.iterdir())

    def disk_full(path, value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume, "write_json", disk_full)
    with pytest.raises(OSError):
        run.finish({"test": {}})
    assert sorted(p.name for p in run.backup.iterdir()) == backup
    assert not run.is_finished()
    monkeypatch.undo()

    (run.backup / "notes.txt").write_text("not written by Keras")
    run.finish({"test": {}})
    assert json.loads(run.metrics.read_text()) == {"test": {}}
    assert [p.name for p in run.backup.iterdir()] == ["notes.txt"]  # only Keras' files go
    assert set(backup) <= set(BACKUP_FILES)


class FakeWorkers:
    """The part of MultiWorkerMirroredStrategy that `distribution.agree` uses: `gather`
    returns every worker's row, here made up."""

    def __init__(self, rows):
        self.rows = rows

    def run(self, fn):
        fn()
        return None

    def gather(self, value, axis):
        return tf.constant(self.rows, tf.int64)


@pytest.mark.parametrize("rows, expected", [
    ([[0, 2], [0, 2]], (False, 2)),
    ([[0, 0], [0, 0]], (False, 0)),
    ([[1, 0], [0, 3]], (True, 3)),  # the chief finished: the backups no longer matter
])
def test_workers_agree_on_one_path(rows, expected, monkeypatch):
    monkeypatch.setattr(distribution, "is_multi_worker", lambda strategy: True)
    assert distribution.agree(FakeWorkers(rows), False, rows[0][1]) == expected


def test_backups_at_different_epochs_are_refused(monkeypatch):
    monkeypatch.setattr(distribution, "is_multi_worker", lambda strategy: True)
    with pytest.raises(KerasAdderError) as error:
        distribution.agree(FakeWorkers([[0, 3], [0, 2]]), False, 3)
    assert str(error.value) == (
        "the workers' backups are at different epochs (2 to 3); a worker was stopped "
        "during a backup: start a new --run-dir")


def test_a_full_disk_under_the_history_is_one_line_and_the_backup_stays(tmp_path, monkeypatch):
    run = RunDirectory(tmp_path / "run")
    fit_with_run_callbacks(run, best_val_loss=None, epochs=1)
    backup = {path.name: path.read_bytes() for path in run.backup.iterdir()}

    def disk_full(self, epoch, logs=None):  # CSVLogger runs before the backup is written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", disk_full)
    with pytest.raises(KerasAdderError) as error, run_writes(run):
        fit_with_run_callbacks(run, best_val_loss=None, epochs=2)
    assert str(error.value) == (
        f"cannot write {run.path} (No space left on device); the run keeps its last whole "
        "epoch: free some space and rerun the same command to resume")
    assert {path.name: path.read_bytes() for path in run.backup.iterdir()} == backup
