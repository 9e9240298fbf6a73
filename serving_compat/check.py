"""Does this TensorFlow load and serve the exported SavedModel the way TF Serving does?

TF Serving does not use `tf.saved_model.load`: it imports the `serve` MetaGraph into a
Session and runs the signature by its tensor names. This script does the same under
whatever TensorFlow runs it, so that one venv per TensorFlow release stands in for the
TF Serving release built on it. It imports nothing from keras_adder (the project needs
a newer TensorFlow than the ones it checks).

    python serving_compat/check.py saved_models/keras_adder/1 expected.npz

`expected.npz` (written by serving_compat/expect.py with the project's own TensorFlow)
holds `image`, `number` and the four outputs the signature must give for them. Prints
one JSON line {"tensorflow", "numpy", "loads", "answers", "refuses", "empty", "errors"}
and exits 1 if any check failed, 2 if the arguments are unusable.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The session loader is deprecated in favour of tf.saved_model.load, but it is the one
# TF Serving uses: its deprecation warning is noise here.
tf.get_logger().setLevel("ERROR")

SIGNATURE = "serving_default"
INPUTS = {"image": tf.uint8, "number": tf.int32}
OUTPUTS = {"digit": tf.int32, "sum": tf.int32,
           "digit_probabilities": tf.float32, "sum_probabilities": tf.float32}
CLASSES = {"digit_probabilities": 10, "sum_probabilities": 19}
TOLERANCE = 1e-5


class Served:
    """The `serving_default` signature of a SavedModel, loaded as TF Serving loads it."""

    def __init__(self, path):
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        if SIGNATURE not in meta_graph.signature_def:
            raise ValueError(f"no {SIGNATURE!r} signature")
        signature = meta_graph.signature_def[SIGNATURE]
        self.inputs = _tensor_names(signature.inputs, INPUTS, "input")
        self.outputs = _tensor_names(signature.outputs, OUTPUTS, "output")

    def __call__(self, image, number):
        feed = {self.inputs["image"]: image, self.inputs["number"]: number}
        return self.session.run(self.outputs, feed_dict=feed)


def _tensor_names(infos, wanted, kind):
    """{key: tensor name}, after checking the keys and dtypes against the contract."""
    if set(infos) != set(wanted):
        raise ValueError(f"signature {kind}s are {sorted(infos)}, expected {sorted(wanted)}")
    for key, dtype in wanted.items():
        if infos[key].dtype != dtype.as_datatype_enum:
            got = tf.dtypes.as_dtype(infos[key].dtype).name
            raise ValueError(f"signature {kind} {key} is {got}, expected {dtype.name}")
    return {key: infos[key].name for key in wanted}


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


def run_checks(model_path, expected):
    """{"loads", "answers", "refuses", "empty": bool, "errors": [str]}; a check that
    cannot run because the model did not load counts as failed."""
    report = {"tensorflow": tf.__version__, "numpy": np.__version__, "loads": False,
              "answers": False, "refuses": False, "empty": False, "errors": []}
    try:
        served = Served(model_path)
        report["loads"] = True
    except Exception as error:  # e.g. "Op type not registered": the point of the check
        report["errors"].append(f"loads: {_one_line(error)}")
        return report
    for name, check in (("answers", check_answers), ("refuses", check_refuses),
                        ("empty", check_empty)):
        try:
            check(served, expected)
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
            expected = {key: npz[key] for key in ("image", "number", *OUTPUTS)}
    except (OSError, ValueError, KeyError) as error:
        return _refuse(f"check.py: {expected_path}: not a usable expectations file ({error})")
    report = run_checks(model_path, expected)
    print(json.dumps(report))
    return 0 if all(report[key] for key in ("loads", "answers", "refuses", "empty")) else 1


def _refuse(message):
    print(message, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
