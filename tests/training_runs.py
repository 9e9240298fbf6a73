"""Helpers of the tests that run `python -m keras_adder.train` as a subprocess and kill it."""

import csv
import json
import os
import signal
import subprocess
import time

TIMEOUT_S = 600


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


def kill_after_backup(command, run_dir, epochs=1):
    """Start training, SIGKILL it as soon as `epochs` are backed up; the epochs it logged."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while backed_up_epochs(run_dir) < epochs:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return len(history(run_dir))
