"""Shared fixtures: the real MNIST (from $KERAS_ADDER_DATA) and one briefly trained model.

Training is the slow part of the suite, so one short run (2 epochs of the compact
model, ~1 minute on 2 CPU cores) is shared by every test that needs a trained model.
Tests only read its folders (a test that writes copies them first); the fixture checks
that at the end of the session.

The suite passes in any order: every test ends with the process-wide state that
training changes (op determinism, seeds: `GlobalState`) put back as the session found
it, and KERAS_ADDER_TEST_ORDER=reverse runs the tests backwards to show it.
"""

import contextlib
import hashlib
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHORT_EPOCHS = 2
ORDER_VARIABLE = "KERAS_ADDER_TEST_ORDER"


def pytest_collection_modifyitems(config, items):
    order = os.environ.get(ORDER_VARIABLE, "")
    if order not in ("", "reverse"):
        raise pytest.UsageError(f"{ORDER_VARIABLE}={order!r}: set it to reverse or unset it")
    if order == "reverse":
        items.reverse()


class GlobalState:
    """What training's `_seed_everything` changes for the whole process: op determinism
    and the Python, NumPy, TensorFlow and Keras seeds, as they are now."""

    def __init__(self):
        import numpy as np
        from keras.src.backend.common import global_state
        from tensorflow.python.eager import context
        from tensorflow.python.framework import config

        self.determinism = config.is_op_determinism_enabled()
        self.python, self.numpy = random.getstate(), np.random.get_state()
        self.tf_seed = context.global_seed()
        self.keras = {name: global_state.get_global_attribute(name) for name in KERAS_SEEDS}

    def restore(self):
        import numpy as np
        import tensorflow as tf
        from keras.src.backend.common import global_state
        from tensorflow.python.framework import config

        if self.determinism:
            tf.config.experimental.enable_op_determinism()
        else:
            config.disable_op_determinism()
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        tf.random.set_seed(self.tf_seed)
        for name, value in self.keras.items():
            global_state.set_global_attribute(name, value)


# Where keras.utils.set_random_seed keeps the seed and the generator made from it.
KERAS_SEEDS = ("global_random_seed", "global_seed_generator")


@contextlib.contextmanager
def global_state_kept():
    state = GlobalState()
    try:
        yield state
    finally:
        state.restore()


@pytest.fixture(scope="session", autouse=True)
def initial_global_state():
    """The process-wide state before any test or fixture ran."""
    return GlobalState()


@pytest.fixture(autouse=True)
def _global_state_restored(initial_global_state):
    """After each test, the initial state again, whatever the test or its fixtures set."""
    yield
    initial_global_state.restore()


def recount_test_accuracy(model, test_images, test_labels, seed):
    """{"digit_accuracy", "sum_accuracy"} of a Keras model on the test images, each
    with its seeded test number, counted here from the model's answers."""
    import numpy as np

    from keras_adder.data.pipeline import TEST_STREAM, model_inputs, paired_numbers

    numbers = paired_numbers(len(test_labels), seed, TEST_STREAM).numpy()
    answers = model.predict(model_inputs(test_images, numbers), batch_size=1024, verbose=0)
    return {"digit_accuracy": float(np.mean(answers["digit"].argmax(-1) == test_labels)),
            "sum_accuracy": float(np.mean(answers["sum"].argmax(-1) == test_labels + numbers))}


def fingerprint(folder):
    """Every path under `folder` with a hash of its bytes (None for directories)."""
    return {str(p.relative_to(folder)):
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture(scope="session")
def data_dir():
    """The MNIST folder. CI sets KERAS_ADDER_DATA; a missing folder is a failure."""
    folder = os.environ.get("KERAS_ADDER_DATA")
    assert folder, "set KERAS_ADDER_DATA to the folder with the MNIST IDX files"
    assert Path(folder).is_dir(), f"KERAS_ADDER_DATA={folder} is not a directory"
    return Path(folder)


@pytest.fixture(scope="session")
def mnist(data_dir):
    from keras_adder.data.pipeline import load_mnist

    return load_mnist(data_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir):
    """metrics.json of a short real training run; files under its run and export dirs."""
    from keras_adder.core.recipe import Recipe
    from keras_adder.fitting.keras_path import train

    root = tmp_path_factory.mktemp("trained")
    with global_state_kept():
        metrics = train(Recipe(epochs=SHORT_EPOCHS), data_dir=data_dir, run_dir=root / "run",
                        export_dir=root / "export", verbose=2)
    files = fingerprint(root)
    yield metrics
    assert fingerprint(root) == files, (
        "a test changed the shared trained run or its export; copy them first")


@pytest.fixture(scope="session")
def trained_model(trained_run):
    import keras

    return keras.saving.load_model(trained_run["keras_path"])


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, data_dir):
    """The root of a run of training_runs.train_command that nothing stopped: what a stopped
    and resumed run must equal."""
    from training_runs import run_to_end, train_command

    root = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(train_command(root))
    return root
