"""A run directory: what a run has done, so that the same command finishes it.

    config.json     the recipe; a rerun with other settings is refused
    history.csv     one row per finished epoch (Keras' CSVLogger)
    best.keras      the best epoch by validation loss (ModelCheckpoint, written aside)
    backup/         BackupAndRestore's state, kept until metrics.json exists
    saved_model/    the run's SavedModel (the candidate), served only if promoted
    export.json     what was exported and promoted, written right after each step
    metrics.json    the test figures: the run is finished
    diverged.json   the loss became NaN: the run cannot go on

Every file is read back through `RunDirectory.read` or `read_keras`: a damaged one stops
the command with one line naming it; nothing is deleted. One process at a time: a second
one on the same directory is refused (an OS lock on the folder, released when its holder
dies). The project never deletes a file it did not write.
"""

import csv
import fcntl
import io
import os
import shutil
from pathlib import Path

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import (
    json_object,
    make_dir,
    os_error_reason,
    read_checked,
    write_atomically,
    write_json,
)
from keras_adder.model.keras_file import load_keras_model

# What keras.callbacks.BackupAndRestore writes into its folder.
BACKUP_FILES = ("latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json",
                "training_metadata.json.bkp")
WORKER_PREFIX = "workertemp_"  # the TF multi-worker guide's name for a worker's folder
# The locks this process holds, by resolved run directory. A lock is the process's for
# its whole life, so that a second train() here on the same folder (a notebook cell run
# again after an error whose traceback still holds the first) is not refused by itself.
_HELD_LOCKS = {}


