"""Export a trained `.keras` model as a versioned SavedModel for TensorFlow Serving.

    python -m keras_adder.export runs/<run>/best.keras            # next free version
    python -m keras_adder.export runs/<run>/best.keras --export-version 7

The signature, the checks and the atomic write are described in
`keras_adder.saved_model` and docs/serving.md.
"""

import argparse

from keras_adder import startup
from keras_adder.cli import positive_int, run
from keras_adder.constants import DEFAULT_EXPORT_DIR


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.export",
        description="Export a trained .keras model as a versioned SavedModel for "
        "TensorFlow Serving (raw uint8 image + int32 number in, digit and sum out).",
    )
    parser.add_argument("model", help="a .keras file written by training (best.keras)")
    parser.add_argument("--export-dir", default=DEFAULT_EXPORT_DIR,
                        help=f"SavedModel base path (default: {DEFAULT_EXPORT_DIR})")
    parser.add_argument("--export-version", type=positive_int,
                        help="version number to write (default: next free; an existing "
                        "one is refused)")
    parser.add_argument("--data-dir", help="MNIST folder for the post-export check "
                        "(default: $KERAS_ADDER_DATA, else Keras' download)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help never needs.
    from keras_adder import data, model, saved_model

    saved_model.free_version(args.export_dir, args.export_version)  # before the slow part
    keras_model = model.load_keras_model(args.model)
    _, (test_images, _) = data.load_mnist(args.data_dir)
    path = saved_model.export_saved_model(keras_model, args.export_dir, args.export_version,
                                          check_images=test_images[:64])
    print(f"SavedModel written to {path}")
    return path


if __name__ == "__main__":
    run(main)
