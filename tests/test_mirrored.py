"""Several devices on one machine: MirroredStrategy over 2 logical CPU devices.

`--strategy mirrored --cpu-replicas 2` splits the CPU in two and mirrors over the
halves: the code path of two GPUs (the global batch split across replicas, gradients
and metrics reduced across them, BatchNorm synchronized, a model trained mirrored and
exported). Every run is a subprocess, because TensorFlow fixes its logical devices
when it starts.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from training_runs import TIMEOUT_S, history, kill_after_backup, run_to_end

pytestmark = pytest.mark.slow

REPLICAS = 2
EPOCHS = 2
# BatchNorm's moving variance starts at 1 and moves 1 % a step (momentum 0.99), while
# the activations it tracks have a variance of ~0.006 (measured at conv3): below ~750
# steps the model tests far worse in inference mode than it trains (after 64 steps of
# 128 images: 16 % of the digits right, 87 % for the same weights with batch
# statistics; after 192 steps validation was at 28 %). Batches of 32 give 768 steps
# over 24,576 images.
BATCH_SIZE = 32
TRAIN_EXAMPLES = 12288
# Chance is 10 % for the digit and below 10 % for the sum; measured 97.96 % and 97.70 %
# (docs/scaling.md).
ACCURACY_FLOOR = 0.9
STEPS = 5


def train_command(root):
    return [
        sys.executable, "-m", "keras_adder.train", "--strategy", "mirrored",
        "--cpu-replicas", str(REPLICAS), "--epochs", str(EPOCHS),
        "--train-examples", str(TRAIN_EXAMPLES), "--batch-size", str(BATCH_SIZE),
        "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
    ]


def read_metrics(root):
    return json.loads((root / "run" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory, data_dir):
    """A 2-replica run killed after its first epoch, then run again to the end:
    (root, epochs logged when killed, stdout of the resumed run)."""
    root = tmp_path_factory.mktemp("mirrored")
    logged = kill_after_backup(train_command(root), root / "run")
    assert not (root / "run" / "metrics.json").exists()
    return root, logged, run_to_end(train_command(root))


def test_killed_mirrored_run_resumes_and_finishes(mirrored_run):
    root, logged, stdout = mirrored_run
    assert 1 <= logged < EPOCHS
    assert f"after epoch {logged} of {EPOCHS}" in stdout and "Epoch 1/" not in stdout
    assert [int(row["epoch"]) for row in history(root / "run")] == list(range(EPOCHS))
    assert read_metrics(root)["export_path"] == str(root / "export" / "1")
    assert sorted(p.name for p in (root / "export").iterdir()) == ["1"]
    assert not (root / "run" / "backup").exists()


def test_mirrored_run_trains_on_two_replicas(mirrored_run):
    metrics = read_metrics(mirrored_run[0])
    assert metrics["strategy"] == "MirroredStrategy"
    assert metrics["replicas"] == REPLICAS
    assert metrics["batch_size"] == BATCH_SIZE
    assert metrics["per_replica_batch"] == BATCH_SIZE // REPLICAS
    assert metrics["test"]["digit_accuracy"] >= ACCURACY_FLOOR
    assert metrics["test"]["sum_accuracy"] >= ACCURACY_FLOOR


def test_mirrored_export_answers_like_the_keras_model(mirrored_run, mnist):
    import keras
    import tensorflow as tf

    from keras_adder.data.pipeline import model_inputs

    root = mirrored_run[0]
    (_, _), (test_images, _) = mnist
    images = test_images[:64]
    numbers = np.arange(64, dtype=np.int32)[::-1] % 10
    keras_model = keras.saving.load_model(root / "run" / "best.keras")
    expected = keras_model(model_inputs(images, numbers), training=False)
    serve = tf.saved_model.load(str(root / "export" / "1")).signatures["serving_default"]
    served = serve(image=tf.constant(images), number=tf.constant(numbers))
    for head in ("digit", "sum"):
        np.testing.assert_allclose(served[f"{head}_probabilities"].numpy(),
                                   np.asarray(expected[head]), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def step_losses(data_dir):
    """{replicas: {variant: losses of the first STEPS steps}} (tests/mirrored_steps.py);
    the two processes run side by side."""
    script = Path(__file__).with_name("mirrored_steps.py")
    processes = {replicas: subprocess.Popen(
        [sys.executable, str(script), str(replicas), str(STEPS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for replicas in (1, REPLICAS)}
    losses = {}
    try:
        for replicas, process in processes.items():
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            assert process.returncode == 0, stderr[-3000:]
            losses[replicas] = json.loads(stdout.splitlines()[-1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return losses


def test_step_losses_differ_only_by_summation_order(step_losses):
    # BatchNorm frozen, no dropout: the same math on 1 and 2 replicas, only the sums
    # of the loss and the gradients run in another order (per replica, then across).
    # float32 rounds each sum to ~1e-7 relative; measured <= 1.9e-6 over 5 steps (loss ~5.5).
    one, two = step_losses[1]["isolated"], step_losses[REPLICAS]["isolated"]
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)


def test_synchronized_batch_norm_matches_one_device(step_losses):
    # BatchNorm in training mode, synchronized across replicas; no dropout. Step 1 sees
    # the same statistics (of the whole global batch) as one device. The synchronized
    # variance is E[x^2] - E[x]^2, one device's is E[(x - mean)^2]: the small rounding
    # difference, through AdamW (which divides by sqrt(v) and so enlarges tiny
    # gradient differences), grows over the following steps: measured <= 2.1e-4.
    one, two = step_losses[1]["batchnorm"], step_losses[REPLICAS]["batchnorm"]
    np.testing.assert_allclose(two[0], one[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-3)


def test_step_losses_of_the_model_as_trained(step_losses):
    # As trained, the replicas draw their own dropout masks (each for its half of the
    # batch), not the masks one device draws for the whole batch: the losses differ
    # like two seeds, measured up to 2.4e-2 in 5 steps (loss ~5.5). A loss reduced wrongly
    # across replicas (summed, or averaged twice) would be off by a factor of 2.
    one, two = step_losses[1]["full"], step_losses[REPLICAS]["full"]
    np.testing.assert_allclose(two, one, rtol=0, atol=0.1)


def test_cpu_replicas_with_multiworker_is_refused(tmp_path, capsys):
    from keras_adder import train
    from keras_adder.cli import run

    argv = train_command(tmp_path)[3:]  # the flags of `python -m keras_adder.train`
    argv[argv.index("mirrored")] = "multiworker"
    with pytest.raises(SystemExit) as exit_info:
        run(train.main, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --cpu-replicas works with --strategy mirrored, not multiworker")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_that_does_not_split_evenly_is_refused():
    from keras_adder.core.errors import KerasAdderError
    from keras_adder.fitting.distribution import check_batch_split

    two = SimpleNamespace(num_replicas_in_sync=2)
    check_batch_split(two, 128, 55_000)  # the last batch (88) may split 44 + 44, or unevenly
    check_batch_split(two, 128, 2)
    with pytest.raises(KerasAdderError, match="batch size 127 does not split evenly across 2 "
                       "replicas .* choose a multiple of 2"):
        check_batch_split(two, 127, 55_000)
    with pytest.raises(KerasAdderError, match="number of training images 1 does not split"):
        check_batch_split(two, 128, 1)


def test_split_cpu_after_tensorflow_started_says_so():
    import tensorflow as tf

    from keras_adder.core.errors import KerasAdderError
    from keras_adder.fitting.distribution import split_cpu

    started = [device.name for device in tf.config.list_logical_devices("CPU")]  # starts TF
    assert split_cpu(len(started)) == started
    with pytest.raises(KerasAdderError, match="already runs in this process with"):
        split_cpu(len(started) + 1)
