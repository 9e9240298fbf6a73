"""Export a trained model as a SavedModel that TensorFlow Serving can load and trust.

The `serving_default` signature takes raw inputs and does the preprocessing itself:

    inputs:  image  uint8 [N, 28, 28]  (MNIST convention: 0 = background)
             number int32 [N]          (0-9)
    outputs: digit int32 [N], sum int32 [N],
             digit_probabilities float32 [N, 10], sum_probabilities float32 [N, 19]

A number outside 0-9, a length mismatch between image and number, or a tensor of the
wrong shape fails the call with InvalidArgument (HTTP 400 in TF Serving) whose message
says what is wrong; a wrong dtype is refused by the signature; an empty batch gives
empty outputs.

Versions are integers under the base path, the layout TF Serving polls. A version is
written into a hidden temporary sibling, loaded back and checked against the Keras
model, and only then renamed to its number: a server never sees a half-written model,
and an existing version is never touched.

    python -m keras_adder.export runs/<run>/best.keras            # next free version
"""

import argparse
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_adder.cli import KerasAdderError
from keras_adder.data import NUM_DIGITS, NUM_SUMS, model_inputs

SIGNATURE = "serving_default"


def existing_versions(base_dir):
    """Integer version numbers present under a SavedModel base path."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit())


def free_version(export_dir, version=None):
    """`version` if it is not taken under `export_dir` (else an error); by default the
    next free one. Call it before training, so that a taken version fails early."""
    versions = existing_versions(export_dir)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if (Path(export_dir) / str(version)).exists():
        raise KerasAdderError(
            f"export version {Path(export_dir) / str(version)} already exists; "
            "not overwriting it"
        )
    return version


def make_serving_function(model):
    """The raw-input signature: validate, preprocess, run the model, name the outputs."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 28, 28], tf.uint8, name="image"),
            tf.TensorSpec([None], tf.int32, name="number"),
        ]
    )
    def serve(image, number):
        # A server feeds tensors of any shape into a signature: enforce them in-graph.
        image = tf.ensure_shape(image, [None, 28, 28])
        number = tf.ensure_shape(number, [None])
        checks = [
            tf.debugging.assert_equal(
                tf.shape(image)[0], tf.shape(number)[0],
                message="image and number must have the same batch size",
            ),
            tf.debugging.assert_greater_equal(
                number, 0, message="number must be an integer from 0 to 9"
            ),
            tf.debugging.assert_less(
                number, NUM_DIGITS, message="number must be an integer from 0 to 9"
            ),
        ]

        def predict():
            probabilities = model(model_inputs(image, number), training=False)
            return (tf.cast(probabilities["digit"], tf.float32),
                    tf.cast(probabilities["sum"], tf.float32))

        def nothing():
            return tf.zeros([0, NUM_DIGITS]), tf.zeros([0, NUM_SUMS])

        with tf.control_dependencies(checks):
            # TF's fused convolution + BatchNorm fails on an empty batch with a shape
            # error, so an empty request skips the model.
            digit_probabilities, sum_probabilities = tf.cond(
                tf.shape(number)[0] > 0, predict, nothing
            )
        return {
            "digit": tf.argmax(digit_probabilities, axis=-1, output_type=tf.int32),
            "sum": tf.argmax(sum_probabilities, axis=-1, output_type=tf.int32),
            "digit_probabilities": digit_probabilities,
            "sum_probabilities": sum_probabilities,
        }

    return serve


def _check_export(path, model, images, numbers):
    """Load the written SavedModel; compare its answers with the Keras model's."""
    serve = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    served = serve(image=tf.constant(images, tf.uint8), number=tf.constant(numbers, tf.int32))
    expected = model(model_inputs(images, numbers), training=False)
    for head in ("digit", "sum"):
        got = served[f"{head}_probabilities"].numpy()
        if not np.allclose(got, np.asarray(expected[head]), atol=1e-5):
            raise RuntimeError(f"exported {head} probabilities differ from the Keras model's")
        if not np.array_equal(served[head].numpy(), got.argmax(axis=-1)):
            raise RuntimeError(f"exported {head} classes disagree with their probabilities")
    empty = serve(image=tf.zeros([0, 28, 28], tf.uint8), number=tf.zeros([0], tf.int32))
    if any(value.shape[0] != 0 for value in empty.values()):
        raise RuntimeError("exported signature does not answer an empty batch with nothing")
    # The refusals (number 10, ...) are covered by tests, not here: a refused call makes
    # TensorFlow log an alarming "rendezvous is aborting" line in every training run.


def export_saved_model(model, export_dir, version=None, *, check_images):
    """Write `model` to `<export_dir>/<version>/` atomically; return that path.

    `version` defaults to the next free integer; an existing one is refused.
    `check_images` (uint8 [N, 28, 28], e.g. a few test images, each paired with a
    number) are run through the written SavedModel before it is given its number.
    """
    import keras

    export_dir = Path(export_dir)
    version = free_version(export_dir, version)
    final = export_dir / str(version)
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create export directory {export_dir} "
                              f"({error.strerror})") from None
    # Non-numeric, so TF Serving ignores it while it is being written.
    staging = export_dir / f".staging-{version}-{os.getpid()}"
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, make_serving_function(model))
        archive.write_out(str(staging), verbose=False)
        check_numbers = np.arange(len(check_images), dtype=np.int32) % NUM_DIGITS
        _check_export(staging, model, np.asarray(check_images, np.uint8), check_numbers)
        # rename() refuses a non-empty target, so a version that appeared meanwhile
        # is not replaced either.
        staging.rename(final)
    except BaseException as error:
        # Also on Ctrl-C: no half-written directory is left behind.
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, KerasAdderError) or not isinstance(error, Exception):
            raise
        raise KerasAdderError(f"export to {final} failed, nothing was written: {error}") from error
    return final


def load_keras_model(path):
    """Load a `.keras` file, with a clear error when it is missing or not a model."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise KerasAdderError(f"model file {path} does not exist")
    # Keras reports a damaged archive as "File not found"; say what is really wrong.
    if not zipfile.is_zipfile(path):
        raise KerasAdderError(f"{path}: not a .keras model (not a zip archive; corrupt?)")
    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise KerasAdderError(f"{path}: not a readable .keras model ({error})") from None


def main(argv=None):
    from keras_adder.cli import positive_int
    from keras_adder.data import load_mnist

    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.export",
        description="Export a trained .keras model as a versioned SavedModel for "
        "TensorFlow Serving (raw uint8 image + int32 number in, digit and sum out).",
    )
    parser.add_argument("model", help="a .keras file written by training (best.keras)")
    parser.add_argument("--export-dir", default="saved_models/keras_adder",
                        help="SavedModel base path (default: saved_models/keras_adder)")
    parser.add_argument("--export-version", type=positive_int,
                        help="version number to write (default: next free; an existing "
                        "one is refused)")
    parser.add_argument("--data-dir", help="MNIST folder for the post-export check "
                        "(default: $KERAS_ADDER_DATA, else Keras' download)")
    args = parser.parse_args(argv)
    free_version(args.export_dir, args.export_version)  # fail before the slow part
    model = load_keras_model(args.model)
    _, (test_images, _) = load_mnist(args.data_dir)
    path = export_saved_model(
        model, args.export_dir, args.export_version,
        check_images=test_images[:64]
    )
    print(f"SavedModel written to {path}")
    return path


if __name__ == "__main__":
    from keras_adder.cli import run

    run(main)
