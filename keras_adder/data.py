"""MNIST from IDX files, and the tf.data pipelines that pair each image with a number.

Every example the model sees is

    ({"image": float32 [28, 28, 1] in [0, 1], "number": float32 one-hot [10]},
     {"digit": int32 0-9, "sum": int32 0-18})

Randomness is a pure function of `(seed, epoch)`: the training order, the numbers and
the augmentation of epoch `e` are the same whether the run went straight through or
was resumed after a crash, and the validation/test numbers never change for a seed.
"""

import gzip
import os
import zlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.constants import (
    DATA_ENV_VAR, IMAGE_SIZE, NUM_DIGITS, TEST_SIZE, TRAIN_SIZE, VALIDATION_SIZE,
)
from keras_adder.errors import KerasAdderError

# The four files MNIST ships, with what their IDX headers must say.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, (TRAIN_SIZE, IMAGE_SIZE, IMAGE_SIZE)),
    "train_labels": ("train-labels-idx1-ubyte", 2049, (TRAIN_SIZE,)),
    "test_images": ("t10k-images-idx3-ubyte", 2051, (TEST_SIZE, IMAGE_SIZE, IMAGE_SIZE)),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, (TEST_SIZE,)),
}
IDX_UNSIGNED_BYTE = 0x08
MAX_IDX_DIMENSIONS = 3

# Separate streams of the stateless RNG, so that e.g. the test numbers do not depend
# on how many epochs were trained.
TRAIN_STREAM, VALIDATION_STREAM, TEST_STREAM = 1, 2, 3


# --- Reading IDX files ----------------------------------------------------------------


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


def resolve_data_dir(data_dir=None):
    """The MNIST folder: the given one, else $KERAS_ADDER_DATA, else None (download)."""
    chosen = data_dir or os.environ.get(DATA_ENV_VAR) or None
    return Path(chosen) if chosen else None


def load_mnist(data_dir=None):
    """MNIST from `data_dir` / $KERAS_ADDER_DATA, or from Keras' download cache."""
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        return load_mnist_dir(folder)
    try:
        return keras.datasets.mnist.load_data()
    except Exception as error:  # no internet, proxy, corrupt cache: all end here
        raise KerasAdderError(
            f"could not download MNIST ({error}); pass --data-dir or set "
            f"{DATA_ENV_VAR} to a folder with the four IDX files"
        ) from None


def split_validation(images, labels, size=VALIDATION_SIZE):
    """Hold out the last `size` training examples for model selection."""
    return (images[:-size], labels[:-size]), (images[-size:], labels[-size:])


# --- Turning (images, digits, numbers) into model examples ----------------------------


def model_inputs(images, numbers):
    """Raw uint8 images [N, 28, 28] and int numbers [N] → the model's input dict.

    Shared by the training pipeline and the exported serving signature, so a client
    that sends raw pixels gets exactly the preprocessing the model was trained with.
    """
    return {
        "image": tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0,
        "number": tf.one_hot(numbers, NUM_DIGITS, dtype=tf.float32),
    }


def model_targets(digits, numbers):
    digits = tf.cast(digits, tf.int32)
    return {"digit": digits, "sum": digits + tf.cast(numbers, tf.int32)}


def paired_numbers(count, seed, stream=TEST_STREAM):
    """The fixed numbers 0-9 paired with an evaluation set (same seed, same numbers)."""
    return tf.random.stateless_uniform(
        [count], seed=[seed, stream], minval=0, maxval=NUM_DIGITS, dtype=tf.int32
    )


def _random_affine(count, seed, max_shift, max_degrees, max_zoom):
    """Per-image affine transforms [count, 8] (output → input pixel) about the centre."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    angle = tf.random.stateless_uniform([count], seeds[0], -1.0, 1.0) * (
        max_degrees * np.pi / 180
    )
    zoom = 1.0 + tf.random.stateless_uniform([count], seeds[1], -1.0, 1.0) * max_zoom
    shift = tf.random.stateless_uniform([count, 2], seeds[2], -1.0, 1.0) * max_shift
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    centre = 13.5
    # input = R(-angle)/zoom · (output - centre - shift) + centre
    ox = centre + shift[:, 0]
    oy = centre + shift[:, 1]
    a2 = centre - cos * ox - sin * oy
    b2 = centre + sin * ox - cos * oy
    zero = tf.zeros_like(cos)
    return tf.stack([cos, sin, a2, -sin, cos, b2, zero, zero], axis=1)


def augment_images(images, seed, max_shift=2.0, max_degrees=10.0, max_zoom=0.1):
    """Small random shifts, rotations and zooms of float images [N, 28, 28, 1]."""
    transforms = _random_affine(tf.shape(images)[0], seed, max_shift, max_degrees, max_zoom)
    return keras.ops.image.affine_transform(
        images, transforms, interpolation="bilinear", fill_mode="constant"
    )


def steps_per_epoch(count, batch_size):
    return -(-count // batch_size)


def train_dataset(images, labels, *, batch_size, seed, epochs, start_epoch=0, augment=True):
    """Training batches for epochs `start_epoch .. epochs-1`, one after the other.

    Each epoch draws a fresh order, fresh numbers and fresh augmentation from the
    stateless RNG keyed by (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted one would. Use with `steps_per_epoch(len(images), batch_size)`.
    """
    images = tf.constant(images)
    labels = tf.constant(labels)
    count = len(labels)

    def one_epoch(epoch):
        order_seed, numbers_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in([seed, TRAIN_STREAM], epoch), 3
            )
        )
        order = tf.argsort(tf.random.stateless_uniform([count], order_seed))
        numbers = tf.random.stateless_uniform(
            [count], numbers_seed, minval=0, maxval=NUM_DIGITS, dtype=tf.int32
        )
        # Whole batches are gathered at once: a per-image map costs one call per image.
        shuffled_images = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(
            lambda indices: (tf.gather(images, indices), tf.gather(labels, indices)))
        random_numbers = tf.data.Dataset.from_tensor_slices(numbers).batch(batch_size)
        # The design in one line: the images zipped with random numbers 0-9.
        pairs = tf.data.Dataset.zip(shuffled_images, random_numbers)

        def to_examples(batch_index, pair):
            (batch_images, digits), batch_numbers = pair
            inputs = model_inputs(batch_images, batch_numbers)  # the one-hot number
            if augment:
                batch_seed = tf.random.experimental.stateless_fold_in(
                    augment_seed, batch_index
                )
                inputs["image"] = augment_images(inputs["image"], batch_seed)
            return inputs, model_targets(digits, batch_numbers)  # digit and sum

        return pairs.enumerate().map(to_examples, num_parallel_calls=tf.data.AUTOTUNE)

    dataset = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def eval_dataset(images, labels, *, batch_size, seed, stream=TEST_STREAM):
    """Fixed evaluation batches: the same numbers for the same seed, cached."""
    numbers = paired_numbers(len(labels), seed, stream)
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels, numbers))
        .batch(batch_size)
        .map(
            lambda x, y, n: (model_inputs(x, n), model_targets(y, n)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )
    return _with_options(dataset)


def validation_dataset(images, labels, *, batch_size, seed):
    return eval_dataset(images, labels, batch_size=batch_size, seed=seed, stream=VALIDATION_STREAM)


def _with_options(dataset):
    options = tf.data.Options()
    # Datasets built from in-memory tensors have no files to shard: split by batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    options.deterministic = True
    return dataset.with_options(options)
