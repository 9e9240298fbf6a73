"""The one dispatch from a model path to the loader of its format, and the one check of
a model's interface that every loaded model passes.

Every format answers the same call as the SavedModel's `serving_default` signature:
`call(uint8 images [N, 28, 28], int32 numbers [N])` returns numpy
{digit, sum, digit_probabilities, sum_probabilities}.

A model that is not this project's (other input or output names, dtypes, widths) would
otherwise fail deep inside a command with a KeyError or an IndexError, or worse, be
answered for: `evaluate` reads only digit and sum. So each
format's declared inputs and outputs are compared with the signature's before the model
is called, and one call of two blank images then checks the outputs it really gives
(a file may leave widths undeclared). Both say "not a keras_adder model" and what differs.
"""

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS, NUM_SUMS
from keras_adder.core.errors import KerasAdderError
from keras_adder.model.keras_file import load_keras_model
from keras_adder.serving.runtimes import FORMATS, load_runtime_model
from keras_adder.serving.saved_model import (
    load_saved_model_signatures,
    make_serving_function,
    run_image_signature,
    run_signature,
)

KERAS_SUFFIX = ".keras"

# name: (dtype, shape); None is the batch axis (any size), a dtype None is not checked.
SIGNATURE_INPUTS = {"image": ("uint8", (None, IMAGE_SIZE, IMAGE_SIZE)),
                    "number": ("int32", (None,))}
SIGNATURE_OUTPUTS = {"digit": ("int32", (None,)), "sum": ("int32", (None,)),
                     "digit_probabilities": ("float32", (None, NUM_DIGITS)),
                     "sum_probabilities": ("float32", (None, NUM_SUMS))}
# A .keras file holds the model before the signature's preprocessing (one-hot number,
# image / 255), as model.architectures builds it.
KERAS_INPUTS = {"image": (None, (None, IMAGE_SIZE, IMAGE_SIZE, 1)),
                "number": (None, (None, NUM_DIGITS))}
KERAS_OUTPUTS = {"digit": (None, (None, NUM_DIGITS)), "sum": (None, (None, NUM_SUMS))}
PROBE_NUMBERS = (0, NUM_DIGITS - 1)


class LoadedModel(NamedTuple):
    kind: str  # "keras", "litert", "onnx" or "saved_model"
    path: Path  # for a SavedModel base path, the version that was loaded
    call: Callable
    keras_model: object = None  # the Keras model itself, for a .keras file
    # call_pictures(encoded pictures [N] (bytes), int32 numbers [N]): the serving_image
    # signature's numpy outputs (saved_model.run_image_signature); None for a model
    # without it (LiteRT, ONNX, .keras, a SavedModel exported before it existed).
    call_pictures: Callable = None


# --- The interface check ---------------------------------------------------------------


def _shape_text(shape):
    if shape is None:
        return "of unknown shape"
    return "[" + ", ".join("N" if i == 0 and size is None else "?" if size is None
                           else str(size) for i, size in enumerate(shape)) + "]"


def _shape_fits(found, expected):
    # An undeclared width (None) is left to the probe call; a fixed batch size is not
    # the signature's [N, ...], so it differs.
    return found is not None and len(found) == len(expected) and all(
        size == want or (size is None and (i > 0 or want is None))
        for i, (size, want) in enumerate(zip(found, expected)))


def interface_differences(role, found, expected):
    """What differs between `found` and `expected` ({name: (dtype, shape)}) of one role
    ("input" or "output"), as short phrases; [] when nothing does."""
    differences = [f"unexpected {role} {name!r}" for name in sorted(set(found) - set(expected))]
    for name, (dtype, shape) in expected.items():
        if name not in found:
            differences.append(f"no {role} {name!r}")
            continue
        found_dtype, found_shape = found[name]
        if dtype is not None and found_dtype != dtype:
            differences.append(f"{role} {name!r} is {found_dtype}, not {dtype}")
        if not _shape_fits(found_shape, shape):
            differences.append(f"{role} {name!r} has shape {_shape_text(found_shape)}, "
                               f"not {_shape_text(shape)}")
    return differences


def _refuse(path, differences):
    if differences:
        raise KerasAdderError(f"{path}: not a keras_adder model: {'; '.join(differences)}")


