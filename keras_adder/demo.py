"""Draw a digit in the browser, pick a number, see the model's sum.

    python -m keras_adder.demo                     # http://127.0.0.1:7860
    python -m keras_adder.demo --model saved_models/keras_adder/3 --port 8000

A Gradio app (install requirements-demo.txt, or run `make demo`) over an exported
SavedModel's `serving_image` signature, as a TF Serving client would call it (or
`serving_default` for a model without it). Gradio's files live in a folder of this run's
own, removed when the demo stops. It listens on
127.0.0.1 only, unless --host says otherwise; it makes no share link and sends nothing
off the machine.
"""

import argparse

from keras_adder.cli import port_number, run
from keras_adder.core.constants import DEFAULT_EXPORT_DIR
from keras_adder.core.errors import KerasAdderError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.demo",
        description="A browser demo: draw a digit (or upload a photo of one), pick a "
        "number 0-9, and see the digit and the sum an exported SavedModel answers, with "
        "both heads' probabilities and the 28x28 image the model saw.",
    )
    parser.add_argument("--model", default=DEFAULT_EXPORT_DIR,
                        help="SavedModel directory, or a base path of integer versions (the "
                        f"highest is used); default: {DEFAULT_EXPORT_DIR}")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; "
                        "0.0.0.0 lets other machines in)")
    parser.add_argument("--port", type=port_number,
                        help="port to listen on (default: the first free one from 7860)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        # Deferred: Gradio (and, through the app, TensorFlow) take seconds to import,
        # which --help and a bad flag never need.
        from keras_adder.serving import gradio_app
    except ImportError as error:
        raise KerasAdderError(f"the demo needs its requirements ({error}): run `make demo` "
                              "or pip install -r requirements-demo.txt") from None
    with gradio_app.upload_folder():
        app = gradio_app.build_app(args.model)
        print(f"model: {args.model}; press Ctrl-C to stop")
        gradio_app.launch(app, args.host, args.port)


if __name__ == "__main__":
    run(main)
