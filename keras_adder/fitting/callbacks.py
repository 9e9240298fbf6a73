"""The callbacks of `model.fit`: Keras' own, plus the two that resume and divergence
need."""

import math
from pathlib import Path

import keras

from keras_adder.core import signals


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
    best = keras.callbacks.ModelCheckpoint(str(run.best_model), monitor="val_loss",
                                           save_best_only=True)
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
        keras.callbacks.BackupAndRestore(str(run.backup), delete_checkpoint=False),
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
