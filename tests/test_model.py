"""Both architectures: sizes, names, shapes, and that the sum head is a trained layer."""

import numpy as np
import pytest

from keras_adder.core.constants import ARCHITECTURES, NUM_DIGITS, NUM_SUMS
from keras_adder.core.errors import KerasAdderError
from keras_adder.model.architectures import addition_table, build_model
from keras_adder.serving.folding import fold_batchnorm
from keras_adder.train import main as train_main


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_reference_has_exactly_the_original_parameter_count():
    assert trainable_params(build_model("reference")) == 6_384_925


def test_compact_has_exactly_the_documented_parameter_count():
    model = build_model("compact")
    assert (model.count_params(), trainable_params(model)) == (28_134, 27_942)
    assert round(build_model("reference").count_params() / model.count_params()) == 227


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_named_inputs_and_outputs(arch):
    model = build_model(arch)
    assert sorted(t.name for t in model.inputs) == ["image", "number"]
    assert model.output_names == ["digit", "sum"]
    batch = {"image": np.random.rand(3, 28, 28, 1).astype("float32"),
             "number": np.eye(10, dtype="float32")[[0, 4, 9]]}
    outputs = model(batch)
    assert outputs["digit"].shape == (3, 10) and outputs["sum"].shape == (3, 19)
    for head in ("digit", "sum"):
        np.testing.assert_allclose(np.asarray(outputs[head]).sum(axis=1), 1.0, rtol=1e-5)


def test_compact_sum_head_starts_uniform():
    model = build_model("compact")
    batch = {"image": np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32"),
             "number": np.eye(10, dtype="float32")[[3, 7]]}
    np.testing.assert_allclose(np.asarray(model(batch)["sum"]), 1 / 19, rtol=1e-5)


def exact_adder_logits(model):
    """Table logits that put each (number, digit) row on digit + number."""
    rows = np.full((NUM_DIGITS, NUM_DIGITS, NUM_SUMS), -30.0, "float32")
    for number, digit in np.ndindex(NUM_DIGITS, NUM_DIGITS):
        rows[number, digit, number + digit] = 30.0
    return rows.reshape(NUM_DIGITS, -1) / model.get_layer("table_scale").scale


def test_compact_sum_is_the_digit_carried_through_the_table():
    model = build_model("compact")
    model.get_layer("table_logits").set_weights([exact_adder_logits(model)])
    table = addition_table(model)
    assert table.shape == (NUM_DIGITS, NUM_DIGITS, NUM_SUMS)
    batch = {"image": np.random.default_rng(0).random((10, 28, 28, 1), dtype="float32"),
             "number": np.eye(10, dtype="float32")}
    outputs = model(batch)
    digit, total = np.asarray(outputs["digit"]), np.asarray(outputs["sum"])
    for number in range(NUM_DIGITS):
        np.testing.assert_allclose(total[number, number:number + NUM_DIGITS], digit[number],
                                   rtol=1e-5)
        np.testing.assert_allclose(
            total[number], np.einsum("d,ds->s", digit[number], table[number]), rtol=1e-5)


def test_compact_sum_head_depends_on_number_and_image():
    model = build_model("compact")
    # Trained weights stand in for the zeros it starts with.
    table_logits = model.get_layer("table_logits")
    (kernel,) = table_logits.get_weights()
    table_logits.set_weights([np.random.default_rng(1).normal(size=kernel.shape)])
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32")
    numbers = np.eye(10, dtype="float32")
    base = np.asarray(model({"image": images[:1], "number": numbers[:1]})["sum"])
    other_number = np.asarray(model({"image": images[:1], "number": numbers[5:6]})["sum"])
    other_image = np.asarray(model({"image": images[1:], "number": numbers[:1]})["sum"])
    assert not np.allclose(base, other_number) and not np.allclose(base, other_image)
    assert table_logits.trainable_weights


@pytest.mark.parametrize("dropout, rate", [(None, 0.1), (0.0, 0.0), (0.3, 0.3)])
def test_the_recipe_sets_the_compact_models_dropout(dropout, rate):
    model = build_model("compact", dropout)
    assert {model.get_layer(name).rate for name in ("drop1", "drop2", "drop3")} == {rate}


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(KerasAdderError, match="unknown architecture 'big'"):
        build_model("big")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_dry_run_prints_summary(capsys, arch):
    train_main(["--dry-run", "--arch", arch])
    out = capsys.readouterr().out
    assert f"Total params: {build_model(arch).count_params():,}" in out
    assert "image" in out and "sum" in out


def test_batchnorm_folding(trained_model, mnist):
    import keras

    from keras_adder.data.pipeline import model_inputs

    _, (test_images, _) = mnist
    folded = fold_batchnorm(trained_model)
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in trained_model.layers)
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in folded.layers)
    inputs = model_inputs(test_images[:256], np.arange(256) % NUM_DIGITS)
    expected, got = trained_model(inputs, training=False), folded(inputs, training=False)
    for head in ("digit", "sum"):
        np.testing.assert_allclose(np.asarray(got[head]), np.asarray(expected[head]),
                                   atol=1e-5)

    # A convolution whose output also goes elsewhere keeps its BatchNormalization.
    image = keras.Input((6, 6, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same")(image)
    branched = keras.Model(image, [keras.layers.BatchNormalization()(conv), conv])
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in fold_batchnorm(branched).layers)


@pytest.mark.parametrize("epsilon, scale, center, use_bias", [
    (0.5, True, True, True),  # an epsilon large enough that dropping it shows
    (1e-3, False, True, False),
    (0.25, True, False, True),
])
def test_batchnorm_folding_keeps_every_term_of_the_normalisation(epsilon, scale, center,
                                                                 use_bias):
    # No trained fixture: the product's own export check must not be what catches a fold
    # that drops a term; this test's comparison must.
    import keras

    rng = np.random.default_rng(0)
    image = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, padding="same", use_bias=use_bias)(image)
    bn = keras.layers.BatchNormalization(epsilon=epsilon, scale=scale, center=center)
    model = keras.Model(image, keras.layers.ReLU()(bn(conv)))
    # Every weight and moving statistic far from its initial 0 or 1, so each term moves
    # the answer; small variances, so that epsilon matters.
    model.set_weights([rng.normal(size=w.shape).astype("float32")
                       for w in model.get_weights()])
    bn.moving_variance.assign(rng.uniform(0.05, 0.3, 3).astype("float32"))
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in folded.layers)
    inputs = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(folded(inputs, training=False)),
                               np.asarray(model(inputs, training=False)), atol=1e-5)


def test_the_saved_model_serves_the_folded_model(trained_run):
    import tensorflow as tf

    names = [variable.name for variable in tf.saved_model.load(trained_run["export_path"]).variables]
    assert any(name.startswith("conv3/kernel") for name in names), names
    assert not [name for name in names if "moving_mean" in name or "gamma" in name]
