"""Ask an exported SavedModel for the digit and the sum: images in, a table out.

    python -m keras_adder.predict three.png --number 4
    python -m keras_adder.predict digits.npy --number 1 2 3 --json
    python -m keras_adder.predict --mnist-test-index 0 1 2 --number 5 --show out.png

The model is called through its `serving_default` signature, exactly as TensorFlow
Serving calls it, so this checks the exported artifact rather than the training code.

Images:
- image files (PNG, JPEG, anything Pillow reads), any size: transparent pixels count
  as white, the picture becomes grayscale, and it is inverted when its background is
  light, because MNIST digits are light on a dark background. The rule: if the mean of
  the outermost ring of pixels (first and last row and column) is above 127 of 255,
  the background is light and the image is inverted. It is then scaled, keeping its
  aspect ratio, to fit 28x28 and padded with black. Like MNIST, the digit should
  roughly fill the middle of the picture.
- `.npy` arrays of shape [28, 28] or [N, 28, 28] with values 0-255, already in MNIST's
  convention (0 = background): used as they are.
- `--mnist-test-index I [J ...]`: images of the MNIST test set (their labels are shown).

`--write-examples DIR` writes TF Serving REST request bodies for the chosen inputs
instead of predicting (see the README, "Serving with TensorFlow Serving").
"""

import argparse
import json
from pathlib import Path

import numpy as np

from keras_adder.cli import KerasAdderError, write_atomically

# Importing TensorFlow writes log lines to stderr that no setting silences, so the
# modules that need it are imported only after the user's input has been checked:
# a bad file or number then gives exactly one line on stderr.
MAX_NUMBER = 9  # keras_adder.data.NUM_DIGITS - 1 (a test keeps them in step)
DEFAULT_MODEL = "saved_models/keras_adder"
LIGHT_BACKGROUND = 127  # border mean above this: a dark digit on a light background
MAX_SHOWN = 100  # the --show picture stays readable
BATCH_SIZE = 1024


# --- Reading inputs --------------------------------------------------------------------


