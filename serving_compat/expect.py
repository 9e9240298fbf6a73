"""Write the answers the project's own TensorFlow gives, for check.py to compare against.

Runs under the project's venv (it reads MNIST with keras_adder.data.pipeline). The answers come
from `tf.saved_model.load`, the path the project itself trusts; check.py then asks
other TensorFlow releases, through TF Serving's session loader, for the same ones.

    python -m serving_compat.expect saved_models/keras_adder/1 expected.npz
"""

import argparse
from pathlib import Path

import numpy as np

from keras_adder.cli import positive_int, run
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import write_atomically

SIGNATURE = "serving_default"
NUM_DIGITS = 10


def write_expected(model_path, images, path):
    """Pair `images` (uint8 [N, 28, 28]) with numbers 0, 1, ..., 9, 0, ...; save them
    and the SavedModel's four outputs for them to the .npz `path`."""
    import tensorflow as tf

    images = np.asarray(images, np.uint8)
    numbers = np.arange(len(images), dtype=np.int32) % NUM_DIGITS
    serve = tf.saved_model.load(str(model_path)).signatures[SIGNATURE]
    outputs = serve(image=tf.constant(images), number=tf.constant(numbers))
    arrays = {key: value.numpy() for key, value in outputs.items()}

    def save(staging):
        with open(staging, "wb") as file:  # a file object: savez adds no ".npz"
            np.savez(file, image=images, number=numbers, **arrays)

    write_atomically(path, save)


def main(argv=None):
    from keras_adder.data.pipeline import load_mnist

    parser = argparse.ArgumentParser(
        prog="python -m serving_compat.expect",
        description="Write a SavedModel's answers for the first MNIST test images "
        "to an .npz for serving_compat/check.py.")
    parser.add_argument("model", help="SavedModel version folder")
    parser.add_argument("out", help=".npz to write")
    parser.add_argument("--count", type=positive_int, default=32, help="test images (default: 32)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA)")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "saved_model.pb").is_file():
        raise KerasAdderError(f"{args.model} is not a SavedModel folder (no saved_model.pb)")
    _, (test_images, _) = load_mnist(args.data_dir)
    write_expected(args.model, test_images[:args.count], args.out)


if __name__ == "__main__":
    run(main)
