"""Reliability: runs that cannot get stuck or lose files, SIGTERM, versions, hostile files.

One test (or a few) per item of issue 13. Command-line cases run the command's `main`
through `keras_adder.cli.run`, as `python -m keras_adder.<command>` does; what must
hold in a real process (a lock held by another process, SIGTERM during training, a
memory limit, a file size limit, TensorFlow not imported) runs in a child process.
"""

import gzip
import inspect
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import global_state_kept
from training_runs import (
    EPOCHS,
    assert_same_run,
    backed_up_epochs,
    history,
    kill_after_backup,
    run_to_end,
    snapshot,
    start_until_backup,
    train_command,
)

from keras_adder import export, predict, train
from keras_adder.cli import EXIT_TERMINATED, EXIT_USAGE, run
from keras_adder.core import signals
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import temporary_sibling, write_atomically
from keras_adder.core.recipe import MAX_SEED
from keras_adder.data.idx import read_idx
from keras_adder.fitting import keras_path as train_path
from keras_adder.fitting.callbacks import StopOnSigterm, make_callbacks
from keras_adder.fitting.run_directory import BACKUP_FILES, RunDirectory, open_run
from keras_adder.reports import exhaustive as evaluation
from keras_adder.serving import saved_model
from keras_adder.serving.rest import write_request_examples

TINY = ["--epochs", "1", "--train-examples", "512"]  # 4 steps: seconds, not minutes


def refused(main, argv, capsys):
    """Run a command that must refuse: exit code 2; its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(arg) for arg in argv])
    assert exit_info.value.code == EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def child_env(**extra):
    """The environment of a child process: this package first on its path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


# --- 1. A crash after the export -------------------------------------------------------


def test_a_rerun_after_a_crash_after_the_export_finishes_without_exporting_again(
        tmp_path, data_dir, monkeypatch, capsys):
    argv = [*TINY, "--data-dir", data_dir, "--run-dir", tmp_path / "run",
            "--export-dir", tmp_path / "export"]
    argv = [str(arg) for arg in argv]

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while drawing the pictures")

    monkeypatch.setattr(evaluation, "write_run_figures", crash)
    for _ in range(2):  # the run that exports, then a rerun that gets as far again
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(train.main, [*argv, "--export-version", "5"])
        assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["5"]
    monkeypatch.undo()
    capsys.readouterr()
    metrics = run(train.main, argv)  # and without --export-version: no version 6
    assert "Epoch 1/" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["5"]
    assert metrics["export_path"] == str(tmp_path / "export" / "5")
    assert (tmp_path / "run" / "metrics.json").is_file()


# --- 2. One process per run directory ---------------------------------------------------