class RunDirectory:
    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.history = self.path / "history.csv"
        self.best_model = self.path / "best.keras"
        self.backup = self.path / "backup"
        self.export_record = self.path / "export.json"
        self.metrics = self.path / "metrics.json"
        self.diverged = self.path / "diverged.json"
        self.backup_metadata = self.backup / "training_metadata.json"

    @property
    def advice(self):
        """What to do about a damaged file of this run."""
        return (f"nothing was changed: start a new --run-dir, or delete {self.path} to "
                "start this run over")

    def read(self, path, parse=json_object()):
        """The one reader of what this run wrote (see core.files.read_checked): a damaged
        file stops the run with one line naming it; nothing is deleted. Keras' files
        (best.keras, the backup's weights) go through read_keras."""
        return read_checked(path, parse, self.advice)

    def read_keras(self, path, load):
        """`load(path)` of a Keras file of this run, damage reported as `read` does."""
        try:
            return load(path)
        except KerasAdderError as error:
            reason = str(error).removeprefix(f"{path}: ")
        except Exception as error:  # h5py and Keras raise many kinds for a damaged file
            reason = os_error_reason(error)
        raise KerasAdderError(f"{path} is damaged or unreadable ({reason}); {self.advice}")

    def read_best_model(self):
        return self.read_keras(self.best_model, load_keras_model)

    # --- Before anything is written -------------------------------------------------

    def check(self, config):
        """Refuse a folder that is not one of our runs, or a run of other settings."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise KerasAdderError(f"run directory {self.path} is not a directory")
        strangers = [p.name for p in self.path.iterdir() if not p.name.startswith(WORKER_PREFIX)]
        if strangers and not self.config.exists():
            raise KerasAdderError(
                f"run directory {self.path} is not empty and holds no run of this project "
                f"(no config.json; found {', '.join(sorted(strangers)[:3])}); "
                f"choose a new --run-dir")
        self._check_same_config(config)
        if self.diverged.exists():
            where = self.read(self.diverged, json_object(epoch=int, batch=int))
            raise KerasAdderError(
                f"{self.path} diverged (loss NaN at epoch {where['epoch']}, batch "
                f"{where['batch']}); start a new --run-dir, e.g. with a lower learning rate")

    def _check_same_config(self, config):
        if not self.config.exists():
            return
        saved = self.read(self.config, json_object(recipe=str))
        changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in config.items()
                   if saved.get(key) != value]
        if changed:
            raise KerasAdderError(
                f"{self.path} is a run started with other settings ({'; '.join(changed)}); "
                f"resume it with the same ones or use a new --run-dir")

    def lock(self):
        """Hold the run's lock for the life of this process, or refuse at once.

        An OS lock on the folder itself: it writes nothing, and it is released when
        its holder dies, however it dies.
        """
        make_dir(self.path, "run directory")
        held = _HELD_LOCKS.get(self.path.resolve())
        if held is not None:
            if os.path.samestat(os.fstat(held), os.stat(self.path)):
                return
            os.close(held)  # the folder it locked was deleted since; this is a new one
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise KerasAdderError(f"run directory {self.path} is in use by another process; "
                                  "wait for it to end or choose another --run-dir") from None
        _HELD_LOCKS[self.path.resolve()] = descriptor

    # --- What the run has done ------------------------------------------------------

    def completed_epochs(self):
        """Epochs that BackupAndRestore has saved (0 for a new run).

        The pipeline's randomness is keyed by epoch, so a resumed run must start its
        data at the same epoch that BackupAndRestore restores the weights to.
        """
        if not self.backup_metadata.exists():
            return 0
        return self.read(self.backup_metadata, json_object(epoch=int))["epoch"]

    def is_finished(self):
        return self.metrics.exists()

    def exported(self):
        """What this run has exported so far: {"candidate", "served", "decision"}, or
        fewer keys (none before its export)."""
        return self.read(self.export_record) if self.export_record.exists() else {}

    def metrics_read(self):
        """metrics.json of a finished run."""
        return self.read(self.metrics, json_object(test=dict))

    def history_rows(self, epochs=None):
        """history.csv's rows, each checked whole; with `epochs` (the backed-up count),
        only the first `epochs` rows are checked: a row after them may be cut short, the
        epoch the process died in. CSVLogger creates the file empty at the start of fit."""
        if not epochs and (not self.history.exists() or not self.history.stat().st_size):
            return []
        return self.read(self.history, lambda text: _history_rows(text, epochs))

    def keep_history(self, epochs):
        """Drop rows of epochs the backup does not hold (a crash between the two writes);
        return the best validation loss of the rows kept (None when there are none)."""
        if not epochs:
            # Nothing is kept, not even a header cut short: CSVLogger writes a new one.
            if self.history.exists() and self.history.stat().st_size:
                write_atomically(self.history, lambda staging: staging.write_text(""))
            return None
        rows = self.history_rows(epochs)
        if len(rows) > epochs:
            columns, rows = list(rows[0]), rows[:epochs]

            def write(staging):
                with staging.open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(rows)
            write_atomically(self.history, write)
        return min(float(row["val_loss"]) for row in rows)

    # --- Writing ----------------------------------------------------------------------

    def start(self, config):
        """Lock the run (refused if another process holds it) and record its settings."""
        self.lock()
        self.check(config)  # what the other process may have written meanwhile
        if not self.config.exists():
            write_json(self.config, config)

    def record_export(self, **done):
        write_json(self.export_record, done)

    def record_divergence(self, epoch, batch):
        write_json(self.diverged, {"epoch": epoch, "batch": batch})

    def remove_worker_folder(self):
        """A worker's folder holds only what this run wrote into it."""
        shutil.rmtree(self.path)
        os.close(_HELD_LOCKS.pop(self.path.resolve()))

    def finish(self, metrics):
        """Write metrics.json, then drop the backup: only the files Keras wrote there."""
        write_json(self.metrics, metrics)
        for name in BACKUP_FILES:
            (self.backup / name).unlink(missing_ok=True)
        if self.backup.is_dir() and not any(self.backup.iterdir()):
            self.backup.rmdir()


def _history_rows(text, epochs=None):
    """CSVLogger's rows; the first `epochs` (all without it) must be whole epochs."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "val_loss" not in (reader.fieldnames or []):
        raise ValueError("no val_loss column in its header")
    rows = list(reader)
    if epochs is not None and len(rows) < epochs:
        raise ValueError(f"{len(rows)} epoch rows, but the backup holds {epochs} epochs")
    for number, row in enumerate(rows if epochs is None else rows[:epochs], 1):
        try:
            if None in row or None in row.values():
                raise ValueError
            float(row["val_loss"])
        except ValueError:
            raise ValueError(f"row {number} is cut short or not numbers") from None
    return rows


def open_run(path, config, *, chief, worker=None):
    """The run directory of this process, checked; nothing is written yet.

    Under multi-worker only the chief writes into `path`; worker i works in
    `path/workertemp_i`, the layout of the TF multi-worker guide.
    """
    run = RunDirectory(path if chief else Path(path) / f"{WORKER_PREFIX}{worker}")
    run.check(config)
    return run
