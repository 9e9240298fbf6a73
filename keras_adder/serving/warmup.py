"""Warm-up requests stored with a SavedModel, which TF Serving replays when it loads it.

TensorFlow initialises kernels lazily, so without warm-up the first request a new
version receives pays for that (several times a normal request's latency). TF Serving
looks for `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord file of
`PredictionLog` protos, and runs each request once before it marks the version
available (at most 1000 records, else the version fails to load).

The file holds one Predict request per example (batch 1, the usual REST call) and one
request with all of them, so a larger batch is warm too. With `pictures=True` the same
requests follow for the `serving_image` signature, each example sent as a PNG drawing
(4x enlarged, dark on white, as a canvas gives it), so the preparation's kernels are warm.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS, SIGNATURE
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import write_atomically
from keras_adder.serving.image_signature import IMAGE_SIGNATURE

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# TF Serving refuses to load a version whose warm-up file has more records.
MAX_WARMUP_RECORDS = 1000


def _checked_arrays(images, numbers, signatures=1):
    """`images` as uint8 [n, 28, 28] and `numbers` as int32 [n], or a KerasAdderError."""
    images, numbers = np.asarray(images), np.asarray(numbers)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise KerasAdderError(
            f"warm-up images must be uint8 [n, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if numbers.shape != images.shape[:1] or not np.issubdtype(numbers.dtype, np.integer):
        raise KerasAdderError(
            f"warm-up numbers must be integers [{len(images)}] (one per image), "
            f"got {numbers.dtype} {list(numbers.shape)}"
        )
    if not len(images):
        raise KerasAdderError("no warm-up images given; TF Serving needs at least one request")
    if (len(images) + 1) * signatures > MAX_WARMUP_RECORDS:
        raise KerasAdderError(f"{len(images)} warm-up images are too many: TF Serving reads "
                              f"at most {MAX_WARMUP_RECORDS} records (one per image, plus one, "
                              f"for each of {signatures} signature(s))")
    if numbers.min() < 0 or numbers.max() >= NUM_DIGITS:
        raise KerasAdderError(f"warm-up numbers must be integers from 0 to {NUM_DIGITS - 1}")
    return images, numbers.astype(np.int32)


def _prediction_logs(model_name, signature, inputs):
    """Serialized PredictionLogs for one signature: a Predict request per example, then
    one with all of them. `inputs` maps each input's name to (values [n, ...], dtype)."""
    count = len(next(iter(inputs.values()))[0])
    logs = []
    for batch in [slice(i, i + 1) for i in range(count)] + [slice(0, count)]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, (values, dtype) in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values[batch], dtype=dtype))
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        logs.append(log.SerializeToString())
    return logs


def drawings(images):
    """MNIST images (uint8 [n, 28, 28]) → PNG bytes of each drawn as a person would: 4x
    enlarged, dark ink on white."""
    enlarged = tf.image.resize(images[..., np.newaxis], [4 * IMAGE_SIZE, 4 * IMAGE_SIZE])
    inverted = tf.cast(255 - tf.clip_by_value(tf.round(enlarged), 0, 255), tf.uint8)
    return [tf.io.encode_png(image).numpy() for image in inverted]


def write_warmup_requests(saved_model_dir, images, numbers, *, model_name="keras_adder",
                          pictures=False):
    """Write `<saved_model_dir>/assets.extra/tf_serving_warmup_requests`; return its path.

    `images` (uint8 [n, 28, 28]) and `numbers` (integers 0-9, [n]) become n batch-1
    Predict requests plus one batch-n request for `model_name`'s serving signature, and
    with `pictures` (a SavedModel with the `serving_image` signature) the same requests
    for that one, the images sent as `drawings`. The file appears whole or not at all;
    an existing one is replaced.
    """
    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise KerasAdderError(f"{saved_model_dir} is not a SavedModel (no saved_model.pb)")
    images, numbers = _checked_arrays(images, numbers, 2 if pictures else 1)
    records = _prediction_logs(model_name, SIGNATURE, {"image": (images, tf.uint8),
                                                        "number": (numbers, tf.int32)})
    if pictures:
        drawn = np.asarray(drawings(images), object)
        records += _prediction_logs(model_name, IMAGE_SIGNATURE,
                                    {"picture": (drawn, tf.string), "number": (numbers, tf.int32)})
    path = saved_model_dir / WARMUP_FILE
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create {path.parent} ({error.strerror})") from None

    def write(staging):
        with tf.io.TFRecordWriter(str(staging)) as writer:
            for record in records:
                writer.write(record)

    write_atomically(path, write)
    return path
