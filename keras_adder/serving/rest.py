"""TF Serving's REST `:predict` protocol for the `serving_default` signature: the
bodies a client sends, the tensors the server makes of them, and the answer it sends."""

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


def tensors_from_rest_body(body, input_specs):
    """The named input arrays TF Serving builds from a parsed `:predict` JSON body.

    Row form: "instances" is a list of objects, one per example, each with every named
    input; the values of each input are stacked into a batch. Columnar form: "inputs"
    maps each name to its whole batch. `input_specs` is the signature's
    `structured_input_signature[1]`; values take its dtypes.
    """
    names = sorted(input_specs)
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise KerasAdderError('a :predict body is an object with either "instances" or "inputs"')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not all(
                isinstance(instance, dict) and sorted(instance) == names
                for instance in instances):
            raise KerasAdderError(f'"instances" must be a list of objects, each naming '
                                  f'exactly the inputs {", ".join(names)}')
        columns = {name: [instance[name] for instance in instances] for name in names}
    else:
        columns = body["inputs"]
        if not isinstance(columns, dict) or sorted(columns) != names:
            raise KerasAdderError(f'"inputs" must be an object naming exactly the inputs '
                                  f'{", ".join(names)}')
    arrays = {}
    for name, spec in input_specs.items():
        try:
            arrays[name] = np.asarray(columns[name], spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError, OverflowError) as error:
            raise KerasAdderError(f"input {name!r} is not a {spec.dtype.name} array "
                                  f"({error})") from None
    return arrays


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
