"""Export a trained `.keras` model as a versioned SavedModel for TensorFlow Serving.

    python -m keras_adder.export runs/<run>/best.keras            # next free version
    python -m keras_adder.export runs/<run>/best.keras --export-version 7

The signature, the checks and the atomic write are described in
`keras_adder.serving.saved_model` and docs/serving.md.
"""

import argparse
from pathlib import Path

from keras_adder.cli import positive_int, run
from keras_adder.core import startup
from keras_adder.core.constants import (
    DEFAULT_EXPORT_DIR,
    PROMOTION_POLICIES,
    RUNTIME_FORMATS,
)
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.recipe import RECIPES

EXPORT_FORMATS = ("saved_model", *RUNTIME_FORMATS)


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
    parser.add_argument("--promote", choices=PROMOTION_POLICIES, default="better",
                        help="better: serve the export only if neither head is less accurate "
                        "on the validation split than the highest version served now; "
                        "always: serve it anyway (default: better)")
    parser.add_argument("--candidate-dir",
                        help="where the SavedModel is written before promotion (default: "
                        "saved_model/ next to the .keras file)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="saved_model",
                        help="saved_model: a versioned SavedModel for TF Serving (default); "
                        "litert: a .tflite file; onnx: an .onnx file (both need "
                        "requirements-export.txt; see docs/serving.md for their inputs)")
    parser.add_argument("--output", help="the .tflite/.onnx file to write (default: next to "
                        "the export dir, e.g. saved_models/keras_adder.tflite)")
    parser.add_argument("--quantize", choices=["int8"],
                        help="litert/onnx: int8 weights and activations, calibrated on "
                        "training images")
    parser.add_argument("--data-dir", help="MNIST folder for the checks "
                        "(default: $KERAS_ADDER_DATA, else Keras' download)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.format == "saved_model" and (args.output or args.quantize):
        raise KerasAdderError("--output and --quantize are for --format litert or onnx")
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help never needs.
    from keras_adder.data import pipeline
    from keras_adder.serving import formats, promotion, runtimes, saved_model

    if args.format == "saved_model":
        saved_model.free_version(args.export_dir, args.export_version)  # before the slow part
    keras_model = formats.load_keras(args.model)  # refused unless this project's
    (train_images, train_labels), (test_images, _) = pipeline.load_mnist(args.data_dir)
    if args.format != "saved_model":
        path = runtimes.export_file(
            keras_model, args.format, args.output or Path(args.export_dir),
            check_images=test_images[:64], quantize=args.quantize,
            calibration_images=train_images)
        print(f"{args.format} model written to {path}")
        return path
    served, candidate, why = promotion.export_and_promote(
        keras_model, args.candidate_dir or Path(args.model).parent / "saved_model",
        args.export_dir, version=args.export_version, policy=args.promote,
        validation=pipeline.split_validation(train_images, train_labels)[1],
        seed=RECIPES["default"].seed, check_images=test_images[:64])
    print(f"SavedModel written to {candidate}; {why}")
    return served


if __name__ == "__main__":
    run(main)
