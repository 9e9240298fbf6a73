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


# Each message is the one TF Serving answers (HTTP 400), from
# tensorflow_serving/util/json_tensor.cc.
@pytest.mark.parametrize("body, message", [
    ([], "Is not object"),  # ParseJson
    ({}, "Missing 'inputs' or 'instances' key"),  # FillPredictRequestFromJson
    ({"instances": [], "inputs": {}},
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"instances": {"image": [], "number": []}}, "Expecting 'instances' to be an list/array"),
    ({"instances": [{"image": [[0]]}]},  # FillTensorMapFromInstancesList
     "Failed to process element: 0 of 'instances' list. JSON object: .* keys must be equal "
     "to: image,number"),
    ({"instances": [[[0] * 28] * 28]}, "instances is a plain list, but expecting list of "
     "objects as multiple input tensors required as per tensorinfo_map"),
    ({"instances": [{"image": [[0] * 28] * 28, "number": 1}, [[0] * 28] * 28]},
     "Expecting object but got list at item 1 of input list"),
    ({"instances": [{"image": [[0] * 28] * 28, "number": 1},
                    {"image": [[0] * 28] * 27, "number": 2}]},
     "Failed to process element: 1 key: image of 'instances' list. Error: INVALID_ARGUMENT: "
     "Expecting tensor size: 784 but got: 756"),
    ({"instances": [{"image": [[0] * 28] * 28, "number": 1},
                    {"image": [[0] * 14] * 56, "number": 2}]},
     r"Expecting shape \[28,28\] but got: \[56,14\]"),  # AddInstanceItem
    ({"inputs": [[1]]}, "inputs is a plain value/list, but expecting an object as multiple "
     "input tensors required as per tensorinfo_map"),  # FillTensorMapFromInputsMap
    ({"inputs": {"number": [1]}}, "Missing named input: image in 'inputs' object."),
    ({"inputs": {"image": [[[0] * 28] * 28, [[0] * 28]], "number": [1, 2]}},  # FillTensorProto
     "Encountered list at unexpected size: 1 at level: 1 expected size: 28"),
    ({"inputs": {"image": [[[0] * 28] * 28], "number": [1, [2]]}},
     "Encountered list at unexpected level: 1 expected < 1"),
    ({"inputs": {"image": [[[0] * 28] * 28], "number": [[1], 2]}},
     "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ({"inputs": {"image": [], "number": ["two"]}},  # AddValueToTensor
     'JSON Value: "two" Type: String is not of expected type: int32'),
    ({"signature_name": 7, "inputs": {}}, "'signature_name' key must be a string value."),
])
def test_bad_bodies_are_refused_with_the_servers_message(input_specs, body, message):
    with pytest.raises(KerasAdderError, match=message):
        tensors_from_rest_body(body, input_specs)


def one_body(image=None, number=3, form="inputs"):
    """A body of one request in either form: a blank image unless given."""
    image = [[0] * 28 for _ in range(28)] if image is None else image
    if form == "inputs":
        return {"inputs": {"image": [image], "number": [number]}}
    return {"instances": [{"image": image, "number": number}]}


@pytest.mark.parametrize("form", ["inputs", "instances"])
@pytest.mark.parametrize("value, shown, kind", [
    (3.7, "3.7", "Number"), (True, "true", "True"), ("4", '"4"', "String"),
    (3.0, "3.0", "Number"), (None, "null", "Null"), (float("nan"), "NaN", "Number")])
def test_non_integers_are_refused_for_int32_and_uint8_as_AddValueToTensor_does(
        input_specs, form, value, shown, kind):
    """json_tensor.cc AddValueToTensor: DT_INT32 and DT_UINT8 take a value only if
    rapidjson's IsInt() holds: an integer literal, so not 3.0, true or "4"."""
    with pytest.raises(KerasAdderError) as error:
        tensors_from_rest_body(one_body(number=value, form=form), input_specs)
    assert str(error.value).endswith(
        f"JSON Value: {shown} Type: {kind} is not of expected type: int32")
    image = [[0] * 28 for _ in range(28)]
    image[5][9] = value
    with pytest.raises(KerasAdderError) as error:
        tensors_from_rest_body(one_body(image=image, form=form), input_specs)
    assert str(error.value).endswith(
        f"JSON Value: {shown} Type: {kind} is not of expected type: uint8")


def test_an_empty_instances_list_is_refused_as_FillPredictRequestFromJson_does(input_specs):
    """json_tensor.cc FillPredictRequestFromJson: "No values in 'instances' array"
    when the list's Capacity() is 0. (The columnar form's empty lists are a batch of
    zero, which the signature answers with nothing.)"""
    with pytest.raises(KerasAdderError) as error:
        tensors_from_rest_body({"instances": []}, input_specs)
    assert str(error.value) == """JSON Value: {"instances": []} No values in 'instances' array"""
    empty = tensors_from_rest_body({"inputs": {"image": [], "number": []}}, input_specs)
    assert empty["number"].shape == (0,) and empty["number"].dtype == np.int32


