"""The `serving_image` signature measured: its speed beside `serving_default`'s, its
answers for MNIST test images sent as PNG files against `serving_default`'s on the raw
pixels, and its accuracy on handwritten digits that are not MNIST (a folder written by
`python tests/handwriting.py DIR`: DIR/labels.csv lists set, path, label).

Both signatures are called on one `tf.saved_model.load` of the SavedModel, the same way
(tf.constant in, numpy out), so their ratio compares the signatures, not two loaders.
Encoding the PNGs is the client's work and is not timed.
"""

import csv
import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS, SIGNATURE
from keras_adder.core.errors import KerasAdderError
from keras_adder.measurements.peak import durations
from keras_adder.serving.image_signature import IMAGE_SIGNATURE, MAX_PICTURES
from keras_adder.serving.saved_model import resolve_saved_model

ENLARGED = 4 * IMAGE_SIZE  # as a person's drawing: Pillow's default (bicubic) resize
SPEED_BATCHES = (1, MAX_PICTURES)
LABELS_FILE = "labels.csv"
LABELS_COLUMNS = ["set", "path", "label"]


def png_files(images, side=IMAGE_SIZE):
    """uint8 [N, 28, 28] MNIST images → their PNG files' bytes, resized to `side`."""
    files = []
    for image in images:
        picture = Image.fromarray(np.asarray(image, np.uint8))
        if side != IMAGE_SIZE:
            picture = picture.resize((side, side))
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


class Signatures:
    """Both signatures of one SavedModel (a version folder or a base path), numpy out."""

    def __init__(self, path):
        self.path = resolve_saved_model(path)
        loaded = tf.saved_model.load(str(self.path))
        missing = {SIGNATURE, IMAGE_SIGNATURE} - set(loaded.signatures)
        if missing:
            raise KerasAdderError(f"{self.path}: no {' or '.join(sorted(missing))} signature "
                                  "(exported before serving_image existed? export it again)")
        self._loaded = loaded  # the signatures need the object that holds the variables
        self._default = loaded.signatures[SIGNATURE]
        self._image = loaded.signatures[IMAGE_SIGNATURE]

    def raw(self, images, numbers):
        out = self._default(image=tf.constant(images, tf.uint8),
                            number=tf.constant(numbers, tf.int32))
        return {key: value.numpy() for key, value in out.items()}

    def pictures(self, files, numbers):
        out = self._image(picture=tf.constant(files, tf.string),
                          number=tf.constant(numbers, tf.int32))
        return {key: value.numpy() for key, value in out.items()}

    def answers(self, call, inputs, numbers):
        """(digit, sum) of `call` (raw or pictures) for all `inputs`, in requests of
        serving_image's largest size."""
        parts = [call(inputs[start:start + MAX_PICTURES], numbers[start:start + MAX_PICTURES])
                 for start in range(0, len(inputs), MAX_PICTURES)]
        return (np.concatenate([part["digit"] for part in parts]),
                np.concatenate([part["sum"] for part in parts]))


def speed(signatures, images, *, rounds, calls):
    """Images/s of serving_default on raw pixels and of serving_image on the same images
    as 4x-enlarged PNGs, at batch 1 and 64: each round times both signatures at both
    sizes one after the other (so a busy machine slows them alike); medians of the
    rounds. `calls`: {batch: calls per timed window}."""
    files = png_files(images[:MAX_PICTURES], ENLARGED)
    rates = {(name, batch): [] for name in ("raw", "pictures") for batch in SPEED_BATCHES}
    requests = {}
    for batch in SPEED_BATCHES:
        numbers = np.arange(batch, dtype=np.int32) % NUM_DIGITS
        requests["raw", batch] = (signatures.raw, images[:batch], numbers)
        requests["pictures", batch] = (signatures.pictures, files[:batch], numbers)
    for call, inputs, numbers in requests.values():  # warm-up: tracing, first allocations
        call(inputs, numbers)
    for _ in range(rounds):
        for (name, batch), (call, inputs, numbers) in requests.items():
            seconds = sum(durations(lambda: call(inputs, numbers), calls[batch]))
            rates[name, batch].append(batch * calls[batch] / seconds)
    figures = {}
    for batch in SPEED_BATCHES:
        raw, pictures = (float(np.median(rates[name, batch])) for name in ("raw", "pictures"))
        figures[f"batch_{batch}"] = {"serving_default_images_per_s": raw,
                                     "serving_image_images_per_s": pictures,
                                     "image_over_default": pictures / raw}
    figures["rounds"] = rounds
    return figures


def parity(signatures, images, labels):
    """serving_image's answers for the MNIST `images` as PNG files (as they are and 4x
    enlarged) against serving_default's on their raw pixels (numbers i % 10): the share
    of the same (digit, sum) and each one's digit accuracy."""
    numbers = np.arange(len(images), dtype=np.int32) % NUM_DIGITS
    digit, total = signatures.answers(signatures.raw, images, numbers)
    figures = {"pairs": len(images), "raw_digit_accuracy": float(np.mean(digit == labels))}
    for name, side in (("png_as_is", IMAGE_SIZE), ("png_enlarged", ENLARGED)):
        got_digit, got_sum = signatures.answers(signatures.pictures, png_files(images, side),
                                                numbers)
        same = (got_digit == digit) & (got_sum == total)
        figures[name] = {"same_answers": float(np.mean(same)),
                         "differing_pairs": int(np.sum(~same)),
                         "digit_accuracy": float(np.mean(got_digit == labels))}
    return figures


