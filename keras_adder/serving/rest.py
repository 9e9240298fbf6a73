"""TF Serving's REST `:predict` protocol for the `serving_default` signature: the
bodies a client sends, the tensors the server makes of them, and the answer it sends."""

import base64
import binascii
import json
from pathlib import Path

import numpy as np

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import temporary_sibling


def request_bodies(images, numbers):
    """TF Serving REST :predict bodies for these inputs: (row form, columnar form)."""
    rows = {"instances": [{"number": int(number), "image": image.tolist()}
                          for image, number in zip(images, numbers)]}
    columns = {"inputs": {"number": numbers.tolist(), "image": images.tolist()}}
    return rows, columns


# TF Serving's REST reading, tensorflow_serving/util/json_tensor.cc
# (FillPredictRequestFromJson and the functions it calls), case by case, with its
# messages. The server parses with rapidjson, where 3 is an int and 3.0 a double; so
# does Python's json module.
DEBUG_STRING_LIMIT = 256  # kMaxJsonDebugStringBytes: longer values are cut
BASE64_KEY = "b64"
INT_RANGES = {  # rapidjson's IsInt / IsInt64 / IsUint / IsUint64, by the dtypes that use them
    **dict.fromkeys(("int32", "int16", "int8", "uint8"), (-2**31, 2**31 - 1)),
    "int64": (-2**63, 2**63 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}
TF_TYPE_NAMES = {"float32": "float", "float64": "double"}  # DataTypeString's names


def _debug(value):
    """JsonValueToDebugString: the JSON text of `value`, cut at 256 bytes."""
    return json.dumps(value)[:DEBUG_STRING_LIMIT]


def _json_type(value):
    """JsonTypeString."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value, dtype):
    return KerasAdderError(f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of "
                           f"expected type: {TF_TYPE_NAMES.get(dtype, dtype)}")


def _is_base64_object(value):
    """IsValBase64Object: an object whose only key is "b64", holding a string."""
    return (isinstance(value, dict) and len(value) == 1
            and isinstance(value.get(BASE64_KEY), str))


def _scalar(value, dtype):
    """AddValueToTensor: the value a JSON scalar gives a tensor of `dtype`, or the
    server's type error. Integers are not checked against a narrower dtype's range:
    the server stores them in the proto's int field and TensorFlow converts them,
    wrapping (a uint8 of 300 becomes 44)."""
    if isinstance(value, dict):  # FillTensorProto: an object is base64 or an error
        if dtype != "string":
            raise _type_error(value, dtype)
        if not _is_base64_object(value):
            raise KerasAdderError(f"JSON Value: {_debug(value)} not formatted correctly "
                                  "for base64 data")
        try:
            return base64.b64decode(value[BASE64_KEY], validate=True)
        except binascii.Error:
            raise KerasAdderError("Unable to base64 decode") from None
    if dtype in ("float32", "float64"):
        ok = type(value) in (int, float)
    elif dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        ok = type(value) is int and low <= value <= high  # not 3.0, true or "4"
    elif dtype == "bool":
        ok = type(value) is bool
    elif dtype == "string":
        ok = type(value) is str
        value = value.encode() if ok else value
    else:
        raise KerasAdderError(f"Conversion of JSON Value: {_debug(value)} to type: {dtype}")
    if not ok:
        raise _type_error(value, dtype)
    return value


def _dense_shape(value):
    """GetDenseTensorShape: each level's size, read from the first element."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _fill(value, level, shape, dtype, values):
    """FillTensorProto: append the leaves of `value` to `values`, checking that the
    nesting is dense and of `shape`."""
    if not isinstance(value, list):
        if level != len(shape):
            raise KerasAdderError(f"JSON Value: {_debug(value)} found at incorrect level: "
                                  f"{level + 1} in the JSON DOM. Expected at level: "
                                  f"{len(shape)}")
        values.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise KerasAdderError(f"Encountered list at unexpected level: {level} expected < "
                              f"{len(shape)}")
    if len(value) != shape[level]:
        raise KerasAdderError(f"Encountered list at unexpected size: {len(value)} at level: "
                              f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, values)


def _tensor(value, dtype):
    """(shape, flat values) of one JSON value read as a tensor of `dtype`."""
    shape, values = _dense_shape(value), []
    _fill(value, 0, shape, dtype, values)
    return shape, values


def _array(shape, values, dtype):
    if dtype == "string":
        return np.array(values, dtype=object).reshape(shape)
    if dtype in INT_RANGES:  # TensorFlow's int -> uint8 conversion wraps, as numpy's does
        return np.array(values, np.int64 if dtype != "uint64" else np.uint64).reshape(
            shape).astype(dtype)
    return np.array(values, dtype).reshape(shape)


def _instance_item(value, name, dtypes, seen):
    """AddInstanceItem: one input of one instance, consistent with the instances
    before it."""
    if name not in dtypes:
        raise KerasAdderError(f"JSON object: does not have named input: {name}")
    shape, values = _tensor(value, dtypes[name])
    if name in seen and len(seen[name][1][-1]) != len(values):
        raise KerasAdderError(f"Expecting tensor size: {len(seen[name][1][-1])} but got: "
                              f"{len(values)}")
    if name in seen and seen[name][0] != shape:
        raise KerasAdderError(f"Expecting shape [{','.join(map(str, seen[name][0]))}] but "
                              f"got: [{','.join(map(str, shape))}]")
    seen.setdefault(name, (shape, []))[1].append(values)


def _from_instances(instances, dtypes):
    """FillTensorMapFromInstancesList: the row form."""
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise KerasAdderError("instances is a plain list, but expecting list of objects as "
                              "multiple input tensors required as per tensorinfo_map")

    def is_object(value):
        return isinstance(value, dict) and not _is_base64_object(value)

    objects, names, seen = is_object(instances[0]), sorted(dtypes), {}
    for index, instance in enumerate(instances):
        if objects != is_object(instance):
            wanted = "object but got list" if objects else "value/list but got object"
            raise KerasAdderError(f"Expecting {wanted} at item {index} of input list")
        items = instance.items() if objects else [(names[0], instance)]
        for name, value in items:
            try:
                _instance_item(value, name, dtypes, seen)
            except KerasAdderError as error:
                key = f" key: {name}" if objects else ""
                raise KerasAdderError(f"Failed to process element: {index}{key} of 'instances'"
                                      f" list. Error: INVALID_ARGUMENT: {error}") from None
        if objects and sorted(instance) != names:
            raise KerasAdderError(f"Failed to process element: {index} of 'instances' list. "
                                  f"JSON object: {_debug(instance)} keys must be equal to: "
                                  f"{','.join(names)}")
    return {name: _array([len(instances), *shape], [v for part in parts for v in part],
                         dtypes[name]) for name, (shape, parts) in seen.items()}


def _from_inputs(inputs, dtypes):
    """FillTensorMapFromInputsMap: the columnar form. Keys that name no input are
    ignored, as the server ignores them."""
    if not isinstance(inputs, dict) or _is_base64_object(inputs):
        if len(dtypes) > 1:
            raise KerasAdderError("inputs is a plain value/list, but expecting an object as "
                                  "multiple input tensors required as per tensorinfo_map")
        inputs = {next(iter(dtypes)): inputs}
    arrays = {}
    for name in sorted(dtypes):
        if name not in inputs:
            raise KerasAdderError(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _array(*_tensor(inputs[name], dtypes[name]), dtypes[name])
    return arrays


def tensors_from_rest_body(body, input_specs):
    """The named input arrays TF Serving builds from a parsed `:predict` JSON body, or
    a KerasAdderError with the message the server answers (HTTP 400).

    Row form: "instances" is a non-empty list of objects, one per example, each with
    exactly the named inputs; the values of each input are stacked into a batch.
    Columnar form: "inputs" maps each name to its whole batch; other keys are ignored.
    Integer inputs take JSON integers only (not 3.0, true or "4"), within int32's
    range; a uint8 input wraps larger ones (300 becomes 44). A string input also takes
    {"b64": "..."}. `input_specs` is the signature's `structured_input_signature[1]`.
    """
    dtypes = {name: spec.dtype.name for name, spec in input_specs.items()}
    if not isinstance(body, dict):
        raise KerasAdderError(f"JSON Value: {_debug(body)} Is not object")
    if not isinstance(body.get("signature_name", ""), str):
        raise KerasAdderError(f"JSON Value: {_debug(body)} not formatted correctly. "
                              "'signature_name' key must be a string value.")
    if "instances" in body and "inputs" in body:
        raise KerasAdderError(f"JSON Value: {_debug(body)} Not formatted correctly expecting "
                              "only one of 'inputs' or 'instances' keys to exist ")
    if "instances" in body:
        if not isinstance(body["instances"], list):
            raise KerasAdderError(f"JSON Value: {_debug(body)} Expecting 'instances' to be "
                                  "an list/array")
        if not body["instances"]:
            raise KerasAdderError(f"JSON Value: {_debug(body)} No values in 'instances' array")
        return _from_instances(body["instances"], dtypes)
    if "inputs" in body:
        return _from_inputs(body["inputs"], dtypes)
    raise KerasAdderError("Missing 'inputs' or 'instances' key")


def rest_response(body, outputs):
    """TF Serving's answer to `body` given the signature's output tensors: a row
    request gets {"predictions": [one object per example]}, a columnar one
    {"outputs": {name: whole batch}}."""
    outputs = {name: np.asarray(value).tolist() for name, value in outputs.items()}
    if "instances" in body:
        count = len(next(iter(outputs.values())))
        return {"predictions": [{name: value[i] for name, value in outputs.items()}
                                for i in range(count)]}
    return {"outputs": outputs}


def _dump_request(body):
    # One image row per line, so the digit can be seen in the file.
    text = json.dumps(body)
    return text.replace("], [", "],\n  [") + "\n"


def write_request_examples(out_dir, images, numbers):
    """Write `instances.json` (row form) and `inputs.json` (columnar) into the folder
    `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    texts = {out_dir / name: _dump_request(body)
             for name, body in zip(("instances.json", "inputs.json"),
                                   request_bodies(images, numbers))}
    for path in texts:
        if path.is_dir():  # a rename over it would fail after the other file is replaced
            raise KerasAdderError(f"cannot write the examples: {path} is a directory")
    staged = {path: temporary_sibling(path) for path in texts}
    # Both files or neither: every body is written in full before either is replaced.
    try:
        for path, staging in staged.items():
            staging.write_text(texts[path])
        for path, staging in staged.items():
            staging.replace(path)
    except OSError as error:
        raise KerasAdderError(f"cannot write the examples into {out_dir} "
                              f"({error.strerror})") from None
    finally:
        for staging in staged.values():
            staging.unlink(missing_ok=True)
    return list(texts)