HOLD_LOCK = """
import sys, time
from keras_adder.fitting.run_directory import RunDirectory
RunDirectory(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_directory_in_use_is_refused_at_once_until_its_holder_dies(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                              stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        message = refused(train.main, [*TINY, "--run-dir", run_dir,
                                       "--export-dir", tmp_path / "export"], capsys)
        assert time.monotonic() - started < 10
        assert message == (f"error: run directory {run_dir} is in use by another "
                           "process; wait for it to end or choose another --run-dir")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
        assert list(run_dir.iterdir()) == []  # the lock is on the folder: no file
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; the OS drops its lock
        holder.wait()
        holder.stdout.close()
    RunDirectory(run_dir).lock()  # the dead holder's lock is gone


# --- 3. Never delete what the project did not write ------------------------------------


def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "notes.txt").write_text("the user's own file\n")
    before = snapshot(tmp_path)
    message = refused(train.main, [*TINY, "--run-dir", run_dir,
                                   "--export-dir", tmp_path / "export"], capsys)
    assert message == (f"error: run directory {run_dir} is not empty and holds no run of "
                       "this project (no config.json; found backup); choose a new --run-dir")
    assert snapshot(tmp_path) == before


def test_the_chief_accepts_a_run_directory_holding_only_its_workers_folders(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "workertemp_1").mkdir(parents=True)  # a worker started before the chief
    run = open_run(run_dir, {"recipe": "default"}, chief=True)
    assert run.completed_epochs() == 0
    run.start({"recipe": "default"})
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "workertemp_1"]


def test_a_finished_run_deletes_only_what_keras_wrote_into_its_backup(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.backup.mkdir(parents=True)
    for name in BACKUP_FILES:
        (run.backup / name).write_bytes(b"keras")
    (run.backup / "notes.txt").write_text("the user's own file\n")
    run.finish({"test": {}})
    assert [p.name for p in run.backup.iterdir()] == ["notes.txt"]
    assert json.loads(run.metrics.read_text()) == {"test": {}}


def test_a_refused_command_leaves_no_run_folder_behind(tmp_path, capsys):
    """A version found taken (or bad data) is refused before the run folder exists."""
    (tmp_path / "export" / "1").mkdir(parents=True)
    before = snapshot(tmp_path)
    message = refused(train.main, [*TINY, "--run-dir", tmp_path / "runs" / "new",
                                   "--export-dir", tmp_path / "export",
                                   "--export-version", "1"], capsys)
    assert message.endswith("1 already exists; not overwriting it")
    assert snapshot(tmp_path) == before


# --- 4. A finished run refuses other settings ------------------------------------------


def test_a_finished_run_refuses_other_settings(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(Path(trained_run["keras_path"]).parent, run_dir)  # never the fixture's
    before = snapshot(tmp_path)
    message = refused(train.main, ["--arch", "reference", "--epochs", "7", "--run-dir", run_dir,
                                   "--export-dir", tmp_path / "export"], capsys)
    assert message == (f"error: {run_dir} is a run started with other settings (arch "
                       f"'compact' -> 'reference'; epochs {trained_run['epochs']} -> 7); "
                       "resume it with the same ones or use a new --run-dir")
    assert snapshot(tmp_path) == before


# --- 5. Divergence --------------------------------------------------------------------


def test_a_diverged_run_says_where_exports_nothing_and_refuses_reruns(
        tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    argv = [*TINY, "--learning-rate", "1e30", "--data-dir", data_dir, "--run-dir", run_dir,
            "--export-dir", tmp_path / "export"]
    message = refused(train.main, argv, capsys)
    where = re.fullmatch(r"error: training diverged: the loss became NaN at epoch 1, batch "
                         r"(\d+); nothing was exported\. Start a new --run-dir, e\.g\. with a "
                         r"lower learning rate", message)
    assert where, message
    batch = int(where[1])
    assert 1 <= batch <= 4
    assert json.loads((run_dir / "diverged.json").read_text()) == {"epoch": 1, "batch": batch}
    assert not (tmp_path / "export").exists()
    before = snapshot(tmp_path)
    assert refused(train.main, argv, capsys) == (
        f"error: {run_dir} diverged (loss NaN at epoch 1, batch {batch}); start a new "
        "--run-dir, e.g. with a lower learning rate")
    assert snapshot(tmp_path) == before


# --- 6. Every setting checked before anything is written -------------------------------


@pytest.mark.parametrize("flags, expected", [
    (["--seed", "-1"], f"seed -1 is outside 0-{MAX_SEED}"),
    (["--seed", str(2**32)], f"seed {2**32} is outside 0-{MAX_SEED}"),
    (["--learning-rate", "nan"], "learning rate nan must be a positive number"),
    (["--learning-rate", "inf"], "learning rate inf must be a positive number"),
    (["--warmup-fraction", "1"], "warm-up fraction 1.0 must be at least 0 and below 1"),
    (["--weight-decay", "-1"], "weight decay -1.0 must be a number of at least 0"),
    (["--digit-loss-weight", "0", "--sum-loss-weight", "0"],
     "loss weights must be numbers of at least 0, not both 0"),
    (["--train-examples", "0"], "train examples 0 is outside 1-55,000"),
])
def test_bad_settings_are_refused_before_anything_is_written(flags, expected, tmp_path,
                                                               capsys):
    message = refused(train.main, [*flags, "--run-dir", tmp_path / "run",
                                   "--export-dir", tmp_path / "export"], capsys)
    assert message == f"error: {expected}"
    assert list(tmp_path.iterdir()) == []


# --- 7. SIGTERM -------------------------------------------------------------------------


@pytest.fixture
def sigterm_raises():
    """SIGTERM raises signals.Terminated in this process, as in a command; undone after."""
    previous = signal.getsignal(signal.SIGTERM)
    signals.raise_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)


def sigterm_myself(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises in here
    raise AssertionError("SIGTERM did not stop this process")


HOLD_FOLDER_LOCK = """
import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


