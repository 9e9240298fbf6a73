"""More than one machine: two MultiWorkerMirroredStrategy workers on 127.0.0.1, CPU only.

Both workers run the same `python -m keras_adder.train --strategy multiworker`
command with their own TF_CONFIG. Both are killed after their first epoch, started
again, and must resume and finish; only the chief (worker 0) leaves files: the run
directory and a SavedModel that loads and answers. This also proves
keras_adder/fitting/multi_worker.py: without it keras 3.15.1's `model.fit` fails here.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORKERS = 2
TIMEOUT_S = 600


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def backed_up(backup_dir):
    try:
        return json.loads((backup_dir / "training_metadata.json").read_text())["epoch"] >= 1
    except (OSError, ValueError, KeyError):
        return False


def run_workers(root, crash=False):
    """Start every worker and wait for all: [(returncode, output)] in worker order.

    With `crash`, SIGKILL every worker once each has backed up its first epoch, as when
    the cluster loses power.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(WORKERS)]}
    command = [
        sys.executable, "-m", "keras_adder.train", "--deterministic", "--strategy", "multiworker",
        "--epochs", "2", "--train-examples", "1024",
        "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
    ]
    backups = [root / "run" / "backup"] + [
        root / "run" / f"workertemp_{index}" / "backup" for index in range(1, WORKERS)
    ]
    processes = []
    try:
        for index in range(WORKERS):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="-1")
            log = (root / f"worker{index}.log").open("w+")
            processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=env), log))
        deadline = time.monotonic() + TIMEOUT_S
        while crash and not all(backed_up(backup) for backup in backups):
            assert all(p.poll() is None for p, _ in processes), "a worker ended early"
            assert time.monotonic() < deadline, "no epoch was backed up in time"
            time.sleep(0.05)
        for process, _ in processes:
            if crash:
                process.kill()
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process, _ in processes:  # a worker left waiting for its peer
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for process, log in processes:
        log.seek(0)
        results.append((process.returncode, log.read()))
        log.close()
    return results


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, data_dir):
    """A two-worker run killed after its first epoch, then started again to the end."""
    root = tmp_path_factory.mktemp("multiworker")
    run_workers(root, crash=True)
    assert not (root / "run" / "metrics.json").exists()
    return root, run_workers(root)


@pytest.fixture(scope="module")
def uninterrupted_cluster_run(tmp_path_factory, data_dir):
    """The same two-worker run, never stopped."""
    root = tmp_path_factory.mktemp("multiworker-uninterrupted")
    for index, (returncode, output) in enumerate(run_workers(root)):
        assert returncode == 0, f"worker {index}:\n{output[-4000:]}"
    return root


def test_killed_cluster_run_ends_like_an_uninterrupted_one(cluster_run,
                                                           uninterrupted_cluster_run):
    history = (cluster_run[0] / "run" / "history.csv").read_text()
    assert history == (uninterrupted_cluster_run / "run" / "history.csv").read_text()


def test_two_workers_resume_train_and_only_the_chief_writes(cluster_run):
    root, results = cluster_run
    for index, (returncode, output) in enumerate(results):
        assert returncode == 0, f"worker {index}:\n{output[-4000:]}"
        assert "after epoch 1 of 2" in output and "Epoch 1/2" not in output  # resumed
        assert "crashed" not in output  # no worker left while the other still worked
    history = (root / "run" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["replicas"] == WORKERS
    assert [p.name for p in (root / "export").iterdir()] == ["1"]
    # The non-chief worker's checkpoint, history and export went to a deleted temp dir.
    assert not list((root / "run").glob("workertemp_*"))
    assert "SavedModel:" in results[0][1] and "SavedModel:" not in results[1][1]


def test_chief_export_answers_like_the_chiefs_best_model(cluster_run, mnist):
    import keras
    import tensorflow as tf

    from keras_adder.data.pipeline import model_inputs

    root = cluster_run[0]
    serve = tf.saved_model.load(str(root / "export" / "1")).signatures["serving_default"]
    best = keras.saving.load_model(root / "run" / "best.keras")
    (_, _), (test_images, _) = mnist
    images, numbers = test_images[:64], np.arange(64, dtype=np.int32) % 10
    served = serve(image=tf.constant(images), number=tf.constant(numbers))
    expected = best.predict(model_inputs(images, numbers), verbose=0)
    for head in ("digit", "sum"):
        np.testing.assert_array_equal(served[head].numpy(), expected[head].argmax(axis=1))
        np.testing.assert_allclose(served[f"{head}_probabilities"].numpy(), expected[head],
                                   atol=1e-5)


def test_finished_cluster_run_is_not_trained_again(cluster_run):
    root = cluster_run[0]
    metrics = (root / "run" / "metrics.json").read_bytes()
    for returncode, output in run_workers(root):
        assert returncode == 0, output[-4000:]
        assert "is a finished run" in output and "Epoch 1/" not in output
    assert (root / "run" / "metrics.json").read_bytes() == metrics
    assert [p.name for p in (root / "export").iterdir()] == ["1"]


def test_compat_fix_refuses_an_untested_keras(monkeypatch):
    import keras

    from keras_adder.core.errors import KerasAdderError
    from keras_adder.fitting.multi_worker import patch_keras_for_multi_worker

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(KerasAdderError, match="keras 3.99.0 is installed; check "
                       "keras-team/keras#20329"):
        patch_keras_for_multi_worker()


def test_single_machine_strategies():
    import tensorflow as tf

    from keras_adder.fitting.distribution import choose_strategy, is_chief

    mirrored = choose_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert is_chief(mirrored) and is_chief(choose_strategy("auto"))
