"""A run directory: what a run has done, so that the same command finishes it.

    config.json     the recipe; a rerun with other settings is refused
    history.csv     one row per finished epoch (Keras' CSVLogger)
    best.keras      the best epoch by validation loss (ModelCheckpoint)
    backup/         BackupAndRestore's state, kept until metrics.json exists
    saved_model/    the run's SavedModel (the candidate), served only if promoted
    export.json     what was exported and promoted, written right after each step
    metrics.json    the test figures: the run is finished
    diverged.json   the loss became NaN: the run cannot go on

One process at a time: a second one on the same directory is refused (an OS lock on
the folder, released when its holder dies). The project never deletes a file it did not write.
"""

import csv
import fcntl
import json
import os
import shutil
from pathlib import Path

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import make_dir, read_json, write_json

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
            where = json.loads(self.diverged.read_text())
            raise KerasAdderError(
                f"{self.path} diverged (loss NaN at epoch {where['epoch']}, batch "
                f"{where['batch']}); start a new --run-dir, e.g. with a lower learning rate")

    def _check_same_config(self, config):
        if not self.config.exists():
            return
        saved = json.loads(self.config.read_text())
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
        metadata = self.backup / "training_metadata.json"
        if not metadata.exists():
            return 0
        return int(json.loads(metadata.read_text())["epoch"])

    def is_finished(self):
        return self.metrics.exists()

    def exported(self):
        """What this run has exported so far: {"candidate", "served", "decision"}, or
        fewer keys (none before its export)."""
        return read_json(self.export_record) if self.export_record.exists() else {}

    def history_rows(self):
        if not self.history.exists():
            return []
        with self.history.open(newline="") as f:
            return list(csv.DictReader(f))

    def keep_history(self, epochs):
        """Drop rows of epochs the backup does not hold (a crash between the two writes);
        return the best validation loss of the rows kept (None when there are none)."""
        rows = self.history_rows()
        if len(rows) > epochs:
            columns = list(rows[0])
            rows = rows[:epochs]
            with self.history.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        losses = [float(row["val_loss"]) for row in rows]
        return min(losses) if losses else None

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


def open_run(path, config, *, chief, worker=None):
    """The run directory of this process, checked; nothing is written yet.

    Under multi-worker only the chief writes into `path`; worker i works in
    `path/workertemp_i`, the layout of the TF multi-worker guide.
    """
    run = RunDirectory(path if chief else Path(path) / f"{WORKER_PREFIX}{worker}")
    run.check(config)
    return run