def test_sigterm_during_an_export_leaves_no_staging_and_dead_ones_are_cleaned(
        trained_run, tmp_path, data_dir, monkeypatch, capsys, sigterm_raises):
    base = tmp_path / "models"
    dead = base / ".staging-1-4242-0123456789ab"  # its writer was killed with SIGKILL
    dead.mkdir(parents=True)
    (dead / "saved_model.pb").write_bytes(b"half written")
    live = base / ".staging-1-4343-ba9876543210"  # another export is writing it
    live.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER_LOCK, str(live)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "locked\n"
        monkeypatch.setattr(saved_model, "check_export", sigterm_myself)
        with pytest.raises(SystemExit) as exit_info:
            # The candidate is exported first, into --candidate-dir: SIGTERM lands there.
            run(export.main, [trained_run["keras_path"], "--candidate-dir", str(base),
                              "--export-dir", str(tmp_path / "served"),
                              "--data-dir", str(data_dir)])
        assert sorted(p.name for p in base.iterdir()) == [live.name]
        assert not (tmp_path / "served").exists()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert exit_info.value.code == EXIT_TERMINATED
    assert capsys.readouterr().err.strip().splitlines()[-1] == "stopped by SIGTERM"


def test_sigterm_while_a_file_is_written_leaves_the_old_file_and_no_temporary(
        tmp_path, sigterm_raises):
    target = tmp_path / "metrics.json"
    target.write_text("the previous run's\n")

    def write_half_then_sigterm(staging):
        staging.write_text("half")
        sigterm_myself()

    with pytest.raises(signals.Terminated):
        write_atomically(target, write_half_then_sigterm)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert target.read_text() == "the previous run's\n"


def test_temporary_names_are_unique_beyond_the_process_id(tmp_path):
    names = {temporary_sibling(tmp_path / "metrics.json").name for _ in range(100)}
    assert len(names) == 100
    assert all(str(os.getpid()) in name and name.endswith(".json") for name in names)


class SigtermInEpoch2(keras.callbacks.Callback):
    """Sends this process SIGTERM before batch 3 of epoch 2, and records each batch that
    ends (it runs before the run's own callbacks)."""

    def __init__(self):
        super().__init__()
        self.ended = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, batch, logs=None):
        self.ended.append((self.epoch, batch))


def test_sigterm_in_fit_is_stopped_by_the_callback_with_the_backup_at_the_epoch_before(
        tmp_path, sigterm_raises):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
    sender = SigtermInEpoch2()
    with pytest.raises(signals.Terminated) as stop:
        with signals.deferred():  # as train() fits
            model.fit(x, y, validation_data=(x, y), batch_size=2, epochs=3, verbose=0,
                      callbacks=[sender, *make_callbacks(run)])
    # The cause: StopOnSigterm raised at the end of the batch the signal came in ...
    raised_in = traceback.extract_tb(stop.tb)[-1]
    lines, first = inspect.getsourcelines(StopOnSigterm.on_train_batch_end)
    assert raised_in.filename == inspect.getsourcefile(StopOnSigterm)
    assert first <= raised_in.lineno < first + len(lines)
    assert sender.ended[-1] == (1, 2)
    # ... so the backup and the history stay at the end of epoch 1, the last whole one.
    assert run.completed_epochs() == 1 and len(history(run.path)) == 1


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_within_seconds_and_resumes_bit_identically(
        tmp_path, uninterrupted_run):
    root, log = tmp_path, tmp_path / "stopped.log"
    run_dir = root / "run"
    with log.open("wb") as stderr:
        process = start_until_backup(train_command(root), run_dir, stderr)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)  # inside epoch 2, as in `docker stop`
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
    stopped_after = time.monotonic() - sent
    # From config.json (written just before the model is built) to the first backup.
    epoch_1 = ((run_dir / "backup" / "training_metadata.json").stat().st_mtime
               - (run_dir / "config.json").stat().st_mtime)
    print(f"SIGTERM to exit: {stopped_after:.1f} s; building + epoch 1: {epoch_1:.1f} s")
    assert process.returncode == EXIT_TERMINATED, log.read_text()[-3000:]
    # Within docker stop's 10 s; on a machine so busy that a third of an epoch (about 5
    # of its 16 steps) takes longer than that, within a few steps all the same.
    assert stopped_after < max(10, epoch_1 / 3)
    assert log.read_text().strip().splitlines()[-1] == (
        f"stopped by SIGTERM; to resume, rerun the same command with --run-dir {run_dir}")
    logged = len(history(run_dir))
    assert 1 <= logged < EPOCHS and backed_up_epochs(run_dir) == logged
    assert not (root / "export").exists()
    stdout = run_to_end(train_command(root))
    assert f"after epoch {logged} of {EPOCHS}" in stdout
    assert_same_run(root, uninterrupted_run)


