"""The browser demo: draw a digit (or upload a photo), pick a number, see the sum.

The app is a client of the exported model, as a TF Serving client would be: a SavedModel
with the `serving_image` signature gets the canvas' PNG or the uploaded file's bytes and
prepares them in its graph, and the page shows the signature's `image` output, so the
browser shows exactly what a TF Serving client gets. A model without it (LiteRT, ONNX,
a SavedModel exported before it) gets the picture prepared here and sent through
`serving_default`. Both follow `keras_adder.serving.clients`, the rule `predict` follows,
so the demo and the command answer alike for the same picture. The page shows the 28x28
image the model saw, so a user sees why it answered so.

An upload reaches the app as a file path (`gr.File`), never decoded by Gradio: an image
component opens and converts it with Pillow before the project's loader can check it,
so a small PNG declaring a huge picture costs the server its decoded size, and a file
that is not an image a traceback. The bounded loader (`pictures.read_picture`, which
also decides which bytes are sent) reads the header first and
refuses what it cannot read with its own message, shown on the page. Uploads bigger than
`pictures.MAX_FILE_BYTES` are refused by Gradio while they arrive (`max_file_size`).
The drawing is the canvas' own 280x280 PNG file, read the same way.

Nothing leaves the machine: no share link, Gradio's analytics and version check are off,
and the default theme's fonts are served by the app itself. Gradio is imported here;
only `python -m keras_adder.demo` and the tests import this module.
"""

import contextlib
import io
import logging
import os
import shutil
import tempfile

# Read by Gradio when it is imported (its version check and telemetry calls).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402  (Gradio's web framework)

from keras_adder.core import signals, startup  # noqa: E402
from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS  # noqa: E402
from keras_adder.core.errors import KerasAdderError  # noqa: E402
from keras_adder.data import pictures  # noqa: E402

CANVAS_SIDE = 280  # pixels: ten canvas pixels per MNIST pixel
BRUSH_RADIUS = 9  # MNIST's strokes are ~2 of 28 pixels wide: ~20 of 280
SHOWN_CLASSES = 3  # each bar chart shows its head's most likely answers
EMPTY_CANVAS = "Draw a digit on the black canvas (white ink), or upload a photo of one."
SHOWN_SCALE = 8  # the 28x28 image is shown as 224x224, each pixel an 8x8 square
# "Clear canvas" would remove the black background, and white ink on the transparent
# canvas reads as white on white paper: hidden, so Undo is the way to start again.
CSS = "#sketchpad button[aria-label='Clear canvas'] { display: none; }"
GRADIO_FOLDER_VARIABLE = "GRADIO_TEMP_DIR"  # where Gradio keeps uploads and shown images
LEFT_BROWSER = "a browser went away before its request had arrived (a tab closed?); dropped"


def _black_canvas():
    black = np.zeros((CANVAS_SIDE, CANVAS_SIDE, 3), np.uint8)
    return {"background": black, "layers": [], "composite": black}


def _blank_png():
    encoded = io.BytesIO()
    Image.new("L", (IMAGE_SIZE, IMAGE_SIZE)).save(encoded, "PNG")
    return encoded.getvalue()


def _picture_path(drawing, upload):
    """The file to read: an uploaded photo wins over the drawing; None when neither."""
    if upload:
        return upload
    if isinstance(drawing, dict):
        return drawing.get("composite")
    return None


def _problem(error, path):
    # The message names Gradio's temporary copy, which means nothing to the user.
    return str(error).removeprefix(f"{path}: ")


def answer(model, drawing, upload, number):
    """The page's outputs (text, digit bars, sum bars, the 28x28 image enlarged) for one
    request to `model` (a formats.LoadedModel: `call`, and `call_pictures` when it has
    the serving_image signature)."""
    nothing = (None, None, None)
    path = _picture_path(drawing, upload)
    if path is None:
        return (EMPTY_CANVAS, *nothing)
    # Deferred: TensorFlow, imported quietly by build_app (or the caller) first.
    startup.import_tensorflow()
    from keras_adder.serving.clients import answer_items

    try:
        picture = pictures.read_picture(path)
        if number not in range(NUM_DIGITS):  # None, 2.5 and 12 are refused alike
            return (f"Pick a whole number from 0 to {NUM_DIGITS - 1}.", *nothing)
        number = int(number)
        images, outputs, _ = answer_items(model, [path], [picture], np.array([number], np.int32))
    except KerasAdderError as error:
        problem = _problem(error, path)
        hint = EMPTY_CANVAS if not upload and "no digit found" in problem else ""
        return (f"{problem}. {hint}".strip(), *nothing)
    digit, total = int(outputs["digit"][0]), int(outputs["sum"][0])
    digit_bars = {str(i): float(p) for i, p in enumerate(outputs["digit_probabilities"][0])}
    sum_bars = {str(i): float(p) for i, p in enumerate(outputs["sum_probabilities"][0])}
    text = f"{digit} + {number} = {total}"
    if pictures.is_unsure(min(digit_bars[str(digit)], sum_bars[str(total)])):
        text += (f"  (unsure: the model gives this answer less than "
                 f"{pictures.UNSURE_BELOW:.0%} probability)")
    # Enlarged by repeating pixels, so the page shows exactly the model's input.
    shown = np.kron(images[0], np.ones((SHOWN_SCALE, SHOWN_SCALE), np.uint8))
    return text, digit_bars, sum_bars, shown


