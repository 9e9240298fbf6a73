"""Ask an exported SavedModel for the digit and the sum: images in, a table out.

    python -m keras_adder.predict three.png --number 4
    python -m keras_adder.predict digits.npy --number 1 2 3 --json
    python -m keras_adder.predict --mnist-test-index 0 1 2 --number 5 --show out.png

The model is called exactly as TensorFlow Serving calls it, so this checks the exported
artifact rather than the training code. A SavedModel with the `serving_image` signature
gets each image file's bytes, the file's own when TensorFlow's decoders read it as the
file means, else a PNG of the upright grey picture that `keras_adder.data.pictures`
read (EXIF-rotated photos, TIFF, WebP, ...: `pictures.read_picture`), and prepares them
in its graph; .npy arrays, --mnist-test-index, an explicit --prepare/--no-prepare, and
LiteRT/ONNX models go through `serving_default` with raw pixels, image files prepared
here as MNIST was (`keras_adder.data.preparation`, run eagerly by
`keras_adder.data.pictures.prepare_digit`). Answers below UNSURE_BELOW are flagged.
`--write-examples DIR` writes TF Serving REST request bodies for the chosen inputs
instead of predicting (see docs/serving.md).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from keras_adder.cli import parse_integers, run
from keras_adder.core import startup
from keras_adder.core.constants import DEFAULT_EXPORT_DIR, NUM_DIGITS, TEST_SIZE
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import check_output_file
from keras_adder.data.pictures import UNSURE_BELOW, is_unsure, load_npy, read_picture
from keras_adder.reports import plots
from keras_adder.serving.rest import write_request_examples

MAX_SHOWN = 100  # the --show picture stays readable


def read_files(files):
    """Image files and .npy arrays, checked and read: (sources, items), an item being a
    uint8 [28, 28] image (a .npy array's) or a pictures.Picture (an image file's)."""
    sources, items = [], []
    for name in files:
        if Path(name).suffix.lower() == ".npy":
            array = load_npy(name)
            sources += [name] if len(array) == 1 else [f"{name}[{i}]" for i in range(len(array))]
            items += list(array)
        else:
            sources.append(name)
            items.append(read_picture(name))
    return sources, items


def pair_numbers(numbers, count):
    """Numbers 0-9 → int32 [count]: one number for every image, or one per image."""
    if count == 0:
        raise KerasAdderError("no images: give image/.npy files or --mnist-test-index")
    numbers = list(numbers)
    if len(numbers) == 1:
        numbers = numbers * count
    if len(numbers) != count:
        raise KerasAdderError(
            f"{count} image(s) but {len(numbers)} numbers: give one number for all "
            "images or one per image"
        )
    return np.asarray(numbers, np.int32)


def prediction_rows(sources, numbers, labels, outputs):
    """One dict per image: what went in, what came out, and the probability of each answer."""
    rows = []
    for i, source in enumerate(sources):
        digit, total = int(outputs["digit"][i]), int(outputs["sum"][i])
        row = {
            "source": source,
            "number": int(numbers[i]),
            "digit": digit,
            "digit_probability": float(outputs["digit_probabilities"][i, digit]),
            "sum": total,
            "sum_probability": float(outputs["sum_probabilities"][i, total]),
        }
        row["unsure"] = is_unsure(min(row["digit_probability"], row["sum_probability"]))
        if labels[i] is not None:
            row["label"] = labels[i]
        rows.append(row)
    return rows


def format_table(rows):
    """The rows as an aligned text table (a label column when any label is known)."""
    with_labels = any("label" in row for row in rows)
    header = ["image", "number", "digit", "p(digit)", "sum", "p(sum)", "note"]
    if with_labels:
        header.insert(-1, "label")
    lines = [header]
    for row in rows:
        cells = [row["source"], str(row["number"]), str(row["digit"]),
                 f"{row['digit_probability']:.3f}", str(row["sum"]),
                 f"{row['sum_probability']:.3f}"]
        if with_labels:
            cells.append(str(row.get("label", "")))
        cells.append("unsure" if row["unsure"] else "")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def _check_picture_path(path):
    path = Path(path)
    check_output_file(path, "--show")
    formats = plots.picture_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        raise KerasAdderError(
            f"--show {path}: unknown picture type {path.suffix!r} "
            f"(use one of: {', '.join(sorted(formats))})"
        )


def save_picture(path, images, rows):
    """The input images, each titled with its number, the answers and their probabilities
    (the first MAX_SHOWN; a known label marks wrong answers in red)."""
    labels = [row.get("label") for row in rows]
    return plots.plot_prediction_grid(
        images, [row["number"] for row in rows], [row["digit"] for row in rows],
        [row["sum"] for row in rows], path,
        labels=labels if any(label is not None for label in labels) else None,
        probabilities=[(row["digit_probability"], row["sum_probability"]) for row in rows],
        columns=10, limit=MAX_SHOWN,
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.predict",
        description="Predict the digit in each image and its sum with a number, using an "
        "exported SavedModel's serving signatures as TF Serving serves them: image files "
        "go to serving_image as the file's bytes (a PNG of the upright picture for "
        "EXIF-rotated photos, TIFF, WebP, ...), which prepares them as MNIST was (the ink "
        "found against the paper, cropped, fitted into 20x20 and centred in 28x28); .npy "
        "arrays, MNIST images, --prepare/--no-prepare and LiteRT/ONNX models go to "
        f"serving_default as raw pixels. Answers below p={UNSURE_BELOW} are marked unsure.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="PNG/JPEG/... image files, or .npy arrays [28,28] or [N,28,28]")
    parser.add_argument("--mnist-test-index", nargs="+", default=[], metavar="I",
                        help="also use these MNIST test images (0-9999)")
    parser.add_argument("--number", nargs="+", required=True, metavar="N",
                        help="the number 0-9 to add: one for all images, or one per image")
    parser.add_argument("--model", default=DEFAULT_EXPORT_DIR,
                        help="SavedModel directory, a base path of integer versions (the "
                        "highest is used), or a .tflite / .onnx file from "
                        f"`python -m keras_adder.export --format`; default: {DEFAULT_EXPORT_DIR}")
    parser.add_argument("--data-dir", help="MNIST folder for --mnist-test-index "
                        "(default: $KERAS_ADDER_DATA, else Keras' download)")
    parser.add_argument("--prepare", action=argparse.BooleanOptionalAction,
                        help="MNIST's preparation of image files (crop to the ink, fit "
                        "20x20, centre of mass at the centre): --prepare always, "
                        "--no-prepare never (28x28 MNIST-style files only); default: "
                        "unless the file already looks like an MNIST image, decided in "
                        "the graph of a SavedModel with serving_image (either flag "
                        "prepares here and sends raw pixels). .npy arrays are used as "
                        "they are")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table")
    parser.add_argument("--show", metavar="PICTURE",
                        help="also save a picture of the inputs with their predictions "
                        "(e.g. out.png)")
    parser.add_argument("--write-examples", metavar="DIR",
                        help="instead of predicting, write TF Serving REST request bodies "
                        "for these inputs: DIR/instances.json (row form) and DIR/inputs.json "
                        "(columnar form)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Everything the user gave is checked before anything is loaded or written.
    numbers = parse_integers(args.number, "number", 0, NUM_DIGITS - 1)
    indices = parse_integers(args.mnist_test_index, "MNIST test index", 0, TEST_SIZE - 1)
    if args.write_examples and not Path(args.write_examples).is_dir():
        raise KerasAdderError(f"--write-examples {args.write_examples}: folder does not exist")
    for name in ("instances.json", "inputs.json") if args.write_examples else ():
        check_output_file(Path(args.write_examples) / name, "--write-examples")
    if args.show:
        _check_picture_path(args.show)
    sources, items = read_files(args.images)
    numbers = pair_numbers(numbers, len(items) + len(indices))
    labels = [None] * len(items)
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which a bad input never needs.
    from keras_adder.data import pipeline
    from keras_adder.serving.clients import answer_items, prepared_here
    from keras_adder.serving.formats import load_model

    if indices:
        _, (test_images, test_labels) = pipeline.load_mnist(args.data_dir)
        sources += [f"mnist-test[{i}]" for i in indices]
        items += list(test_images[indices])
        labels += [int(test_labels[i]) for i in indices]
    if args.write_examples:
        images = np.array([prepared_here(source, item, args.prepare)
                           for source, item in zip(sources, items)], np.uint8)
        for path in write_request_examples(args.write_examples, images, numbers):
            print(f"wrote {path}")
        return None
    model = load_model(args.model)
    images, outputs, signatures = answer_items(model, sources, items, numbers, args.prepare)
    rows = prediction_rows(sources, numbers, labels, outputs)
    for row, signature in zip(rows, signatures):
        row["signature"] = signature
    if args.show:
        save_picture(args.show, images, rows)
    if args.json:
        print(json.dumps({"model": str(model.path), "predictions": rows}, indent=2))
    else:
        print(f"model: {model.path}")
        print(format_table(rows))
    return rows


if __name__ == "__main__":
    run(main)