# --- 8. Version folders -----------------------------------------------------------------


def test_versions_are_the_folders_tf_serving_reads_as_versions(tmp_path):
    base = tmp_path / "models"
    for name in ("007", "٣", "²", "12a"):  # "²".isdigit(), but int("²") fails
        (base / name).mkdir(parents=True)
    assert saved_model.existing_versions(base) == {7: base / "007"}
    with pytest.raises(KerasAdderError, match="007 already exists"):
        saved_model.free_version(base, 7)
    assert saved_model.free_version(base) == 8
    assert saved_model.free_version(base, 3) == 3  # "٣" is no version 3
    (base / "8").write_text("a file: the export's rename into 8 would fail")
    assert saved_model.free_version(base) == 9


def test_train_and_predict_read_odd_folder_names_without_a_traceback(tmp_path, capsys):
    base = tmp_path / "models"
    for name in ("²", "٣", "007"):
        (base / name).mkdir(parents=True)
    message = refused(train.main, [*TINY, "--run-dir", tmp_path / "run", "--export-dir", base,
                                   "--export-version", "7"], capsys)
    assert message == f"error: export version {base / '007'} already exists; not overwriting it"
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    message = refused(predict.main, [tmp_path / "digit.npy", "--number", "3", "--model", base],
                      capsys)
    assert message == f"error: {base / '007'}: highest version has no saved_model.pb"


# --- 9. IDX and gzip bombs --------------------------------------------------------------

BOMB_BYTES = 2 << 30  # inflates to 2 GiB
MEMORY_LIMIT = 1 << 30  # address space of the child; a plain MNIST load peaks near 0.2 GiB

LOAD_UNDER_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.idx import load_mnist_dir  # no TensorFlow: it alone needs GBs of addresses
try:
    load_mnist_dir(sys.argv[1])
except KerasAdderError as error:
    sys.exit(f"error: {error}")
