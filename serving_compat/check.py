"""Does this TensorFlow load and serve the exported SavedModel the way TF Serving does?

TF Serving does not use `tf.saved_model.load`: it imports the `serve` MetaGraph into a
Session and runs the signatures by their tensor names. This script does the same
(serving_compat/session.py), for `serving_default` and `serving_image`, under
whatever TensorFlow runs it, so that one venv per TensorFlow release stands in for the
TF Serving release built on it. It imports nothing from keras_adder (the project needs
a newer TensorFlow than the ones it checks).

    python serving_compat/check.py saved_models/keras_adder/1 expected.npz

`expected.npz` (written by serving_compat/expect.py with the project's own TensorFlow)
holds `image`, `number` and the four outputs `serving_default` must give for them, and
encoded pictures with the seven outputs `serving_image` must give for them. Prints one
JSON line {"tensorflow", "numpy", "loads", "answers", "refuses", "empty", "pictures",
"errors"} and exits 1 if any check failed, 2 if the arguments are unusable.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from session import Served  # noqa: E402  (serving_compat/session.py, beside this script)

SIGNATURE = "serving_default"
INPUTS = {"image": tf.uint8, "number": tf.int32}
OUTPUTS = {"digit": tf.int32, "sum": tf.int32,
           "digit_probabilities": tf.float32, "sum_probabilities": tf.float32}
CLASSES = {"digit_probabilities": 10, "sum_probabilities": 19}
TOLERANCE = 1e-5
IMAGE_SIGNATURE = "serving_image"
IMAGE_INPUTS = {"picture": tf.string, "number": tf.int32}
IMAGE_OUTPUTS = {**OUTPUTS, "image": tf.uint8, "ink_found": tf.bool, "digits_seen": tf.int32}
# What expect.py writes for the pictures: their bytes end to end, each one's length, the
# numbers, and the project's serving_image outputs under "picture_<output>".
PICTURE_KEYS = ("picture_bytes", "picture_lengths", "picture_number",
                *(f"picture_{key}" for key in IMAGE_OUTPUTS))
# The refused request: bytes that are not a picture, and the words its refusal must hold.
NOT_A_PICTURE = b"1 2 3"
NOT_A_PICTURE_SAYS = "picture 1 is not a PNG, JPEG, BMP or GIF"
CHECKS = ("loads", "answers", "refuses", "empty", "pictures")


def serving_default(served):
    """`serving_default` as a function of (image, number), its contract checked."""
    call = served.signature(SIGNATURE, INPUTS, OUTPUTS)
    return lambda image, number: call(image=image, number=number)


def check_answers(served, expected):
    """The signature's answers equal the project's for the expected batch."""
    got = served(expected["image"], expected["number"])
    for key in ("digit", "sum"):
        if got[key].dtype != np.int32 or not np.array_equal(got[key], expected[key]):
            raise AssertionError(f"{key} differs from the expected answers")
    for key in CLASSES:
        if got[key].shape != expected[key].shape or not np.allclose(
                got[key], expected[key], rtol=0, atol=TOLERANCE):
            raise AssertionError(f"{key} differ from the expected ones by more than "
                                 f"{TOLERANCE}")


def check_refuses(served, expected):
    """Bad requests fail with InvalidArgument (HTTP 400 in TF Serving), not an answer."""
    image = expected["image"][:2]
    bad_requests = {
        "number 10": (image[:1], np.array([10], np.int32)),
        "number -1": (image[:1], np.array([-1], np.int32)),
        "2 images, 1 number": (image, np.array([3], np.int32)),
    }
    for name, (bad_image, bad_number) in bad_requests.items():
        try:
            served(bad_image, bad_number)
        except tf.errors.InvalidArgumentError:
            continue
        raise AssertionError(f"{name}: answered instead of refused with InvalidArgument")


def check_empty(served, expected):
    """An empty batch gives empty outputs of the right shapes."""
    got = served(np.zeros([0, 28, 28], np.uint8), np.zeros([0], np.int32))
    for key, value in got.items():
        want = (0, CLASSES[key]) if key in CLASSES else (0,)
        if value.shape != want:
            raise AssertionError(f"empty batch: {key} has shape {value.shape}, not {want}")


def pictures_of(expected):
    """The encoded pictures of the expectations, as a numpy object array of bytes."""
    ends = np.cumsum(expected["picture_lengths"])
    data = expected["picture_bytes"].tobytes()
    return np.array([data[end - length:end] for end, length
                     in zip(ends, expected["picture_lengths"])], object)


def check_pictures(served, expected):
    """`serving_image` answers the encoded pictures (MNIST digits drawn 4x larger as PNG
    and JPEG, a blank sheet) as the project's TensorFlow does, and refuses bytes that are
    not a picture with InvalidArgument and a message that says so."""
    call = served.signature(IMAGE_SIGNATURE, IMAGE_INPUTS, IMAGE_OUTPUTS)
    pictures = pictures_of(expected)
    got = call(picture=pictures, number=expected["picture_number"])
    for key in ("digit", "sum", "ink_found", "digits_seen", "image"):
        if not np.array_equal(got[key], expected[f"picture_{key}"]):
            raise AssertionError(f"{key} differs from the expected answers")
    for key in CLASSES:
        if not np.allclose(got[key], expected[f"picture_{key}"], rtol=0, atol=TOLERANCE):
            raise AssertionError(f"{key} differ from the expected ones by more than "
                                 f"{TOLERANCE}")
    try:
        call(picture=np.array([pictures[0], NOT_A_PICTURE], object),
             number=np.array([1, 2], np.int32))
    except tf.errors.InvalidArgumentError as error:
        if NOT_A_PICTURE_SAYS not in error.message:
            raise AssertionError(f"bytes that are not a picture: refused with "
                                 f"{error.message[:200]!r}") from None
        return
    raise AssertionError("bytes that are not a picture: answered instead of refused")


def run_checks(model_path, expected):
    """{"loads", "answers", "refuses", "empty", "pictures": bool, "errors": [str]}; a
    check that cannot run because the model did not load counts as failed."""
    report = {"tensorflow": tf.__version__, "numpy": np.__version__,
              **dict.fromkeys(CHECKS, False), "errors": []}
    try:
        served = Served(model_path)
        default = serving_default(served)
        report["loads"] = True
    except Exception as error:  # e.g. "Op type not registered": the point of the check
        report["errors"].append(f"loads: {_one_line(error)}")
        return report
    for name, check, signature in (("answers", check_answers, default),
                                   ("refuses", check_refuses, default),
                                   ("empty", check_empty, default),
                                   ("pictures", check_pictures, served)):
        try:
            check(signature, expected)
            report[name] = True
        except Exception as error:
            report["errors"].append(f"{name}: {_one_line(error)}")
    return report


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


def main(argv):
    if len(argv) != 2:
        return _refuse("usage: check.py SAVEDMODEL_VERSION_DIR EXPECTED.npz")
    model_path, expected_path = map(Path, argv)
    if not (model_path / "saved_model.pb").is_file():
        return _refuse(f"check.py: {model_path} holds no saved_model.pb")
    try:
        with np.load(expected_path) as npz:
            expected = {key: npz[key] for key in ("image", "number", *OUTPUTS, *PICTURE_KEYS)}
    except (OSError, ValueError, KeyError) as error:
        return _refuse(f"check.py: {expected_path}: not a usable expectations file ({error})")
    report = run_checks(model_path, expected)
    print(json.dumps(report))
    return 0 if all(report[key] for key in CHECKS) else 1


def _refuse(message):
    print(message, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
