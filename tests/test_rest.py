"""TF Serving's REST protocol as keras_adder.serving.rest models it: bodies in, tensors, answers out."""

import json

import numpy as np
import pytest

from keras_adder.core.errors import KerasAdderError
from keras_adder.serving.rest import (
    request_bodies,
    rest_response,
    tensors_from_rest_body,
)


@pytest.fixture(scope="module")
def input_specs():
    import tensorflow as tf

    return {"image": tf.TensorSpec([None, 28, 28], tf.uint8, name="image"),
            "number": tf.TensorSpec([None], tf.int32, name="number")}


def test_row_and_columnar_bodies_give_the_same_tensors(input_specs):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    numbers = np.array([7, 0, 9])
    for body in request_bodies(images, numbers):
        tensors = tensors_from_rest_body(json.loads(json.dumps(body)), input_specs)
        assert tensors["image"].dtype == np.uint8 and tensors["number"].dtype == np.int32
        np.testing.assert_array_equal(tensors["image"], images)
        np.testing.assert_array_equal(tensors["number"], numbers)


@pytest.mark.parametrize("body, message", [
    ({}, 'either "instances" or "inputs"'),
    ({"instances": [], "inputs": {}}, 'either "instances" or "inputs"'),
    ({"instances": [{"image": [[0]]}]}, "each naming exactly the inputs image, number"),
    ({"instances": {"image": [], "number": []}}, '"instances" must be a list'),
    ({"inputs": {"number": [1]}}, '"inputs" must be an object naming exactly the inputs'),
    ({"inputs": {"image": [[[0] * 28] * 28, [[0] * 28]], "number": [1, 2]}},
     "input 'image' is not a uint8 array"),
    ({"inputs": {"image": [], "number": ["two"]}}, "input 'number' is not a int32 array"),
])
def test_bad_bodies_are_refused_saying_why(input_specs, body, message):
    with pytest.raises(KerasAdderError, match=message):
        tensors_from_rest_body(body, input_specs)


def test_answers_take_the_request_form():
    outputs = {"digit": np.array([3, 5]), "sum": np.array([4, 14])}
    assert rest_response({"instances": []}, outputs) == {
        "predictions": [{"digit": 3, "sum": 4}, {"digit": 5, "sum": 14}]}
    assert rest_response({"inputs": {}}, outputs) == {
        "outputs": {"digit": [3, 5], "sum": [4, 14]}}
