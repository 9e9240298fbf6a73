"""Write the answers the project's own TensorFlow gives, for check.py to compare against:
`serving_default`'s for MNIST test images, `serving_image`'s for pictures drawn from them.

Runs under the project's venv (it reads MNIST with keras_adder.data.pipeline). The answers come
from `tf.saved_model.load`, the path the project itself trusts; check.py then asks
other TensorFlow releases, through TF Serving's session loader, for the same ones.

    python -m serving_compat.expect saved_models/keras_adder/1 expected.npz
"""

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from keras_adder.cli import positive_int, run
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import write_atomically

SIGNATURE = "serving_default"
IMAGE_SIGNATURE = "serving_image"
NUM_DIGITS = 10
# serving_image's check: this many test digits drawn 4x larger as PNG, the next few as
# JPEG, then a blank sheet (answered -1, "no ink"), as a client would send them.
PNG_PICTURES = 6
JPEG_PICTURES = 2
ENLARGED = 112  # 4x MNIST's side, Pillow's default (bicubic) resampling


def encoded(picture, fmt, **options):
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def check_pictures(images):
    """[file bytes]: PNGs and JPEGs of the first `images` (dark digits on white paper,
    4x enlarged) and a blank white PNG."""
    drawn = [Image.fromarray(255 - image).resize((ENLARGED, ENLARGED))
             for image in images[:PNG_PICTURES + JPEG_PICTURES]]
    return ([encoded(picture, "PNG") for picture in drawn[:PNG_PICTURES]]
            + [encoded(picture.convert("RGB"), "JPEG", quality=95)
               for picture in drawn[PNG_PICTURES:]]
            + [encoded(Image.new("L", (100, 100), 255), "PNG")])


def write_expected(model_path, images, path):
    """Pair `images` (uint8 [N, 28, 28]) with numbers 0, 1, ..., 9, 0, ...; save them
    and the SavedModel's four outputs for them to the .npz `path`, and the pictures of
    check_pictures with `serving_image`'s outputs for them (keys "picture_...")."""
    import tensorflow as tf

    images = np.asarray(images, np.uint8)
    numbers = np.arange(len(images), dtype=np.int32) % NUM_DIGITS
    loaded = tf.saved_model.load(str(model_path))
    outputs = loaded.signatures[SIGNATURE](image=tf.constant(images),
                                           number=tf.constant(numbers))
    arrays = {key: value.numpy() for key, value in outputs.items()}
    if IMAGE_SIGNATURE not in loaded.signatures:
        raise KerasAdderError(f"{model_path} has no {IMAGE_SIGNATURE} signature: export it "
                              "again with this version of keras_adder")
    pictures = check_pictures(images)
    picture_numbers = np.arange(len(pictures), dtype=np.int32) % NUM_DIGITS
    outputs = loaded.signatures[IMAGE_SIGNATURE](picture=tf.constant(pictures),
                                                 number=tf.constant(picture_numbers))
    arrays |= {f"picture_{key}": value.numpy() for key, value in outputs.items()}
    arrays |= {"picture_bytes": np.frombuffer(b"".join(pictures), np.uint8),
               "picture_lengths": np.array([len(p) for p in pictures], np.int64),
               "picture_number": picture_numbers}

    def save(staging):
        with open(staging, "wb") as file:  # a file object: savez adds no ".npz"
            np.savez(file, image=images, number=numbers, **arrays)

    write_atomically(path, save)


def main(argv=None):
    from keras_adder.data.pipeline import load_mnist

    parser = argparse.ArgumentParser(
        prog="python -m serving_compat.expect",
        description="Write a SavedModel's answers for the first MNIST test images "
        "to an .npz for serving_compat/check.py.")
    parser.add_argument("model", help="SavedModel version folder")
    parser.add_argument("out", help=".npz to write")
    parser.add_argument("--count", type=positive_int, default=32, help="test images (default: 32)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA)")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "saved_model.pb").is_file():
        raise KerasAdderError(f"{args.model} is not a SavedModel folder (no saved_model.pb)")
    _, (test_images, _) = load_mnist(args.data_dir)
    write_expected(args.model, test_images[:args.count], args.out)


if __name__ == "__main__":
    run(main)
