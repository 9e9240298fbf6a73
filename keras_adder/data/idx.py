"""MNIST's IDX files, read with bounded memory. No TensorFlow here: a hostile file is
refused by a process that has not paid for importing it.

The header is checked against MNIST's shapes before anything is allocated, and at most
the bytes the header promises plus one are inflated, so a gzip bomb costs no memory.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS, TEST_SIZE, TRAIN_SIZE
from keras_adder.core.errors import KerasAdderError

# The four files MNIST ships, with what their IDX headers must say.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, (TRAIN_SIZE, IMAGE_SIZE, IMAGE_SIZE)),
    "train_labels": ("train-labels-idx1-ubyte", 2049, (TRAIN_SIZE,)),
    "test_images": ("t10k-images-idx3-ubyte", 2051, (TEST_SIZE, IMAGE_SIZE, IMAGE_SIZE)),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, (TEST_SIZE,)),
}
IDX_UNSIGNED_BYTE = 0x08
MAX_IDX_DIMENSIONS = 3
# Without an expected shape, no file may promise more than MNIST's largest one holds.
MAX_IDX_BYTES = TRAIN_SIZE * IMAGE_SIZE * IMAGE_SIZE


def _open_idx(path):
    """A binary stream of the file's content, gunzipped when it is gzip (by its magic
    bytes, not its name): reading it inflates only what is asked for."""
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        return gzip.open(path, "rb") if gzipped else path.open("rb")
    except OSError as error:
        raise KerasAdderError(f"{path}: cannot read ({error.strerror})") from None


def _read_header(stream, path, expected_magic):
    head = stream.read(4)
    if len(head) < 4:
        raise KerasAdderError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
    magic = int.from_bytes(head, "big")
    if head[:2] != b"\x00\x00" or head[2] != IDX_UNSIGNED_BYTE:
        raise KerasAdderError(
            f"{path}: not an unsigned-byte IDX file (magic number 0x{magic:08x})"
        )
    if expected_magic is not None and magic != expected_magic:
        raise KerasAdderError(
            f"{path}: wrong IDX magic number {magic} (expected {expected_magic})"
        )
    ndim = head[3]
    if not 1 <= ndim <= MAX_IDX_DIMENSIONS:
        raise KerasAdderError(f"{path}: IDX header declares {ndim} dimensions")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise KerasAdderError(f"{path}: truncated IDX header")
    return tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))


def read_idx(path, expected_magic=None, expected_shape=None):
    """Read one IDX file (gzipped or not) into a uint8 array, checking its header.

    The header is 2 zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension. The declared shape is checked
    against `expected_shape` before anything is allocated, and at most the promised
    bytes plus one are inflated, so a gzip bomb costs no memory. Raises
    KerasAdderError naming the file and the problem.
    """
    path = Path(path)
    with _open_idx(path) as stream:
        try:
            shape = _read_header(stream, path, expected_magic)
            if expected_shape is not None and shape != tuple(expected_shape):
                raise KerasAdderError(f"{path}: IDX header declares shape {shape}, "
                                      f"MNIST's is {tuple(expected_shape)}")
            size = int(np.prod(shape, dtype=object))  # Python ints: no overflow
            if size > MAX_IDX_BYTES:
                raise KerasAdderError(f"{path}: IDX header declares shape {shape}, "
                                      f"{size:,} bytes: more than any MNIST file holds")
            payload = stream.read(size + 1)
        except (OSError, EOFError, zlib.error) as error:
            raise KerasAdderError(f"{path}: corrupt or truncated gzip ({error})") from None
    if len(payload) != size:
        raise KerasAdderError(
            f"{path}: data length does not match its header (shape {shape} needs "
            f"{size} bytes, the file has {'more' if len(payload) > size else len(payload)})"
        )
    return np.frombuffer(payload, np.uint8).reshape(shape)


def _find_idx_file(data_dir, name):
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise KerasAdderError(f"{data_dir}: missing MNIST file {name} (or {name}.gz)")


def load_mnist_dir(data_dir):
    """Read and validate the four MNIST IDX files in `data_dir`.

    Returns ((train_images, train_labels), (test_images, test_labels)) as uint8
    arrays of shapes [60000, 28, 28], [60000], [10000, 28, 28], [10000].
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise KerasAdderError(f"data directory {data_dir} does not exist")
    if not data_dir.is_dir():
        raise KerasAdderError(f"data directory {data_dir} is not a directory")
    arrays = {}
    for key, (name, magic, shape) in MNIST_FILES.items():
        path = _find_idx_file(data_dir, name)
        array = read_idx(path, expected_magic=magic, expected_shape=shape)
        if key.endswith("labels") and array.max(initial=0) >= NUM_DIGITS:
            raise KerasAdderError(
                f"{path}: label {int(array.max())} is out of range (labels are 0-9)"
            )
        arrays[key] = array
    return (
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
    )
