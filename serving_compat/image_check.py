"""The `serving_image` signature run as TF Serving runs it, under whatever TensorFlow runs
this script: the `serve` MetaGraph imported into a Session, the signature fed by tensor
names (serving_compat/session.py, which check.py uses too). It imports nothing from keras_adder, so the TF 2.12 venv runs it too.

    python serving_compat/image_check.py saved_models/keras_adder/1 cases.json

`cases.json` maps a case's name to {"picture": [standard base64 of each file], "number":
[ints]}. Prints one JSON line {"tensorflow", "signatures", "cases": {name: {"outputs":
{key: nested lists}} or {"error": the error's type, "message": its message}}}; exits 2
if the arguments are unusable.
"""

import base64
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from session import Served  # noqa: E402  (serving_compat/session.py, beside this script)

SIGNATURE = "serving_image"


def run_cases(path, cases):
    served = Served(path)
    report = {"tensorflow": tf.__version__, "signatures": served.signatures, "cases": {}}
    call = served.signature(SIGNATURE)
    for name, case in cases.items():
        pictures = [base64.b64decode(text) for text in case["picture"]]
        try:
            got = call(picture=np.array(pictures, object),
                       number=np.array(case["number"], np.int32))
            report["cases"][name] = {"outputs": {key: value.tolist()
                                                 for key, value in got.items()}}
        except tf.errors.OpError as error:
            report["cases"][name] = {"error": type(error).__name__, "message": error.message}
    return report


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as file:
        cases = json.load(file)
    print(json.dumps(run_cases(argv[1], cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
