"""Does this TensorFlow run the MNIST-style preparation and give the project's answers?

keras_adder/data/preparation.py is meant to go inside the served SavedModel, so every op
it uses must exist in the oldest TensorFlow the docs promise for serving. This script
loads that one file by its path (not the package, which needs a newer TensorFlow), runs
`prepare` on the pictures of `pictures.npz` (written by the project's own TensorFlow:
`gray_<i>`, `mode_<i>` and the answers `image_<i>`, `facts_<i>` = prepared, inverted,
empty, digits) and compares.

    python serving_compat/preparation_check.py keras_adder/data/preparation.py pictures.npz

Prints one JSON line {"tensorflow", "pictures", "same_facts", "largest_difference",
"errors"} and exits 1 if a picture's facts differ or its image differs by more than one
grey level, 2 if the arguments are unusable.
"""

import importlib.util
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FACTS = ("prepared", "inverted", "empty", "digits")


def load_module(path):
    spec = importlib.util.spec_from_file_location("preparation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(module, arrays):
    report = {"tensorflow": tf.__version__, "pictures": 0, "same_facts": 0,
              "largest_difference": 0, "errors": []}
    count = sum(1 for name in arrays if name.startswith("gray_"))
    for i in range(count):
        try:
            out = module.prepare(tf.constant(arrays[f"gray_{i}"], tf.float32),
                                 tf.constant(int(arrays[f"mode_{i}"]), tf.int32))
        except Exception as error:  # noqa: BLE001  (any op missing here is the finding)
            report["errors"].append(f"picture {i}: {type(error).__name__}: {error}"[:500])
            continue
        facts = [int(out[name].numpy()) for name in FACTS]
        difference = int(np.abs(out["image"].numpy().astype(int)
                                - arrays[f"image_{i}"].astype(int)).max())
        report["pictures"] += 1
        report["same_facts"] += facts == arrays[f"facts_{i}"].tolist()
        report["largest_difference"] = max(report["largest_difference"], difference)
    return report, count


def main(argv):
    if len(argv) != 2 or not os.path.isfile(argv[0]) or not os.path.isfile(argv[1]):
        print("usage: preparation_check.py PREPARATION_PY PICTURES_NPZ", file=sys.stderr)
        return 2
    module = load_module(argv[0])
    with np.load(argv[1]) as npz:
        report, count = check(module, dict(npz))
    print(json.dumps(report))
    good = (not report["errors"] and report["pictures"] == report["same_facts"] == count
            and report["largest_difference"] <= 1)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
