"""Models that are not this project's: every format is refused when loaded, by one check
of its interface (serving.formats.check_interface), in every command that loads one.

The foreign models are built here with a few lines of TensorFlow and Keras, as anyone
could: right inputs and other outputs, other widths, other names, one input."""

import numpy as np
import pytest

from keras_adder import evaluate, export, predict
from keras_adder.cli import run
from keras_adder.core.errors import KerasAdderError

IMAGE = ([None, 28, 28], "uint8")
NUMBER = ([None], "int32")


def foreign_function(outputs, inputs=(("image", IMAGE), ("number", NUMBER))):
    """A tf.function over named inputs whose outputs `outputs(x)` makes from the
    flattened image x (float32 [N, 784]) plus the number."""
    import tensorflow as tf

    specs = [tf.TensorSpec(shape, getattr(tf, dtype), name=name)
             for name, (shape, dtype) in inputs]

    @tf.function(input_signature=specs)
    def serve(*tensors):
        x = tf.cast(tf.reshape(tensors[0], [-1, 28 * 28]), tf.float32) / 255.0
        if len(tensors) > 1:
            x += tf.cast(tensors[1][:, tf.newaxis], tf.float32)
        return outputs(x)

    return serve


def heads(digit_width, sum_width, probabilities=True):
    """Outputs like the signature's, with these widths; without the *_probabilities
    outputs when `probabilities` is False."""
    import tensorflow as tf

    def outputs(x):
        digit, total = tf.nn.softmax(x[:, :digit_width]), tf.nn.softmax(x[:, :sum_width])
        answer = {"digit": tf.argmax(digit, -1, output_type=tf.int32),
                  "sum": tf.argmax(total, -1, output_type=tf.int32)}
        if probabilities:
            answer |= {"digit_probabilities": digit, "sum_probabilities": total}
        return answer

    return outputs


def scores(x):
    import tensorflow as tf

    return {"scores": tf.nn.softmax(x[:, :10])}


def save_saved_model(serve, path):
    import tensorflow as tf

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path


def refusal(capsys, command, argv):
    """The one error line a command prints, after checking it exited 2 and said nothing
    else."""
    with pytest.raises(SystemExit) as exit_info:
        run(command, argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    return captured.err.removeprefix("error: ").rstrip("\n")


def predict_refusal(capsys, model):
    return refusal(capsys, predict.main,
                   ["--mnist-test-index", "0", "--number", "1", "--model", str(model)])


def evaluate_refusal(capsys, model, tmp_path):
    output = tmp_path / "evaluation"
    message = refusal(capsys, evaluate.main, [str(model), "--limit", "3", "--no-figures",
                                              "--output-dir", str(output)])
    assert not output.exists()  # nothing written
    return message


def test_a_saved_model_without_the_probability_outputs_is_refused(tmp_path, capsys):
    """Unchecked, predict fails with a KeyError and evaluate prints accuracies."""
    model = save_saved_model(foreign_function(heads(10, 19, probabilities=False)),
                             tmp_path / "other" / "1")
    expected = (f"{model}: not a keras_adder model: no output 'digit_probabilities'; "
                "no output 'sum_probabilities'")
    assert predict_refusal(capsys, tmp_path / "other") == expected
    assert evaluate_refusal(capsys, tmp_path / "other", tmp_path) == expected


def test_probability_widths_5_and_3_are_refused(tmp_path, capsys):
    """Unchecked, predict fails with "IndexError: index 7 is out of bounds"."""
    model = save_saved_model(foreign_function(heads(5, 3)), tmp_path / "narrow")
    assert predict_refusal(capsys, model) == (
        f"{model}: not a keras_adder model: output 'digit_probabilities' has shape [N, 5], "
        "not [N, 10]; output 'sum_probabilities' has shape [N, 3], not [N, 19]")


def test_widths_a_model_leaves_undeclared_are_checked_by_calling_it(tmp_path, capsys):
    import tensorflow as tf

    def undeclared(x):  # the widths are data-dependent: [N, ?] in the signature
        width = 5 + tf.cast(tf.reduce_sum(x) * 0, tf.int32)
        return heads(10, 19)(x) | {"digit_probabilities": tf.nn.softmax(x[:, :width])}

    model = save_saved_model(foreign_function(undeclared), tmp_path / "undeclared")
    assert predict_refusal(capsys, model) == (
        f"{model}: not a keras_adder model: output 'digit_probabilities' has shape [2, 5], "
        "not [2, 10]")


def test_a_model_that_fails_on_a_batch_is_refused_in_one_line(tmp_path, capsys):
    """Declared like this project's, but it takes one image at a time: the check's call
    of two images fails, and the runtime's multi-line message becomes one line."""
    import tensorflow as tf

    def one_at_a_time(x):
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(x)[0], 1, message="one image\nat a time")]):
            return heads(10, 19)(tf.identity(x))

    model = save_saved_model(foreign_function(one_at_a_time), tmp_path / "single")
    message = predict_refusal(capsys, model)
    assert message.startswith(f"{model}: not a keras_adder model: it fails on two blank "
                              "images with numbers 0 and 9 (the model refused the request: ")
    assert "one image" in message  # and refusal() found one line only


