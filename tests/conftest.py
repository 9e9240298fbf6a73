"""Shared fixtures: the real MNIST (from $KERAS_ADDER_DATA) and one briefly trained model.

Training is the slow part of the suite, so one short run (2 epochs of the compact
model, ~1 minute on 2 CPU cores) is shared by every test that needs a trained model.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHORT_EPOCHS = 2


@pytest.fixture(scope="session")
def data_dir():
    """The MNIST folder. CI sets KERAS_ADDER_DATA; a missing folder is a failure."""
    folder = os.environ.get("KERAS_ADDER_DATA")
    assert folder, "set KERAS_ADDER_DATA to the folder with the MNIST IDX files"
    assert Path(folder).is_dir(), f"KERAS_ADDER_DATA={folder} is not a directory"
    return Path(folder)


@pytest.fixture(scope="session")
def mnist(data_dir):
    from keras_adder.data import load_mnist

    return load_mnist(data_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir):
    """metrics.json of a short real training run; files under its run and export dirs."""
    from keras_adder.recipe import Recipe
    from keras_adder.training import train

    root = tmp_path_factory.mktemp("trained")
    return train(Recipe(epochs=SHORT_EPOCHS), data_dir=data_dir, run_dir=root / "run",
                 export_dir=root / "export", verbose=2)


@pytest.fixture(scope="session")
def trained_model(trained_run):
    import keras

    return keras.saving.load_model(trained_run["keras_path"])


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, data_dir):
    """The root of a run of helpers.train_command that nothing stopped: what a stopped
    and resumed run must equal."""
    from helpers import run_to_end, train_command

    root = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(train_command(root))
    return root
