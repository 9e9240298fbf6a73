"""End to end on the real MNIST: train briefly, test, export, reload in a fresh process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from keras_adder.data.pipeline import model_inputs


def test_short_training_reaches_98_percent_on_both_heads(trained_run):
    test = trained_run["test"]
    assert test["digit_accuracy"] >= 0.98, test
    assert test["sum_accuracy"] >= 0.98, test


def test_run_directory_holds_what_was_promised(trained_run):
    run_dir = Path(trained_run["keras_path"]).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("params", "arch", "epochs", "seed", "train_seconds", "export_path"):
        assert key in metrics
    assert metrics["test"]["digit_accuracy"] == trained_run["test"]["digit_accuracy"]
    assert metrics["params"] == 28_134  # the compact model, as documented
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + metrics["epochs"]
    assert "val_sum_accuracy" in history[0]
    assert not (run_dir / "backup").exists()  # BackupAndRestore cleans up after success
    export = Path(metrics["export_path"])
    assert export.name == "1" and (export / "saved_model.pb").is_file()
    assert [p.name for p in export.parent.iterdir()] == ["1"]  # no staging leftovers


def test_finished_run_is_not_trained_again(trained_run, tmp_path, capsys):
    from conftest import SHORT_EPOCHS

    from keras_adder.core.recipe import Recipe
    from keras_adder.fitting.keras_path import train

    run_dir = tmp_path / "run"
    shutil.copytree(Path(trained_run["keras_path"]).parent, run_dir)  # never the fixture's
    before = (run_dir / "history.csv").read_text()
    again = train(Recipe(epochs=SHORT_EPOCHS), run_dir=run_dir, export_dir=tmp_path / "export")
    assert "finished run" in capsys.readouterr().out
    assert again == trained_run
    assert (run_dir / "history.csv").read_text() == before
    assert not (tmp_path / "export").exists()


RELOAD = """
import json, sys
import numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
data = np.load(sys.argv[2])
out = serve(image=tf.constant(data["images"]), number=tf.constant(data["numbers"]))
assert not any(m.startswith("keras_adder") for m in sys.modules), "imported keras_adder"
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
"""


def test_saved_model_runs_in_a_fresh_process_without_keras_adder(
    trained_run, trained_model, mnist, tmp_path
):
    _, (test_images, test_labels) = mnist
    images, numbers = test_images[:200], (np.arange(200) * 7 % 10).astype(np.int32)
    np.savez(tmp_path / "in.npz", images=images, numbers=numbers)
    subprocess.run(
        [sys.executable, "-c", RELOAD, trained_run["export_path"], tmp_path / "in.npz",
         tmp_path / "out.npz"],
        check=True, cwd=tmp_path, timeout=300,
    )
    served = np.load(tmp_path / "out.npz")
    expected = trained_model.predict(model_inputs(images, numbers), verbose=0)
    np.testing.assert_allclose(served["digit_probabilities"], expected["digit"], atol=1e-5)
    np.testing.assert_allclose(served["sum_probabilities"], expected["sum"], atol=1e-5)
    np.testing.assert_array_equal(served["digit"], expected["digit"].argmax(axis=1))
    np.testing.assert_array_equal(served["sum"], expected["sum"].argmax(axis=1))
    assert served["digit"].dtype == np.int32 and served["sum_probabilities"].shape == (200, 19)
    assert (served["digit"] == test_labels[:200]).mean() > 0.95


def test_a_one_epoch_run_ends_with_the_rate_decayed(data_dir, tmp_path):
    """Warm-up and decay scale with the run: even one epoch ends near a zero rate.

    The whole training set: BatchNorm's moving statistics (momentum 0.99) need a few
    hundred steps before the model can be evaluated at all.
    """
    import keras

    from keras_adder.core.recipe import Recipe
    from keras_adder.fitting.keras_path import train

    recipe = Recipe(epochs=1, seed=1)
    metrics = train(recipe, data_dir=data_dir, run_dir=tmp_path / "run",
                    export_dir=tmp_path / "export", verbose=0)
    optimizer = keras.saving.load_model(metrics["keras_path"]).optimizer
    assert int(optimizer.iterations) == 430  # 55,000 images / 128
    final_rate = float(optimizer.learning_rate)
    assert final_rate < 0.01 * recipe.learning_rate, final_rate
    assert metrics["test"]["digit_accuracy"] > 0.95, metrics["test"]  # chance: 0.1
    assert metrics["test"]["sum_accuracy"] > 0.95, metrics["test"]
