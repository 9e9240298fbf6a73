"""The callbacks of `model.fit`: Keras' own, two of them writing aside, plus those that
resume, divergence and SIGTERM need."""

import contextlib
import json
import math
from pathlib import Path

import keras

from keras_adder.core import signals
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import os_error_reason, temporary_sibling, write_atomically


class EpochSeededDropout(keras.callbacks.Callback):
    """Keys the model's random layers (Dropout) to the epoch.

    BackupAndRestore restores weights and optimizer state but not the layers' RNG
    counters, so a resumed run would draw other dropout masks than an uninterrupted
    one. Restarting each generator's counter at a value derived from the epoch makes
    the masks of epoch e the same either way, like the data pipeline's randomness.
    """

    def on_epoch_begin(self, epoch, logs=None):
        for variable in self.model.variables:
            if variable.path.endswith("seed_generator_state"):
                seed = int(variable.numpy()[0])
                variable.assign([seed, epoch << 32])


class StopOnNaN(keras.callbacks.Callback):
    """Like TerminateOnNaN, but remembers where: `diverged_at` = (epoch, batch), 1-based."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged_at is None:
            self.diverged_at = (self._epoch + 1, batch + 1)
            self.model.stop_training = True


def make_callbacks(run, *, best_val_loss=None, tensorboard=False):
    """Best-model checkpoint, CSV history, crash recovery and (optionally) TensorBoard.

    `run` is the RunDirectory; `best_val_loss` the best validation loss of the epochs
    before a crash, so a resumed run does not replace a better checkpoint.
    """
    best = BestModelAside(str(run.best_model), monitor="val_loss", save_best_only=True)
    if best_val_loss is not None:
        best.best = best_val_loss
    callbacks = [
        EpochSeededDropout(),
        StopOnSigterm(),
        StopOnNaN(),
        best,
        keras.callbacks.CSVLogger(str(run.history), append=True),
        # Kept after the last epoch, so that a crash while testing or exporting resumes
        # there; the run deletes it once metrics.json is written.
        BackupAside(run, delete_checkpoint=False),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(Path(run.path) / "tensorboard")))
    return callbacks


class StopOnSigterm(keras.callbacks.Callback):
    """Ends `fit` at the first batch boundary after a SIGTERM.

    It raises instead of setting `stop_training`: a stopped fit still runs
    on_epoch_end, where BackupAndRestore would save a half-trained epoch as finished.
    Raising leaves the backup at the last whole epoch, which a rerun resumes
    bit-identically.
    """

    def on_train_batch_end(self, batch, logs=None):
        if signals.pending():
            raise signals.Terminated()


def _cannot_write(path, error):
    return KerasAdderError(
        f"cannot write {path} ({os_error_reason(error)}); the run keeps its last whole "
        "epoch: free some space and rerun the same command to resume")


def write_aside(path, write, suffix=None):
    """`write(staging)` beside `path`, then renamed over it: a full disk or a kill leaves
    the previous file whole. Any failure is one KerasAdderError line saying how to go on."""
    try:
        write_atomically(path, write, suffix)
    except Exception as error:  # h5py reports a full disk as OSError or RuntimeError
        raise _cannot_write(path, error) from None


@contextlib.contextmanager
def run_writes(run):
    """Around `fit`: an OSError of the writers that do not write aside (CSVLogger's
    history.csv, TensorBoard) becomes the same one line as a failed write_aside."""
    try:
        yield
    except OSError as error:
        raise _cannot_write(error.filename or run.path, error) from None


class BestModelAside(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes best.keras aside and renames it into place: Keras
    writes it in place, so a full disk would leave the best model cut in half."""

    def _save_model(self, epoch, batch, logs):
        final = Path(self.filepath)
        staging = temporary_sibling(final)
        self.filepath = str(staging)  # Keras decides whether to save; it saves here
        try:
            super()._save_model(epoch, batch, logs)
            if staging.exists():
                staging.replace(final)
        except Exception as error:
            raise _cannot_write(final, error) from None
        finally:
            self.filepath = str(final)
            staging.unlink(missing_ok=True)


class BackupAside(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose weights and epoch count are each written aside, then
    renamed into place, weights first: a full disk or a kill while writing leaves the
    previous epoch's backup whole. A damaged backup is refused with one line."""

    def __init__(self, run, **kwargs):
        super().__init__(str(run.backup), **kwargs)
        self.run = run

    def _load_model(self):
        self.run.completed_epochs()  # the epoch count, through the run's checked reader
        self.run.read_keras(Path(self._weights_path),
                            lambda path: super(BackupAside, self)._load_model())

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        write_aside(Path(self._weights_path),
                    lambda staging: self.model.save_weights(staging, overwrite=True),
                    suffix=".weights.h5")  # Keras requires this ending
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_aside(Path(self._training_metadata_path),
                    lambda staging: staging.write_text(json.dumps(metadata)))
