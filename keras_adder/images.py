"""Images from files, in MNIST's convention: uint8 [28, 28], light digit on dark.

- image files (PNG, JPEG, anything Pillow reads), any size: transparent pixels count
  as white, the picture becomes grayscale, and it is inverted when its background is
  light, because MNIST digits are light on a dark background. The rule: if the mean of
  the outermost ring of pixels (first and last row and column) is above 127 of 255,
  the background is light and the image is inverted. It is then scaled, keeping its
  aspect ratio, to fit 28x28 and padded with black.
- `.npy` arrays of shape [28, 28] or [N, 28, 28] with values 0-255, already in MNIST's
  convention (0 = background): used as they are.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from keras_adder.errors import KerasAdderError

LIGHT_BACKGROUND = 127  # border mean above this: a dark digit on a light background


def _readable_file(path):
    if not path.exists():
        raise KerasAdderError(f"{path}: no such file")
    if not path.is_file():
        raise KerasAdderError(f"{path}: not a file")


def load_image_file(path):
    """An image file of any size and mode → uint8 [28, 28], light digit on dark."""
    path = Path(path)
    _readable_file(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGBA")
    except UnidentifiedImageError:
        raise KerasAdderError(f"{path}: not an image (Pillow cannot identify it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Truncated or corrupt data, or a picture too big to be a digit.
        raise KerasAdderError(f"{path}: unreadable image ({error})") from None
    # Transparent pixels would otherwise show whatever colour they happen to store.
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    gray = np.asarray(Image.alpha_composite(white, image).convert("L"))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > LIGHT_BACKGROUND:
        gray = 255 - gray
    fitted = ImageOps.pad(Image.fromarray(gray), (28, 28),
                          method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(fitted, dtype=np.uint8)


def load_npy(path):
    """A .npy array [28, 28] or [N, 28, 28] of 0-255 values → uint8 [N, 28, 28]."""
    path = Path(path)
    _readable_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise KerasAdderError(f"{path}: not a readable .npy array ({error})") from None
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise KerasAdderError(
            f"{path}: array shape {array.shape} is not [28, 28] or [N, 28, 28]"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise KerasAdderError(f"{path}: array dtype {array.dtype} is not numeric")
    if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0
                           and array.max() <= 255):
        raise KerasAdderError(f"{path}: values must be 0-255 (MNIST pixels)")
    return np.rint(array).astype(np.uint8)


def load_files(files):
    """Images from image files and .npy arrays: (sources, uint8 [N, 28, 28])."""
    sources, batches = [], [np.zeros((0, 28, 28), np.uint8)]
    for name in files:
        path = Path(name)
        if path.suffix.lower() == ".npy":
            array = load_npy(path)
            sources += [name] if len(array) == 1 else [f"{name}[{i}]" for i in range(len(array))]
        else:
            array = load_image_file(path)[np.newaxis]
            sources.append(name)
        batches.append(array)
    return sources, np.concatenate(batches)
