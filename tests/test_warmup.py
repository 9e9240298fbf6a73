"""Warm-up requests: the file TF Serving replays when it loads a version, read back
with TF's TFRecord reader and TF Serving's own protos, and replayed through the
SavedModel's signature."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from keras_adder import export
from keras_adder.cli import run
from keras_adder.core.constants import SIGNATURE
from keras_adder.core.errors import KerasAdderError
from keras_adder.serving.image_signature import IMAGE_SIGNATURE
from keras_adder.serving.saved_model import WARMUP_EXAMPLES
from keras_adder.serving.warmup import (
    MAX_WARMUP_RECORDS,
    WARMUP_FILE,
    write_warmup_requests,
)


def read_requests(path):
    """The PredictRequests of a warm-up file, in order."""
    requests = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        requests.append(log.predict_log.request)
    return requests


@pytest.fixture
def exported_copy(trained_run, tmp_path):
    """A private copy of the trained SavedModel version, safe to write into."""
    return shutil.copytree(trained_run["export_path"], tmp_path / "1")


def test_warmup_requests_replay_through_the_signature(exported_copy, mnist):
    _, (test_images, _) = mnist
    images = test_images[:5]
    numbers = np.array([3, 0, 9, 5, 7], np.int32)
    path = write_warmup_requests(exported_copy, images, numbers)
    assert path == exported_copy / "assets.extra" / "tf_serving_warmup_requests"

    requests = read_requests(path)
    # One batch-1 request per example, then one with all of them.
    expected_batches = [slice(i, i + 1) for i in range(5)] + [slice(0, 5)]
    assert len(requests) == len(expected_batches)
    serve = tf.saved_model.load(str(exported_copy)).signatures[SIGNATURE]
    for request, batch in zip(requests, expected_batches):
        assert request.model_spec.name == "keras_adder"
        assert request.model_spec.signature_name == SIGNATURE
        assert set(request.inputs) == {"image", "number"}
        image = tf.make_ndarray(request.inputs["image"])
        number = tf.make_ndarray(request.inputs["number"])
        assert image.dtype == np.uint8 and number.dtype == np.int32
        np.testing.assert_array_equal(image, images[batch])
        np.testing.assert_array_equal(number, numbers[batch])
        replayed = serve(image=tf.constant(image), number=tf.constant(number))
        direct = serve(image=tf.constant(images[batch]), number=tf.constant(numbers[batch]))
        assert set(replayed) == set(direct)
        for name in direct:
            np.testing.assert_array_equal(replayed[name].numpy(), direct[name].numpy())


def test_every_version_the_project_exports_carries_warmup_requests_that_replay(
        trained_run, mnist, data_dir, tmp_path, capsys):
    _, (test_images, _) = mnist
    served = run(export.main, [str(arg) for arg in [
        trained_run["keras_path"], "--export-dir", tmp_path / "served",
        "--candidate-dir", tmp_path / "candidates", "--data-dir", data_dir]])
    capsys.readouterr()
    versions = {
        "training's candidate": trained_run["candidate_path"],
        "training's promoted version": trained_run["export_path"],
        "the export command's candidate": tmp_path / "candidates" / "1",
        "the export command's promoted version": served,
    }
    # The first test images, with the numbers every export pairs them with.
    images = test_images[:WARMUP_EXAMPLES]
    numbers = np.arange(WARMUP_EXAMPLES, dtype=np.int32) % 10
    batches = [slice(i, i + 1) for i in range(WARMUP_EXAMPLES)] + [slice(0, WARMUP_EXAMPLES)]
    for what, version in versions.items():
        path = Path(version) / WARMUP_FILE
        assert path.is_file(), f"{what} has no {WARMUP_FILE}"
        requests = read_requests(path)
        # Both signatures are warmed: raw pixels first, then the same images as pictures.
        assert [r.model_spec.signature_name for r in requests] == (
            [SIGNATURE] * len(batches) + [IMAGE_SIGNATURE] * len(batches)), what
        signatures = tf.saved_model.load(str(version)).signatures
        for request, batch in zip(requests, batches):
            image = tf.make_ndarray(request.inputs["image"])
            number = tf.make_ndarray(request.inputs["number"])
            np.testing.assert_array_equal(image, images[batch])
            np.testing.assert_array_equal(number, numbers[batch])
            replayed = signatures[SIGNATURE](image=tf.constant(image), number=tf.constant(number))
            assert replayed["digit"].shape == (batch.stop - batch.start,), what
        for request, batch in zip(requests[len(batches):], batches):
            number = tf.make_ndarray(request.inputs["number"])
            np.testing.assert_array_equal(number, numbers[batch])
            replayed = signatures[IMAGE_SIGNATURE](
                picture=tf.constant(tf.make_ndarray(request.inputs["picture"])),
                number=tf.constant(number))
            assert replayed["ink_found"].numpy().all(), what


def test_model_name_and_rewrite(exported_copy, mnist):
    _, (test_images, _) = mnist
    write_warmup_requests(exported_copy, test_images[:3], [1, 2, 3])
    path = write_warmup_requests(exported_copy, test_images[:1], np.array([4], np.int64),
                                 model_name="adder_canary")
    requests = read_requests(path)
    # Rewritten, not appended: one example gives its batch-1 request and the batch.
    assert len(requests) == 2
    assert {r.model_spec.name for r in requests} == {"adder_canary"}
    assert tf.make_ndarray(requests[0].inputs["number"]).tolist() == [4]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


GOOD_IMAGES = np.zeros([2, 28, 28], np.uint8)


@pytest.mark.parametrize("images, numbers, message", [
    (GOOD_IMAGES.astype(np.float32), [1, 2], "uint8 [n, 28, 28], got float32 [2, 28, 28]"),
    (GOOD_IMAGES[:, :, :27], [1, 2], "uint8 [n, 28, 28], got uint8 [2, 28, 27]"),
    (GOOD_IMAGES[0], [1], "uint8 [n, 28, 28], got uint8 [28, 28]"),
    (GOOD_IMAGES, [1], "numbers must be integers [2] (one per image), got int64 [1]"),
    (GOOD_IMAGES, [1.0, 2.0], "numbers must be integers [2] (one per image), got float64"),
    (GOOD_IMAGES, [1, 10], "numbers must be integers from 0 to 9"),
    (GOOD_IMAGES, [-1, 2], "numbers must be integers from 0 to 9"),
    (GOOD_IMAGES[:0], np.zeros([0], np.int32), "no warm-up images given"),
    (np.zeros([MAX_WARMUP_RECORDS, 28, 28], np.uint8), np.zeros([MAX_WARMUP_RECORDS], int),
     f"{MAX_WARMUP_RECORDS} warm-up images are too many"),
])
def test_bad_warmup_inputs_write_nothing(tmp_path, images, numbers, message):
    # Inputs are checked before anything is written, so a stand-in SavedModel will do.
    (tmp_path / "saved_model.pb").touch()
    with pytest.raises(KerasAdderError, match=re.escape(message)):
        write_warmup_requests(tmp_path, images, numbers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model.pb"]


def test_not_a_saved_model(tmp_path):
    with pytest.raises(KerasAdderError, match="is not a SavedModel"):
        write_warmup_requests(tmp_path / "missing", GOOD_IMAGES, [1, 2])
    with pytest.raises(KerasAdderError, match="is not a SavedModel"):
        write_warmup_requests(tmp_path, GOOD_IMAGES, [1, 2])
    assert not (tmp_path / WARMUP_FILE).parent.exists()


def test_picture_requests_warm_the_image_signature(exported_copy, mnist):
    """With pictures=True the same requests follow for serving_image, each image sent as
    a PNG drawing, and they replay through it with the raw images' answers."""
    _, (test_images, _) = mnist
    images, numbers = test_images[:3], np.array([4, 0, 8], np.int32)
    requests = read_requests(write_warmup_requests(exported_copy, images, numbers,
                                                   pictures=True))
    assert [r.model_spec.signature_name for r in requests] == [SIGNATURE] * 4 + [IMAGE_SIGNATURE] * 4
    loaded = tf.saved_model.load(str(exported_copy))
    raw = loaded.signatures[SIGNATURE](image=tf.constant(images), number=tf.constant(numbers))
    for request in requests[4:]:
        assert set(request.inputs) == {"picture", "number"}
        pictures = tf.make_ndarray(request.inputs["picture"])
        assert all(picture.startswith(b"\x89PNG") for picture in pictures)
        number = tf.make_ndarray(request.inputs["number"])
        answer = loaded.signatures[IMAGE_SIGNATURE](picture=tf.constant(pictures),
                                                    number=tf.constant(number))
        where = [int(np.flatnonzero(numbers == n)[0]) for n in number]
        assert answer["digit"].numpy().tolist() == raw["digit"].numpy()[where].tolist()
        assert all(answer["ink_found"].numpy())


def test_exported_warmup_file_covers_both_signatures(trained_run):
    requests = read_requests(Path(trained_run["export_path"]) / WARMUP_FILE)
    names = [r.model_spec.signature_name for r in requests]
    assert names == [SIGNATURE] * (WARMUP_EXAMPLES + 1) + [IMAGE_SIGNATURE] * (WARMUP_EXAMPLES + 1)


def test_picture_requests_count_against_the_record_limit(tmp_path):
    (tmp_path / "saved_model.pb").touch()
    half = MAX_WARMUP_RECORDS // 2
    with pytest.raises(KerasAdderError, match=f"{half} warm-up images are too many"):
        write_warmup_requests(tmp_path, np.zeros([half, 28, 28], np.uint8),
                              np.zeros([half], np.int32), pictures=True)
