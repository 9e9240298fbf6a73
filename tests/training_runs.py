"""What several test modules share: folder snapshots, and real training processes that
are stopped (SIGKILL, SIGTERM) and resumed.

The training command is small (3 epochs of 2,048 images, seconds per epoch on 2 CPU
cores) but real: `python -m keras_adder.train` with --deterministic, so that a resumed
run can be compared bit for bit with an uninterrupted one.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = 3
# Enough images that an epoch lasts seconds, so a signal lands inside the next epoch.
TRAIN_EXAMPLES = 2048
TIMEOUT_S = 600


def snapshot(folder):
    """Everything under `folder`: file bytes, link targets, directories."""
    state = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            state[path] = ("link", str(path.readlink()))
        elif path.is_dir():
            state[path] = ("dir", None)
        else:
            state[path] = ("file", path.read_bytes())
    return state


def train_command(root):
    return [
        sys.executable, "-m", "keras_adder.train", "--deterministic", "--epochs", str(EPOCHS),
        "--train-examples", str(TRAIN_EXAMPLES),
        "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
    ]


def run_to_end(command):
    """Run a command to its end; its stdout (the test fails unless it exits 0)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def backed_up_epochs(run_dir):
    """Epochs in BackupAndRestore's metadata; 0 while it is absent or being written."""
    try:
        return json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def history(run_dir):
    with (run_dir / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def start_until_backup(command, run_dir, stderr, epochs=1):
    """Start training with stderr into the open file `stderr`; return the process as
    soon as `epochs` are backed up (it is then inside the next epoch)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while backed_up_epochs(run_dir) < epochs:
            assert process.poll() is None, f"training ended with {process.returncode}"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def kill_after_backup(command, run_dir, epochs=1):
    """Start training, SIGKILL it as soon as `epochs` are backed up; the epochs it logged.
    Its stderr goes to killed.log next to the run directory."""
    log = Path(run_dir).parent / "killed.log"
    with log.open("wb") as stderr:
        process = start_until_backup(command, run_dir, stderr, epochs)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    return len(history(run_dir))


def assert_same_run(root, reference):
    """Two finished runs under `root` and `reference` trained the same: the same history,
    the same test figures, the same best weights."""
    import keras
    import numpy as np

    assert history(root / "run") == history(reference / "run")
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    expected = json.loads((reference / "run" / "metrics.json").read_text())
    assert metrics["test"] == expected["test"]
    best = keras.saving.load_model(root / "run" / "best.keras")
    expected_best = keras.saving.load_model(reference / "run" / "best.keras")
    for got, want in zip(best.get_weights(), expected_best.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
