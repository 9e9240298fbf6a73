"""TF Serving REST request bodies for the `serving_default` signature."""

import json
from pathlib import Path

from keras_adder.errors import KerasAdderError
from keras_adder.files import temporary_sibling


def request_bodies(images, numbers):
    """TF Serving REST :predict bodies for these inputs: (row form, columnar form)."""
    rows = {"instances": [{"number": int(number), "image": image.tolist()}
                          for image, number in zip(images, numbers)]}
    columns = {"inputs": {"number": numbers.tolist(), "image": images.tolist()}}
    return rows, columns


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
