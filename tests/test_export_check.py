"""The export's self-check refuses a SavedModel that answers otherwise than the Keras
model, and no version folder (nor staging folder) is left behind."""

import numpy as np
import pytest
import tensorflow as tf

from keras_adder.core.errors import KerasAdderError
from keras_adder.model.architectures import build_model
from keras_adder.serving import saved_model


def images(count=16):
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)


def tampered(output, change):
    """make_serving_function, but with `change` applied to one of the served outputs."""
    original = saved_model.make_serving_function

    def make_serving_function(model):
        serve = original(model)

        @tf.function(input_signature=serve.input_signature)
        def wrong(image, number):
            outputs = dict(serve(image, number))
            outputs[output] = change(outputs[output])
            return outputs

        return wrong

    return make_serving_function


def reweighted(probabilities):
    """Other probabilities that still sum to 1; differences of ~1e-3, above the 1e-5
    the check allows."""
    weights = tf.exp(0.01 * tf.range(probabilities.shape[-1], dtype=tf.float32))
    changed = probabilities * weights
    return changed / tf.reduce_sum(changed, axis=-1, keepdims=True)


@pytest.mark.parametrize("output, change, message", [
    ("digit_probabilities", reweighted,
     "exported digit probabilities differ from the Keras model's"),
    ("sum_probabilities", reweighted, "exported sum probabilities differ from the Keras model's"),
    ("digit", lambda digit: (digit + 1) % 10,
     "exported digit classes disagree with their probabilities"),
])
def test_an_export_that_answers_otherwise_is_refused(tmp_path, monkeypatch, output, change,
                                                     message):
    monkeypatch.setattr(saved_model, "make_serving_function", tampered(output, change))
    with pytest.raises(KerasAdderError) as error:
        saved_model.export_saved_model(build_model("compact"), tmp_path / "models",
                                       check_images=images())
    assert str(error.value) == (
        f"export to {tmp_path / 'models' / '1'} failed, nothing was written: {message}")
    assert list((tmp_path / "models").iterdir()) == []  # no version, no staging folder


def test_a_model_other_than_the_exported_one_is_refused(tmp_path, mnist):
    # Real digits: serving_image, checked too, must see them as they are.
    _, (test_images, _) = mnist
    exported, other = build_model("compact"), build_model("compact")
    path = saved_model.export_saved_model(exported, tmp_path, check_images=test_images[:16])
    numbers = np.arange(16, dtype=np.int32) % 10
    saved_model.check_export(path, exported, test_images[:16], numbers)  # the model itself
    with pytest.raises(KerasAdderError, match="exported digit probabilities differ"):
        saved_model.check_export(path, other, test_images[:16], numbers)