def test_extra_keys_are_ignored_in_the_columnar_form_only_as_the_server_does(input_specs):
    """json_tensor.cc FillTensorMapFromInputsMap looks up each of the signature's inputs
    with FindMember and never looks at other keys; FillTensorMapFromInstancesList passes
    every key of an instance to AddInstanceItem, which refuses a name the signature
    lacks ("does not have named input")."""
    body = one_body(number=4)
    body["inputs"]["comment"] = "not an input"
    tensors = tensors_from_rest_body(body, input_specs)
    assert sorted(tensors) == ["image", "number"] and tensors["number"].tolist() == [4]
    body = one_body(number=4, form="instances")
    body["instances"][0]["comment"] = "not an input"
    with pytest.raises(KerasAdderError, match="Failed to process element: 0 key: comment of "
                       "'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
                       "have named input: comment"):
        tensors_from_rest_body(body, input_specs)


def server_uint8(values):
    """What TensorFlow's C++ Tensor::FromProto makes of a DT_UINT8 TensorProto whose
    int_val holds `values`, as the server builds it (tf.io.parse_tensor runs it)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_shape=(
        tensor_shape_pb2.TensorShapeProto(dim=[{"size": len(values)}])))
    proto.int_val.extend(values)
    return tf.io.parse_tensor(proto.SerializeToString(), tf.uint8).numpy()


@pytest.mark.parametrize("form", ["inputs", "instances"])
def test_out_of_range_uint8_pixels_wrap_as_the_server_stores_them(input_specs, form):
    """json_tensor.cc AddValueToTensor checks only IsInt() (the int32 range) for
    DT_UINT8 and stores the value in the proto's int_val; TensorFlow's conversion of
    int_val into a uint8 tensor keeps the low 8 bits. A pixel of 300 is served as 44,
    -1 as 255 (docs/serving.md names the hazard). Beyond int32 it is a type error."""
    image = [[0] * 28 for _ in range(28)]
    image[0][:4] = [300, -1, 256, 2**31 - 1]
    tensors = tensors_from_rest_body(one_body(image=image, form=form), input_specs)
    assert tensors["image"].dtype == np.uint8
    assert tensors["image"][0, 0, :4].tolist() == [44, 255, 0, 255]
    assert tensors["image"][0, 0, :4].tolist() == server_uint8(image[0][:4]).tolist()
    image[0][0] = 2**31
    with pytest.raises(KerasAdderError, match="JSON Value: 2147483648 Type: Number is not "
                       "of expected type: uint8"):
        tensors_from_rest_body(one_body(image=image, form=form), input_specs)


@pytest.mark.parametrize("form", ["inputs", "instances"])
def test_int32_numbers_outside_its_range_are_refused_as_IsInt_does(input_specs, form):
    """json_tensor.cc AddValueToTensor: rapidjson's IsInt() is false beyond int32, so
    2147483648 and -2147483649 are type errors; within it any integer passes (the
    signature then refuses a number outside 0-9 in its graph)."""
    for number in (2**31, -2**31 - 1):
        with pytest.raises(KerasAdderError, match=f"JSON Value: {number} Type: Number is "
                           "not of expected type: int32"):
            tensors_from_rest_body(one_body(number=number, form=form), input_specs)
    for number in (2**31 - 1, -2**31):
        tensors = tensors_from_rest_body(one_body(number=number, form=form), input_specs)
        assert tensors["number"].tolist() == [number]


def test_b64_objects_are_decoded_for_string_inputs_only_as_JsonDecodeBase64Object_does():
    """json_tensor.cc FillTensorProto: an object where a DT_STRING value belongs is
    decoded by JsonDecodeBase64Object (its only key "b64", a string), for a future
    signature taking encoded pictures; for any other dtype an object is a type error."""
    import base64

    import tensorflow as tf

    specs = {"picture": tf.TensorSpec([None], tf.string), "number": tf.TensorSpec([None], tf.int32)}
    png = b"\x89PNG\r\n\x1a\n pretend picture"
    encoded = {"b64": base64.b64encode(png).decode()}
    for body in ({"inputs": {"picture": [encoded, "plain text"], "number": [1, 2]}},
                 {"instances": [{"picture": encoded, "number": 1},
                                {"picture": "plain text", "number": 2}]}):
        tensors = tensors_from_rest_body(body, specs)
        assert tensors["picture"].tolist() == [png, b"plain text"]
    for picture, message in [
            ({"b64": "not base64!"}, "Unable to base64 decode"),
            ({"b64": encoded["b64"], "name": "x.png"}, "not formatted correctly for base64 data"),
            ({"b64": 7}, "not formatted correctly for base64 data")]:
        with pytest.raises(KerasAdderError, match=message):
            tensors_from_rest_body({"inputs": {"picture": [picture], "number": [1]}}, specs)
    with pytest.raises(KerasAdderError, match="Type: Object is not of expected type: int32"):
        tensors_from_rest_body({"inputs": {"picture": ["x"], "number": [encoded]}}, specs)


def test_answers_take_the_request_form():
    outputs = {"digit": np.array([3, 5]), "sum": np.array([4, 14])}
    assert rest_response({"instances": []}, outputs) == {
        "predictions": [{"digit": 3, "sum": 4}, {"digit": 5, "sum": 14}]}
    assert rest_response({"inputs": {}}, outputs) == {
        "outputs": {"digit": [3, 5], "sum": [4, 14]}}