print("loaded")
"""


def write_gzip_bomb(path, header, zeros, chunk=1 << 20):
    """A valid gzip file of `header` then `zeros` zero bytes, written in little memory:
    after a full flush deflate starts afresh, so one compressed chunk is written again
    and again."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(chunk)
    crc = zlib.crc32(header)
    with path.open("wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip, deflate, no name
        f.write(compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH))
        compressed = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        for _ in range(zeros // chunk):
            f.write(compressed)
            crc = zlib.crc32(block, crc)
        f.write(compressor.flush())
        f.write(struct.pack("<II", crc, (len(header) + zeros) & 0xFFFFFFFF))


def mnist_with(tmp_path, data_dir, name, write):
    """A copy of the MNIST folder (as links) whose file `name` is written by `write`."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for real in data_dir.glob("*-ubyte.gz"):
        if real.name != name:
            (folder / real.name).symlink_to(real)
    write(folder / name)
    return folder


def load_in_a_small_child(folder):
    return subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT, str(folder),
                           str(MEMORY_LIMIT)], capture_output=True, text=True, timeout=600,
                          env=child_env(OPENBLAS_NUM_THREADS="1"))


def labels_header(count):
    return (2049).to_bytes(4, "big") + count.to_bytes(4, "big")


def test_real_mnist_loads_under_the_memory_limit(data_dir):
    result = load_in_a_small_child(data_dir)
    assert (result.returncode, result.stdout, result.stderr) == (0, "loaded\n", "")


def test_a_gzip_bomb_is_refused_under_a_memory_limit(tmp_path, data_dir):
    name = "t10k-labels-idx1-ubyte.gz"
    folder = mnist_with(tmp_path, data_dir, name,
                        lambda path: write_gzip_bomb(path, labels_header(10_000), BOMB_BYTES))
    assert (folder / name).stat().st_size < 10 << 20
    result = load_in_a_small_child(folder)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"error: {folder / name}: data length does not match its header "
                             "(shape (10000,) needs 10000 bytes, the file has more)\n")


def test_a_header_declaring_4_billion_labels_is_refused_before_reading(tmp_path, data_dir):
    name = "t10k-labels-idx1-ubyte.gz"
    folder = mnist_with(tmp_path, data_dir, name, lambda path: path.write_bytes(
        gzip.compress(labels_header(2**32 - 1) + bytes(10_000))))
    result = load_in_a_small_child(folder)
    assert result.stderr == (f"error: {folder / name}: IDX header declares shape "
                             "(4294967295,), MNIST's is (10000,)\n")


def test_an_idx_file_read_without_a_shape_may_promise_no_more_than_mnist_holds(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") * 3)
    with pytest.raises(KerasAdderError, match=r"declares shape \(4294967295, 4294967295, "
                                              r"4294967295\), [\d,]+ bytes: more than any"):
        read_idx(path)


# --- 10. Example request bodies: both files or neither; indices before TensorFlow -------

WRITE_UNDER_FILE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a full disk, even for root
from keras_adder import cli, predict
cli.run(predict.main, sys.argv[1:])
"""


@pytest.fixture
def examples(tmp_path):
    """(folder with the examples of an earlier request, .npy of 3 images, snapshot)."""
    folder = tmp_path / "examples"
    folder.mkdir()
    for name in ("instances.json", "inputs.json"):
        (folder / name).write_text('{"earlier": "request"}\n')
    np.save(tmp_path / "three.npy", np.full((3, 28, 28), 255, np.uint8))
    return folder, tmp_path / "three.npy", snapshot(tmp_path)


def test_write_examples_into_a_folder_it_cannot_write_changes_nothing(examples, tmp_path):
    folder, npy, before = examples
    result = subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_FILE_LIMIT, str(npy), "--number", "4",
         "--write-examples", str(folder)], capture_output=True, text=True, timeout=600,
        env=child_env())
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write the examples into {folder} (File too large)")
    assert snapshot(tmp_path) == before


def test_write_examples_replaces_neither_file_when_the_second_cannot_be(examples, tmp_path):
    folder, _, _ = examples
    (folder / "inputs.json").unlink()
    (folder / "inputs.json").mkdir()  # the rename of the second file would fail
    before = snapshot(tmp_path)
    with pytest.raises(KerasAdderError, match=r"inputs.json is a directory"):
        write_request_examples(folder, np.zeros((2, 28, 28), np.uint8),
                               np.array([1, 2], np.int32))
    assert snapshot(tmp_path) == before


PREDICT_THEN_SAY_IF_TENSORFLOW_STARTED = """
import sys
from keras_adder import cli, predict
try:
    cli.run(predict.main, sys.argv[1:])
finally:
    print("tensorflow" in sys.modules)
"""


def test_a_bad_mnist_index_is_refused_before_tensorflow_starts():
    result = subprocess.run([sys.executable, "-c", PREDICT_THEN_SAY_IF_TENSORFLOW_STARTED,
                             "--mnist-test-index", "10000", "--number", "1"],
                            capture_output=True, text=True, timeout=600, env=child_env())
    assert (result.returncode, result.stdout) == (EXIT_USAGE, "False\n")
    assert result.stderr == "error: MNIST test index 10000 is outside 0-9999\n"


# --- 11. Damaged run files: one line naming the file, nothing deleted (issue 34) -------

RUN_FLAGS = ["--epochs", "2", "--train-examples", "64"]


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends fit after the backup of epoch `epoch` (1-based), as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise SystemExit("crashed")


def crashed_run(root, data_dir, epoch):
    """A real run of RUN_FLAGS that died right after the backup of `epoch`."""
    make = train_path.make_callbacks
    with pytest.MonkeyPatch.context() as patch, global_state_kept():
        patch.setattr(train_path, "make_callbacks",
                      lambda *a, **k: [*make(*a, **k), StopAfterEpoch(epoch)])
        with pytest.raises(SystemExit):
            train.main([*RUN_FLAGS, "--data-dir", str(data_dir), "--run-dir", str(root / "run"),
                        "--export-dir", str(root / "export")])
    return root


