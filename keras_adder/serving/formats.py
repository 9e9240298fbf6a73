"""The one dispatch from a model path to the loader of its format.

Every format answers the same call as the SavedModel's `serving_default` signature:
`call(uint8 images [N, 28, 28], int32 numbers [N])` returns numpy
{digit, sum, digit_probabilities, sum_probabilities}.
"""

from pathlib import Path
from typing import Callable, NamedTuple

from keras_adder.core.errors import KerasAdderError
from keras_adder.model.keras_file import load_keras_model
from keras_adder.serving.runtimes import FORMATS, load_runtime_model
from keras_adder.serving.saved_model import (
    load_saved_model,
    make_serving_function,
    run_signature,
)

KERAS_SUFFIX = ".keras"


class LoadedModel(NamedTuple):
    kind: str  # "keras", "litert", "onnx" or "saved_model"
    path: Path  # for a SavedModel base path, the version that was loaded
    call: Callable
    keras_model: object = None  # the Keras model itself, for a .keras file


def _signature_call(serve):
    return lambda images, numbers: run_signature(serve, images, numbers)


def load_model(path):
    """A .keras file, a .tflite or .onnx file, or a SavedModel folder or base path of
    numbered versions (whose highest version is used), as a LoadedModel."""
    path = Path(path)
    if not path.exists():
        raise KerasAdderError(f"model {path} does not exist")
    if path.is_dir():
        resolved, serve = load_saved_model(path)
        return LoadedModel("saved_model", resolved, _signature_call(serve))
    if path.suffix in FORMATS:
        runtime = load_runtime_model(path)
        return LoadedModel(runtime.kind, path, runtime.predict)
    if path.suffix != KERAS_SUFFIX:
        raise KerasAdderError(f"model {path} is a file but not a .keras, .tflite or .onnx model")
    model = load_keras_model(path)
    return LoadedModel("keras", path, _signature_call(make_serving_function(model)), model)