def test_a_saved_model_with_other_inputs_is_refused(tmp_path, capsys):
    model = save_saved_model(
        foreign_function(heads(10, 19), inputs=[("pixels", ([None, 784], "float32"))]),
        tmp_path / "pixels")
    assert predict_refusal(capsys, model) == (
        f"{model}: not a keras_adder model: unexpected input 'pixels'; no input 'image'; "
        "no input 'number'")


def test_an_onnx_file_with_other_output_names_is_refused(tmp_path, capsys):
    """Unchecked, predict fails with ONNX Runtime's own error."""
    import tf2onnx

    serve = foreign_function(scores)
    model = tmp_path / "other.onnx"
    tf2onnx.convert.from_function(serve, serve.input_signature, opset=17,
                                  output_path=str(model))
    expected = (f"{model}: not a keras_adder model: unexpected output 'scores'; "
                "no output 'digit'; no output 'sum'; no output 'digit_probabilities'; "
                "no output 'sum_probabilities'")
    assert predict_refusal(capsys, model) == expected
    assert evaluate_refusal(capsys, model, tmp_path) == expected


def test_a_litert_file_with_other_dtypes_and_widths_is_refused(tmp_path, capsys):
    import tensorflow as tf

    serve = foreign_function(heads(5, 19), inputs=[("image", ([None, 28, 28], "float32")),
                                                   ("number", NUMBER)])
    module = tf.Module()
    module.serve = serve
    model = tmp_path / "other.tflite"
    model.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module).convert())
    assert predict_refusal(capsys, model) == (
        f"{model}: not a keras_adder model: input 'image' is float32, not uint8; "
        "output 'digit_probabilities' has shape [N, 5], not [N, 10]")
    # Converted without a signature, a file has no input or output names at all.
    nameless = tmp_path / "nameless.tflite"
    nameless.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()]).convert())
    assert predict_refusal(capsys, nameless) == (
        f"{nameless}: not a keras_adder model: it has no signature (no named inputs and "
        "outputs)")


def one_input_keras_file(path):
    import keras

    image = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten()(image)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    total = keras.layers.Dense(19, activation="softmax", name="sum")(x)
    keras.Model(image, {"digit": digit, "sum": total}).save(path)
    return path


def test_a_keras_file_with_one_input_is_refused_by_evaluate_and_export(tmp_path, capsys):
    """Unchecked, evaluate fails with an IndexError."""
    model = one_input_keras_file(tmp_path / "one_input.keras")
    expected = f"{model}: not a keras_adder model: no input 'number'"
    assert evaluate_refusal(capsys, model, tmp_path) == expected
    assert refusal(capsys, export.main, [str(model), "--export-dir",
                                         str(tmp_path / "export")]) == expected
    assert not (tmp_path / "export").exists() and not (tmp_path / "saved_model").exists()


def test_a_keras_file_with_other_widths_is_refused(tmp_path):
    import keras

    from keras_adder.serving.formats import load_model

    image, number = keras.Input((28, 28, 1), name="image"), keras.Input((10,), name="number")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(image), number])
    outputs = {"digit": keras.layers.Dense(10, name="digit")(x),
               "sum": keras.layers.Dense(18, name="sum")(x)}
    path = tmp_path / "other.keras"
    keras.Model({"image": image, "number": number}, outputs).save(path)
    with pytest.raises(KerasAdderError) as error:
        load_model(path)
    assert str(error.value) == (f"{path}: not a keras_adder model: output 'sum' has "
                                "shape [N, 18], not [N, 19]")


def test_the_demo_refuses_a_foreign_model(tmp_path):
    from keras_adder.serving import gradio_app

    model = save_saved_model(foreign_function(heads(5, 3)), tmp_path / "narrow")
    with pytest.raises(KerasAdderError, match="not a keras_adder model: output "
                                              "'digit_probabilities' has shape"):
        gradio_app.build_app(model)


def test_the_projects_own_interface_passes_the_check(tmp_path):
    """The check is not so strict that it refuses this project's models: a signature
    made the way the export makes it, over an untrained model, in each format."""
    from keras_adder.model.architectures import build_model
    from keras_adder.serving import runtimes
    from keras_adder.serving.formats import load_model
    from keras_adder.serving.runtimes import raw_serving_function
    from keras_adder.serving.saved_model import make_serving_function

    import keras
    import tf2onnx

    model = build_model("compact")
    keras_path = tmp_path / "model.keras"
    model.save(keras_path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", make_serving_function(model))
    archive.write_out(str(tmp_path / "saved" / "1"), verbose=False)
    serve = raw_serving_function(model)
    tf2onnx.convert.from_function(serve, serve.input_signature, opset=17,
                                  output_path=str(tmp_path / "model.onnx"))
    (tmp_path / "model.tflite").write_bytes(runtimes._litert_bytes(model, None, None))
    for path in (keras_path, tmp_path / "saved", tmp_path / "model.onnx",
                 tmp_path / "model.tflite"):
        answer = load_model(path).call(np.zeros((3, 28, 28), np.uint8), np.arange(3))
        assert answer["sum_probabilities"].shape == (3, 19), path