@pytest.fixture(scope="module")
def crashed_runs(tmp_path_factory, data_dir):
    """{1: a run that died after epoch 1 of 2, 2: one that died after epoch 2, before
    testing}: the second reads best.keras at once, the first the backup's weights."""
    return {epoch: crashed_run(tmp_path_factory.mktemp(f"crashed{epoch}"), data_dir, epoch)
            for epoch in (1, 2)}


# file in the run, the crashed run it is damaged in, a whole file to write first (or None)
RUN_FILES = [
    ("config.json", 1, None),
    ("history.csv", 1, None),
    ("diverged.json", 1, '{"epoch": 1, "batch": 3}'),
    ("export.json", 1, '{"candidate": "saved_model"}'),
    ("metrics.json", 1, '{"test": {"digit_accuracy": 0.5}}'),
    ("backup/training_metadata.json", 1, None),
    ("backup/latest.weights.h5", 1, None),
    ("best.keras", 2, None),
]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("name, epoch, whole", RUN_FILES)
def test_a_damaged_run_file_is_named_in_one_line_and_nothing_is_deleted(
        crashed_runs, tmp_path, data_dir, capsys, name, epoch, whole, damage):
    shutil.copytree(crashed_runs[epoch] / "run", tmp_path / "run")
    damaged = tmp_path / "run" / name
    if whole is not None:
        damaged.write_text(whole)
    content = damaged.read_bytes()
    damaged.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"")
    before = snapshot(tmp_path)
    line = refused(train.main, [*RUN_FLAGS, "--data-dir", data_dir, "--run-dir",
                                tmp_path / "run", "--export-dir", tmp_path / "export"], capsys)
    assert line.startswith(f"error: {damaged} is damaged or unreadable (")
    assert line.endswith(f"); nothing was changed: start a new --run-dir, or delete "
                         f"{tmp_path / 'run'} to start this run over")
    assert snapshot(tmp_path) == before


# --- 12. Every command checks its outputs and packages before any work (issue 34) ------

COMMAND_THEN_SAY_IF_TENSORFLOW_STARTED = """
import importlib, os, sys
for package in filter(None, os.environ.get("BLOCKED_PACKAGES", "").split(",")):
    sys.modules[package] = None  # find_spec answers None, an import fails: not installed
from keras_adder import cli
command = importlib.import_module("keras_adder." + sys.argv[1])
try:
    cli.run(command.main, sys.argv[2:])
finally:
    print("tensorflow" in sys.modules)
"""

# command and arguments (<tmp> is the test's folder), packages made missing, message
REFUSED_AT_ONCE = {
    "bench --output in a missing folder": (
        "bench --quick --output <tmp>/missing/bench.json", "",
        "--output <tmp>/missing/bench.json: folder <tmp>/missing does not exist"),
    "bench --output is a folder": (
        "bench --quick --output <tmp>", "", "--output <tmp>: is a directory"),
    "bench without ONNX Runtime": (
        "bench --quick --output <tmp>/bench.json", "onnxruntime",
        "bench (it measures LiteRT and ONNX Runtime) needs onnxruntime: "
        "pip install -r requirements-export.txt"),
    "train --run-dir under a file": (
        "train --run-dir <tmp>/notes.txt/run --export-dir <tmp>/export", "",
        "cannot create run directory <tmp>/notes.txt/run: <tmp>/notes.txt is not a directory"),
    "train --export-dir under a file": (
        "train --run-dir <tmp>/run --export-dir <tmp>/notes.txt/m", "",
        "cannot create export directory <tmp>/notes.txt/m: <tmp>/notes.txt is not a directory"),
    "train --export-format without its package": (
        "train --run-dir <tmp>/run --export-dir <tmp>/export --export-format litert",
        "ai_edge_litert", "--export-format needs ai_edge_litert: "
        "pip install -r requirements-export.txt"),
    "evaluate --output-dir under a file": (
        "evaluate <tmp>/model.keras --output-dir <tmp>/notes.txt/eval", "",
        "cannot create output directory <tmp>/notes.txt/eval: <tmp>/notes.txt is not a "
        "directory"),
    "export --export-dir under a file": (
        "export <tmp>/best.keras --export-dir <tmp>/notes.txt/m", "",
        "cannot create export directory <tmp>/notes.txt/m: <tmp>/notes.txt is not a directory"),
    "export --candidate-dir under a file": (
        "export <tmp>/best.keras --export-dir <tmp>/m --candidate-dir <tmp>/notes.txt/c", "",
        "cannot create candidate directory <tmp>/notes.txt/c: <tmp>/notes.txt is not a "
        "directory"),
    "export --output under a file": (
        "export <tmp>/best.keras --format onnx --output <tmp>/notes.txt/m.onnx", "",
        "cannot create folder of --output <tmp>/notes.txt: <tmp>/notes.txt is not a "
        "directory"),
    "export --format litert without its package": (
        "export <tmp>/best.keras --format litert --output <tmp>/m.tflite", "ai_edge_litert",
        "--format litert needs ai_edge_litert: pip install -r requirements-export.txt"),
    "predict --show in a missing folder": (
        "predict --mnist-test-index 0 --number 1 --show <tmp>/no/out.png", "",
        "--show <tmp>/no/out.png: folder <tmp>/no does not exist"),
    "predict --write-examples onto a folder": (
        "predict --mnist-test-index 0 --number 1 --write-examples <tmp>/examples", "",
        "--write-examples <tmp>/examples/inputs.json: is a directory"),
    "demo without Gradio": (
        "demo", "gradio", "the demo needs its requirements (import of gradio halted; None in "
        "sys.modules): run `make demo` or pip install -r requirements-demo.txt"),
}