def parse_integers(texts, what, low, high=None):
    """Command-line words → ints in [low, high], with one clear error for the first bad one."""
    values = []
    for text in texts:
        try:
            value = int(text)
        except ValueError:
            raise KerasAdderError(f"{what} {text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f"outside {low}-{high}" if high is not None else f"below {low}"
            raise KerasAdderError(f"{what} {value} is {allowed}")
        values.append(value)
    return values


def _readable_file(path):
    if not path.exists():
        raise KerasAdderError(f"{path}: no such file")
    if not path.is_file():
        raise KerasAdderError(f"{path}: not a file")


def load_image_file(path):
    """An image file of any size and mode → uint8 [28, 28], light digit on dark."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _readable_file(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGBA")
    except UnidentifiedImageError:
        raise KerasAdderError(f"{path}: not an image (Pillow cannot identify it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Truncated or corrupt data, or a picture too big to be a digit.
        raise KerasAdderError(f"{path}: unreadable image ({error})") from None
    # Transparent pixels would otherwise show whatever colour they happen to store.
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    gray = np.asarray(Image.alpha_composite(white, image).convert("L"))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > LIGHT_BACKGROUND:
        gray = 255 - gray
    fitted = ImageOps.pad(Image.fromarray(gray), (28, 28),
                          method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(fitted, dtype=np.uint8)


def load_npy(path):
    """A .npy array [28, 28] or [N, 28, 28] of 0-255 values → uint8 [N, 28, 28]."""
    path = Path(path)
    _readable_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise KerasAdderError(f"{path}: not a readable .npy array ({error})") from None
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise KerasAdderError(
            f"{path}: array shape {array.shape} is not [28, 28] or [N, 28, 28]"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise KerasAdderError(f"{path}: array dtype {array.dtype} is not numeric")
    if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0
                           and array.max() <= 255):
        raise KerasAdderError(f"{path}: values must be 0-255 (MNIST pixels)")
    return np.rint(array).astype(np.uint8)


def load_files(files):
    """Images from image files and .npy arrays: (sources, uint8 [N, 28, 28])."""
    sources, batches = [], [np.zeros((0, 28, 28), np.uint8)]
    for name in files:
        path = Path(name)
        if path.suffix.lower() == ".npy":
            array = load_npy(path)
            sources += [name] if len(array) == 1 else [f"{name}[{i}]" for i in range(len(array))]
        else:
            array = load_image_file(path)[np.newaxis]
            sources.append(name)
        batches.append(array)
    return sources, np.concatenate(batches)


def load_mnist_test_images(indices, data_dir=None):
    """MNIST test images and labels at `indices`: (sources, uint8 [N, 28, 28], labels)."""
    from keras_adder.data import load_mnist

    _, (test_images, test_labels) = load_mnist(data_dir)
    for i in indices:
        if i >= len(test_images):
            raise KerasAdderError(
                f"MNIST test index {i} is outside 0-{len(test_images) - 1}"
            )
    return ([f"mnist-test[{i}]" for i in indices], test_images[list(indices)],
            [int(test_labels[i]) for i in indices])


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


# --- The model -------------------------------------------------------------------------


def resolve_saved_model(path):
    """A SavedModel directory, or a base path of versions → its highest version."""
    from keras_adder.export import existing_versions

    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = existing_versions(path)
    if not versions:
        raise KerasAdderError(
            f"{path}: no SavedModel there (neither saved_model.pb nor integer version "
            "folders)"
        )
    latest = path / str(versions[-1])
    if not (latest / "saved_model.pb").is_file():
        raise KerasAdderError(f"{latest}: highest version has no saved_model.pb")
    return latest


def load_saved_model(path):
    """(version path, loaded SavedModel) for a SavedModel dir or base path; checks the signature."""
    import tensorflow as tf

    from keras_adder.export import SIGNATURE

    path = resolve_saved_model(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TF raises many types for a broken directory
        raise KerasAdderError(f"{path}: not a loadable SavedModel ({error})") from None
    if SIGNATURE not in loaded.signatures:
        raise KerasAdderError(f"{path}: has no {SIGNATURE!r} signature")
    inputs = sorted(loaded.signatures[SIGNATURE].structured_input_signature[1])
    if inputs != ["image", "number"]:
        raise KerasAdderError(
            f"{path}: its {SIGNATURE!r} signature takes {', '.join(inputs)}, "
            "not image and number: not a keras_adder model"
        )
    return path, loaded


def run_signature(loaded, images, numbers, batch_size=BATCH_SIZE):
    """Call the serving signature of a loaded SavedModel in batches; numpy outputs."""
    import tensorflow as tf

    from keras_adder.export import SIGNATURE

    serve = loaded.signatures[SIGNATURE]
    parts = []
    for start in range(0, len(images), batch_size):
        try:
            outputs = serve(image=tf.constant(images[start:start + batch_size], tf.uint8),
                            number=tf.constant(numbers[start:start + batch_size], tf.int32))
        except tf.errors.InvalidArgumentError as error:
            raise KerasAdderError(f"the model refused the request: {error.message}") from None
        parts.append({name: value.numpy() for name, value in outputs.items()})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


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
        if labels[i] is not None:
            row["label"] = labels[i]
        rows.append(row)
    return rows


# --- Output ----------------------------------------------------------------------------


def format_table(rows):
    """The rows as an aligned text table (a label column when any label is known)."""
    with_labels = any("label" in row for row in rows)
    header = ["image", "number", "digit", "p(digit)", "sum", "p(sum)"]
    if with_labels:
        header.append("label")
    lines = [header]
    for row in rows:
        cells = [row["source"], str(row["number"]), str(row["digit"]),
                 f"{row['digit_probability']:.3f}", str(row["sum"]),
                 f"{row['sum_probability']:.3f}"]
        if with_labels:
            cells.append(str(row.get("label", "")))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def _check_picture_path(path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    if not path.parent.is_dir():
        raise KerasAdderError(f"--show {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise KerasAdderError(f"--show {path}: is a directory")
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise KerasAdderError(
            f"--show {path}: unknown picture type {path.suffix!r} "
            f"(use one of: {', '.join(sorted(formats))})"
        )


def save_picture(path, images, rows):
    """The input images, each titled with its number, the answers and their probabilities
    (the first MAX_SHOWN; a known label marks wrong answers in red)."""
    from keras_adder import plots

    labels = [row.get("label") for row in rows]
    return plots.plot_prediction_grid(
        images, [row["number"] for row in rows], [row["digit"] for row in rows],
        [row["sum"] for row in rows], path,
        labels=labels if any(label is not None for label in labels) else None,
        probabilities=[(row["digit_probability"], row["sum_probability"]) for row in rows],
        columns=10, limit=MAX_SHOWN,
    )


def request_bodies(images, numbers):
    """TF Serving REST :predict bodies for these inputs: (row form, columnar form)."""
    rows = {"instances": [{"number": int(number), "image": image.tolist()}
                          for image, number in zip(images, numbers)]}
    columns = {"inputs": {"number": numbers.tolist(), "image": images.tolist()}}
    return rows, columns


def _dump_request(body):
    # One image row per line, so the digit can be seen in the file.
    text = json.dumps(body)
    return text.replace("], [", "],\n  [") + "\n"


def write_request_examples(out_dir, images, numbers):
    """Write `instances.json` (row form) and `inputs.json` (columnar) into the folder
    `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    paths = []
    for name, body in zip(("instances.json", "inputs.json"), request_bodies(images, numbers)):
        path = out_dir / name
        write_atomically(path, lambda staging: staging.write_text(_dump_request(body)))
        paths.append(path)
    return paths


# --- Command line ----------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.predict",
        description="Predict the digit in each image and its sum with a number, using an "
        "exported SavedModel's serving signature. Image files of any size are made 28x28 "
        "grayscale; one whose border pixels average above 127 (a light background) is "
        "inverted to MNIST's light-on-dark.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="PNG/JPEG/... image files, or .npy arrays [28,28] or [N,28,28]")
    parser.add_argument("--mnist-test-index", nargs="+", default=[], metavar="I",
                        help="also use these MNIST test images (0-9999)")
    parser.add_argument("--number", nargs="+", required=True, metavar="N",
                        help="the number 0-9 to add: one for all images, or one per image")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="SavedModel directory, or a base path of integer versions (the "
                        f"highest is used); default: {DEFAULT_MODEL}")
    parser.add_argument("--data-dir", help="MNIST folder for --mnist-test-index "
                        "(default: $KERAS_ADDER_DATA, else Keras' download)")
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
    numbers = parse_integers(args.number, "number", 0, MAX_NUMBER)
    indices = parse_integers(args.mnist_test_index, "MNIST test index", 0)
    if args.write_examples and not Path(args.write_examples).is_dir():
        raise KerasAdderError(f"--write-examples {args.write_examples}: folder does not exist")
    if args.show:
        _check_picture_path(args.show)
    sources, images = load_files(args.images)
    numbers = pair_numbers(numbers, len(images) + len(indices))
    labels = [None] * len(images)
    if indices:
        mnist_sources, mnist_images, mnist_labels = load_mnist_test_images(indices, args.data_dir)
        sources += mnist_sources
        images = np.concatenate([images, mnist_images])
        labels += mnist_labels
    if args.write_examples:
        for path in write_request_examples(args.write_examples, images, numbers):
            print(f"wrote {path}")
        return None
    model_path, loaded = load_saved_model(args.model)
    rows = prediction_rows(sources, numbers, labels, run_signature(loaded, images, numbers))
    if args.show:
        save_picture(args.show, images, rows)
    if args.json:
        print(json.dumps({"model": str(model_path), "predictions": rows}, indent=2))
    else:
        print(f"model: {model_path}")
        print(format_table(rows))
    return rows


if __name__ == "__main__":
    from keras_adder.cli import run

    run(main)