def read_picture_sets(folder):
    """{set: [(path, label)]} from `folder`/labels.csv, every file checked to exist, so
    that a wrong folder is refused before a long benchmark starts."""
    table = Path(folder) / LABELS_FILE
    try:
        with open(table, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError) as error:
        raise KerasAdderError(f"--pictures {folder}: cannot read {table} ({error}); make the "
                              "folder with `python tests/handwriting.py DIR`") from None
    if not rows or rows[0] != LABELS_COLUMNS or len(rows) < 2:
        raise KerasAdderError(f"--pictures {folder}: {table} must start with the header "
                              f"{','.join(LABELS_COLUMNS)} and list at least one picture")
    sets = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[2].isdigit() or int(row[2]) >= NUM_DIGITS:
            raise KerasAdderError(f"--pictures {folder}: {table} line {line} is not "
                                  "set,path,label with a label 0-9")
        if not Path(row[1]).is_file():
            raise KerasAdderError(f"--pictures {folder}: {table} line {line} names "
                                  f"{row[1]}, which is not a file")
        sets.setdefault(row[0], []).append((Path(row[1]), int(row[2])))
    return sets


def set_accuracy(signatures, rows):
    """Digit and sum accuracy of serving_image on one set's files, sent as they are
    (numbers (i * 7 + 3) % 10, all of 0-9 spread over the labels, as
    tests/handwriting.py adds them); a blank answer (-1) and a refused picture count as
    wrong, and their shares are given too."""
    files = [path.read_bytes() for path, _ in rows]
    labels = np.array([label for _, label in rows])
    numbers = (np.arange(len(rows), dtype=np.int32) * 7 + 3) % NUM_DIGITS
    digit, total = np.full(len(rows), -2), np.full(len(rows), -2)  # -2: refused

    def answer(part):
        try:
            out = signatures.pictures(files[part], numbers[part])
        except tf.errors.InvalidArgumentError:
            return False
        digit[part], total[part] = out["digit"], out["sum"]
        return True

    for start in range(0, len(rows), MAX_PICTURES):
        stop = min(start + MAX_PICTURES, len(rows))
        if not answer(slice(start, stop)):  # one refused picture fails its request:
            for i in range(start, stop):  # ask for each alone
                answer(slice(i, i + 1))
    return {"pictures": len(rows), "digit_accuracy": float(np.mean(digit == labels)),
            "sum_accuracy": float(np.mean(total == labels + numbers)),
            "no_ink": float(np.mean(digit == -1)), "refused": float(np.mean(digit == -2))}


def settings(quick):
    """Timing rounds and calls per window, MNIST pairs (None: all) and pictures per
    non-MNIST set (None: all)."""
    if quick:  # every code path, nothing worth quoting
        return dict(rounds=2, calls={1: 2, MAX_PICTURES: 1}, pairs=2 * MAX_PICTURES,
                    set_limit=4)
    return dict(rounds=9, calls={1: 50, MAX_PICTURES: 3}, pairs=None, set_limit=None)


def measure_image_signature(path, test_images, test_labels, *, pictures_dir=None, quick=False):
    """Every figure of this module for the SavedModel at `path`: {"saved_model", "speed",
    "mnist_png", "picture_sets": {set: figures} (empty without `pictures_dir`)}."""
    chosen = settings(quick)
    sets = read_picture_sets(pictures_dir) if pictures_dir else {}
    signatures = Signatures(path)
    pairs = len(test_images) if chosen["pairs"] is None else chosen["pairs"]
    return {
        "saved_model": str(signatures.path),
        "speed": speed(signatures, test_images, rounds=chosen["rounds"], calls=chosen["calls"]),
        "mnist_png": parity(signatures, test_images[:pairs], test_labels[:pairs]),
        "picture_sets": {name: set_accuracy(signatures, rows[:chosen["set_limit"]])
                         for name, rows in sets.items()},
    }


def format_image_table(figures):
    """The serving_image rows as Markdown lines."""
    lines = ["| measure | result |", "|---|---|"]
    for batch in SPEED_BATCHES:
        s = figures["speed"][f"batch_{batch}"]
        lines.append(f"| serving_image, batch {batch} (112x112 PNGs) | "
                     f"{s['serving_image_images_per_s']:,.1f} images/s; serving_default on "
                     f"raw pixels {s['serving_default_images_per_s']:,.1f} "
                     f"({s['image_over_default']:.3f}x) |")
    mnist = figures["mnist_png"]
    for key, label in (("png_as_is", "as they are"), ("png_enlarged", "4x enlarged")):
        m = mnist[key]
        lines.append(f"| MNIST test PNGs {label}: same (digit, sum) as raw pixels | "
                     f"{m['same_answers']:.2%} ({m['differing_pairs']} of {mnist['pairs']:,} "
                     f"differ); digit accuracy {m['digit_accuracy']:.2%} "
                     f"(raw {mnist['raw_digit_accuracy']:.2%}) |")
    if not figures["picture_sets"]:
        lines.append("| non-MNIST sets | not measured (no --pictures DIR) |")
    for name, m in figures["picture_sets"].items():
        lines.append(f"| {name} | digit {m['digit_accuracy']:.1%}, sum {m['sum_accuracy']:.1%} "
                     f"of {m['pictures']:,} (no ink {m['no_ink']:.1%}, refused "
                     f"{m['refused']:.1%}) |")
    return lines
