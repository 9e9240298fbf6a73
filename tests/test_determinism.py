"""Reproducibility: `--deterministic` trains with TF op determinism on, and
`--no-deterministic` with it off, whatever the process had before.

That the same seed gives the same run is tested in tests/test_resume.py, which compares
two seeded `--deterministic` training processes (one of them killed and resumed) for
identical histories, test metrics and best weights. On CPU the kernels are reproducible
without op determinism too, so only this test can fail when the flag stops working.
"""

import keras
import pytest
import tensorflow as tf
from tensorflow.python.framework import config

from keras_adder import train
from keras_adder.fitting import keras_path as training


class Seen(Exception):
    """Ends the run once fit has started: the rest of training is not needed here."""


@pytest.mark.parametrize("flag, expected", [("--deterministic", True),
                                            ("--no-deterministic", False)])
def test_the_flag_sets_op_determinism_for_fit(flag, expected, tmp_path, data_dir, monkeypatch):
    seen = []

    class Look(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(config.is_op_determinism_enabled())
            raise Seen

    make_callbacks = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks",
                        lambda *args, **kwargs: [*make_callbacks(*args, **kwargs), Look()])
    if expected:  # start from the other state: the flag must set it either way
        config.disable_op_determinism()
    else:
        tf.config.experimental.enable_op_determinism()
    with pytest.raises(Seen):
        train.main([flag, "--epochs", "1", "--train-examples", "64", "--data-dir",
                    str(data_dir), "--run-dir", str(tmp_path / "run"),
                    "--export-dir", str(tmp_path / "export")])
    assert seen == [expected]
