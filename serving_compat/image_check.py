"""The `serving_image` signature run as TF Serving runs it, under whatever TensorFlow runs
this script: the `serve` MetaGraph imported into a Session, the signature fed by tensor
names. It imports nothing from keras_adder, so the TF 2.12 venv runs it too.

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

tf.get_logger().setLevel("ERROR")  # the session loader's deprecation warning

SIGNATURE = "serving_image"


def run_cases(path, cases):
    session = tf.compat.v1.Session(graph=tf.Graph())
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    report = {"tensorflow": tf.__version__, "signatures": sorted(meta_graph.signature_def),
              "cases": {}}
    signature = meta_graph.signature_def[SIGNATURE]
    outputs = {key: info.name for key, info in signature.outputs.items()}
    for name, case in cases.items():
        feed = {signature.inputs["picture"].name:
                np.array([base64.b64decode(text) for text in case["picture"]], object),
                signature.inputs["number"].name: np.array(case["number"], np.int32)}
        try:
            got = session.run(outputs, feed_dict=feed)
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
