"""The `.keras` file: the one loader of a trained Keras model."""

import zipfile
from pathlib import Path

import keras

from keras_adder.core.errors import KerasAdderError


def load_keras_model(path):
    """Load a `.keras` file, with a clear error when it is missing or not a model."""
    path = Path(path)
    if not path.is_file():
        raise KerasAdderError(f"model file {path} does not exist")
    # Keras reports a damaged archive as "File not found"; say what is really wrong.
    if not zipfile.is_zipfile(path):
        raise KerasAdderError(f"{path}: not a .keras model (not a zip archive; corrupt?)")
    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise KerasAdderError(f"{path}: not a readable .keras model ({error})") from None
