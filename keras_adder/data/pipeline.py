"""MNIST and the tf.data pipelines that pair each image with a number.

The IDX files are read by `keras_adder.data.idx` (no TensorFlow there). Every example the
model sees is

    ({"image": float32 [28, 28, 1] in [0, 1], "number": float32 one-hot [10]},
     {"digit": int32 0-9, "sum": int32 0-18})

Randomness is a pure function of `(seed, epoch)`: the training order, the numbers and
the augmentation of epoch `e` are the same whether the run went straight through or
was resumed after a crash, and the validation/test numbers never change for a seed.
"""

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.core.constants import DATA_ENV_VAR, NUM_DIGITS, VALIDATION_SIZE
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.idx import load_mnist_dir

# Separate streams of the stateless RNG, so that e.g. the test numbers do not depend
# on how many epochs were trained.
TRAIN_STREAM, VALIDATION_STREAM, TEST_STREAM = 1, 2, 3


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