@pytest.mark.parametrize("case", REFUSED_AT_ONCE)
def test_every_command_checks_its_outputs_and_packages_before_any_work(case, tmp_path):
    command, blocked, message = (text.replace("<tmp>", str(tmp_path))
                                 for text in REFUSED_AT_ONCE[case])
    (tmp_path / "notes.txt").write_text("a user's notes")
    (tmp_path / "examples" / "inputs.json").mkdir(parents=True)
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", COMMAND_THEN_SAY_IF_TENSORFLOW_STARTED, *command.split()],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=child_env(BLOCKED_PACKAGES=blocked))
    # Refused before TensorFlow starts: before any measurement, training or evaluation.
    assert (result.returncode, result.stdout) == (EXIT_USAGE, "False\n"), result.stderr
    assert result.stderr == f"error: {message}\n"
    assert snapshot(tmp_path) == before


# --- 13. A full disk during training (issue 34) ----------------------------------------

TRAIN_WITH_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from keras_adder import cli, train
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
cli.run(train.main, sys.argv[2:])
"""
# Bigger than the JSON and CSV files of a run, smaller than best.keras and the backup's
# weights: their next write fails as on a full disk, without root or a tmpfs.
FILE_SIZE_LIMIT = 64 * 1024


@pytest.mark.slow
def test_a_full_disk_in_training_is_one_line_keeps_the_last_backup_and_resumes(tmp_path):
    command = train_command(tmp_path)
    run_dir = tmp_path / "run"
    kill_after_backup(command, run_dir, epochs=1)
    kept = {path: content for path, content in snapshot(run_dir).items()
            if path.name in ("best.keras", *BACKUP_FILES)}
    assert len(kept) == 3 and all(len(content[1]) > FILE_SIZE_LIMIT
                                  for path, content in kept.items() if path.suffix != ".json")
    full = subprocess.run([sys.executable, "-c", TRAIN_WITH_A_FILE_SIZE_LIMIT,
                           str(FILE_SIZE_LIMIT), *command[3:]],
                          capture_output=True, text=True, timeout=600, env=child_env())
    assert full.returncode == EXIT_USAGE, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(run_dir))}/(best\.keras|backup/latest\.weights"
        r"\.h5) \(File too large\); the run keeps its last whole epoch: free some space and "
        r"rerun the same command to resume", full.stderr.strip().splitlines()[-1])
    # Epoch 1's checkpoint and backup are whole, and nothing half-written is left.
    after = snapshot(run_dir)
    assert {path: after.get(path) for path in kept} == kept
    assert not [path for path in after if ".tmp" in path.name]
    stdout = run_to_end(command)  # space is back
    assert f"Resuming {run_dir} after epoch 1 of {EPOCHS}." in stdout
    assert len(history(run_dir)) == EPOCHS and (run_dir / "metrics.json").exists()