def _probe(path, call):
    """Call the model once (two blank images, numbers 0 and 9) and check the outputs
    it gives: names, dtypes and shapes."""
    count = len(PROBE_NUMBERS)
    try:
        outputs = call(np.zeros((count, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                       np.array(PROBE_NUMBERS, np.int32))
    except Exception as error:  # a foreign model fails in its runtime's own words
        said = " ".join(str(error).split())  # one line, as every error of a command
        _refuse(path, [f"it fails on two blank images with numbers 0 and 9 ({said})"])
    found = {name: (np.asarray(value).dtype.name, np.shape(value))
             for name, value in outputs.items()}
    expected = {name: (dtype, (count, *shape[1:]))
                for name, (dtype, shape) in SIGNATURE_OUTPUTS.items()}
    _refuse(path, interface_differences("output", found, expected))


def check_interface(path, call, inputs, outputs):
    """Refuse (KerasAdderError) a model whose declared `inputs`/`outputs` ({name:
    (dtype, shape)}, None for an unknown size) or whose answers to one call are not
    the serving signature's; the message names what differs."""
    _refuse(path, interface_differences("input", inputs, SIGNATURE_INPUTS)
            + interface_differences("output", outputs, SIGNATURE_OUTPUTS))
    _probe(path, call)


def _spec_interface(specs):
    return {name: (spec.dtype.name, tuple(spec.shape.as_list()) if spec.shape.rank is not None
                   else None) for name, spec in specs.items()}


def _keras_tensors(struct, names):
    if isinstance(struct, dict):
        return struct
    struct = list(struct) if isinstance(struct, (list, tuple)) else [struct]
    return dict(zip(names or [tensor.name for tensor in struct], struct))


def check_keras_model(path, model):
    """Refuse a Keras model whose inputs and outputs are not model.architectures':
    image [28, 28, 1] and number [10] in, digit [10] and sum [19] out."""
    try:
        inputs = _keras_tensors(model.input, None)
        outputs = _keras_tensors(model.output, getattr(model, "output_names", None))
    except (AttributeError, ValueError):  # a subclassed model declares neither
        _refuse(path, ["its inputs and outputs are not declared (not a functional model)"])
    describe = {role: {name: (None, tuple(tensor.shape)) for name, tensor in tensors.items()}
                for role, tensors in (("input", inputs), ("output", outputs))}
    _refuse(path, interface_differences("input", describe["input"], KERAS_INPUTS)
            + interface_differences("output", describe["output"], KERAS_OUTPUTS))


# --- Loading ---------------------------------------------------------------------------


def _signature_call(serve):
    return lambda images, numbers: run_signature(serve, images, numbers)


def load_keras(path):
    """The Keras model of a .keras file, refused unless its interface is this project's."""
    model = load_keras_model(path)
    check_keras_model(path, model)
    return model


def _load(path):
    if path.is_dir():
        resolved, serve, serve_image = load_saved_model_signatures(path)
        interface = (_spec_interface(serve.structured_input_signature[1]),
                     _spec_interface(serve.structured_outputs))
        pictures = None if serve_image is None else (
            lambda encoded, numbers: run_image_signature(serve_image, encoded, numbers))
        return (LoadedModel("saved_model", resolved, _signature_call(serve),
                            call_pictures=pictures), interface)
    if path.suffix in FORMATS:
        runtime = load_runtime_model(path)
        return (LoadedModel(runtime.kind, path, runtime.predict),
                (runtime.inputs, runtime.outputs))
    if path.suffix != KERAS_SUFFIX:
        raise KerasAdderError(f"model {path} is a file but not a .keras, .tflite or .onnx model")
    model = load_keras(path)
    # The signature built over a checked Keras model is the signature's by construction.
    return (LoadedModel("keras", path, _signature_call(make_serving_function(model)), model),
            (SIGNATURE_INPUTS, SIGNATURE_OUTPUTS))


def load_model(path):
    """A .keras file, a .tflite or .onnx file, or a SavedModel folder or base path of
    numbered versions (whose highest version is used), as a LoadedModel, once its
    interface is checked (check_interface)."""
    path = Path(path)
    if not path.exists():
        raise KerasAdderError(f"model {path} does not exist")
    loaded, (inputs, outputs) = _load(path)
    check_interface(loaded.path, loaded.call, inputs, outputs)
    return loaded