def signature_note(model):
    """Which signature the page's pictures go through, for the page's heading."""
    if model.call_pictures is not None:
        return ("pictures go through its `serving_image` signature, as a TF Serving "
                "client's would")
    return "it has no `serving_image` signature: pictures are prepared here and sent " \
        "through `serving_default`"


def build_app(model_path):
    """A gr.Blocks over the SavedModel at `model_path` (a version folder, or a base
    path whose highest version is used). Loading runs the model's graph: load only
    models from a trusted source."""
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which startup has just imported quietly.
    from keras_adder.serving.formats import load_model

    model = load_model(model_path)  # checks the model's interface, as every command does
    if model.call_pictures is not None:
        # The first call of a loaded signature optimises its graph (seconds on a busy
        # CPU): paid here, at start-up, rather than by the first visitor.
        model.call_pictures([_blank_png()], np.zeros([1], np.int32))

    with gr.Blocks(title="keras-adder", analytics_enabled=False) as app:
        gr.Markdown(f"## Draw a digit, pick a number, see the sum\nModel: `{model.path}`; "
                    f"{signature_note(model)}.", elem_id="model-note")
        with gr.Row():
            with gr.Column():
                drawing = gr.Sketchpad(
                    value=_black_canvas(), type="filepath", format="png", image_mode="RGB",
                    canvas_size=(CANVAS_SIDE, CANVAS_SIDE), fixed_canvas=True, layers=False,
                    brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff",
                                   color_mode="fixed", default_size=BRUSH_RADIUS),
                    label="Draw one digit (white on black)", elem_id="sketchpad")
                # A path, not an image: see the module's docstring. No file_types, so
                # that every file gets the loader's own answer rather than Gradio's.
                upload = gr.File(type="filepath", file_count="single", label="Or upload a "
                                 "photo of one digit (used instead of the drawing)",
                                 elem_id="upload")
                number = gr.Number(value=3, minimum=0, maximum=NUM_DIGITS - 1, step=1,
                                   precision=0, label="Number to add (0-9)", elem_id="number")
                button = gr.Button("Add", variant="primary", elem_id="add")
            with gr.Column():
                result = gr.Textbox(label="digit + number = sum", elem_id="result")
                seen = gr.Image(label="What the model saw (28x28)", format="png",
                                image_mode="L", interactive=False, height=280,
                                buttons=["download", "fullscreen"], elem_id="model-input")
                digit_bars = gr.Label(num_top_classes=SHOWN_CLASSES,
                                      label=f"Digit: the {SHOWN_CLASSES} most likely",
                                      elem_id="digit-probabilities")
                sum_bars = gr.Label(num_top_classes=SHOWN_CLASSES,
                                    label=f"Sum: the {SHOWN_CLASSES} most likely",
                                    elem_id="sum-probabilities")
        button.click(lambda *inputs: answer(model, *inputs), [drawing, upload, number],
                     [result, digit_bars, sum_bars, seen])
    return app


@contextlib.contextmanager
def upload_folder():
    """A folder of this run's own for Gradio's files, removed when the demo stops
    (Ctrl-C, SIGTERM): the uploads, the images shown, and the partial file of each upload
    whose browser went away, which Gradio leaves behind. Made inside GRADIO_TEMP_DIR when
    that is set (created if missing, never removed), else in the system's temporary
    folder."""
    parent = os.environ.get(GRADIO_FOLDER_VARIABLE)
    if parent:
        os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="keras-adder-demo-", dir=parent)
    os.environ[GRADIO_FOLDER_VARIABLE] = folder  # read by Gradio whenever it needs it
    try:
        yield folder
    finally:
        if parent is None:
            del os.environ[GRADIO_FOLDER_VARIABLE]
        else:
            os.environ[GRADIO_FOLDER_VARIABLE] = parent
        with signals.deferred():  # a second SIGTERM (sent to the group too) waits for it
            shutil.rmtree(folder, ignore_errors=True)


class _LeftBrowsers(logging.Filter):
    """Turns uvicorn's traceback for a request whose browser went away before its body
    had arrived into one line. A closed tab does that: the sketchpad uploads its layers
    in the background, even after the answer is shown. Nothing of the server failed."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect):
            record.msg, record.args = LEFT_BROWSER, ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_LEFT_BROWSERS = _LeftBrowsers()  # one instance: addFilter adds it once


def launch(app, host="127.0.0.1", port=None, block=True):
    """Serve `app` on host:port (port None: Gradio picks a free one from 7860) with no
    share link; block=False returns at once, the server running in a thread."""
    logging.getLogger("uvicorn.error").addFilter(_LEFT_BROWSERS)
    app.launch(server_name=host, server_port=port, share=False, css=CSS, quiet=not block,
               prevent_thread_lock=not block, show_error=True,
               max_file_size=pictures.MAX_FILE_BYTES)
    return app.local_url
