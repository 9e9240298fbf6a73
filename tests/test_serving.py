"""The exported SavedModel as TF Serving sees it: its signature's checks, the example
REST bodies, models.config, and the atomic, versioned export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_adder import export, predict
from keras_adder.cli import run
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pipeline import model_inputs
from keras_adder.serving import saved_model
from keras_adder.serving.rest import rest_response, tensors_from_rest_body

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "saved_models" / "examples"

# Run in a fresh interpreter: plain TensorFlow, the way a server loads the model.
PLAIN_TF = r"""
import json, sys
import numpy as np, tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
images = np.load(sys.argv[2])
report = {"inputs": {name: [spec.dtype.name, spec.shape.as_list()]
                     for name, spec in serve.structured_input_signature[1].items()}}

def call(name, image, number):
    try:
        out = serve(image=tf.constant(image), number=tf.constant(number))
        report[name] = {k: [v.dtype.name, v.shape.as_list(), v.numpy().tolist()]
                        for k, v in out.items()}
    except Exception as error:
        report[name] = {"error": type(error).__name__, "message": str(error)}

good = np.arange(len(images), dtype=np.int32) % 10
call("good", images, good)
call("number 10", images[:3], np.array([1, 10, 3], np.int32))
call("number -1", images[:3], np.array([-1, 2, 3], np.int32))
call("3 images, 2 numbers", images[:3], np.array([1, 2], np.int32))
call("empty batch", images[:0], good[:0])
call("float32 image", images[:3].astype(np.float32), good[:3])
call("int64 number", images[:3], good[:3].astype(np.int64))
call("image 28x27", images[:3, :, :27], good[:3])
call("image without batch axis", images[0], good[:1])
call("number [N, 1]", images[:3], good[:3, None])
report["keras_adder imported"] = any(m.startswith("keras_adder") for m in sys.modules)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def plain_tf_report(trained_run, mnist, tmp_path_factory):
    """What the exported signature answers to good and bad calls, in a fresh process."""
    _, (test_images, _) = mnist
    folder = tmp_path_factory.mktemp("plain_tf")
    np.save(folder / "images.npy", test_images[:32])
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TF, trained_run["export_path"], folder / "images.npy"],
        capture_output=True, text=True, cwd=folder, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plain_tensorflow_answers_like_keras_without_keras_adder(
    plain_tf_report, trained_model, mnist
):
    _, (test_images, test_labels) = mnist
    report = plain_tf_report
    assert report["keras_adder imported"] is False
    assert report["inputs"] == {"image": ["uint8", [None, 28, 28]], "number": ["int32", [None]]}
    good = report["good"]
    assert {name: good[name][:2] for name in good} == {
        "digit": ["int32", [32]], "sum": ["int32", [32]],
        "digit_probabilities": ["float32", [32, 10]],
        "sum_probabilities": ["float32", [32, 19]],
    }
    numbers = np.arange(32, dtype=np.int32) % 10
    expected = trained_model.predict(model_inputs(test_images[:32], numbers), verbose=0)
    np.testing.assert_allclose(good["digit_probabilities"][2], expected["digit"], atol=1e-5)
    np.testing.assert_allclose(good["sum_probabilities"][2], expected["sum"], atol=1e-5)
    np.testing.assert_array_equal(good["digit"][2], expected["digit"].argmax(axis=1))
    np.testing.assert_array_equal(good["sum"][2], expected["sum"].argmax(axis=1))
    assert (np.array(good["digit"][2]) == test_labels[:32]).mean() >= 0.9


def test_empty_batch_gives_empty_outputs(plain_tf_report):
    empty = plain_tf_report["empty batch"]
    assert "error" not in empty, empty
    assert {name: value[1] for name, value in empty.items()} == {
        "digit": [0], "sum": [0], "digit_probabilities": [0, 10], "sum_probabilities": [0, 19],
    }


@pytest.mark.parametrize("case, expected", [
    ("number 10", ["number must be an integer from 0 to 9", "[1 10 3]"]),
    ("number -1", ["number must be an integer from 0 to 9", "[-1 2 3]"]),
    ("3 images, 2 numbers", ["image and number must have the same batch size", "[3]", "[2]"]),
    ("image 28x27", ["Shape of tensor image [3,28,27] is not compatible with expected "
                     "shape [?,28,28]"]),
    ("image without batch axis", ["Shape of tensor image [28,28] is not compatible"]),
    ("number [N, 1]", ["Shape of tensor number [3,1] is not compatible with expected "
                       "shape [?]"]),
    ("float32 image", ["expected to be a uint8 tensor but is a float tensor"]),
    ("int64 number", ["expected to be a int32 tensor but is a int64 tensor"]),
])
def test_bad_calls_fail_with_invalid_argument_saying_why(plain_tf_report, case, expected):
    answer = plain_tf_report[case]
    assert answer.get("error") == "InvalidArgumentError", answer
    for text in expected:
        assert text in answer["message"]


# --- The REST example bodies, parsed the way TF Serving parses JSON ---------------------


def mnist_test_index(image, test_images):
    matches = np.flatnonzero((test_images == image).all(axis=(1, 2)))
    assert len(matches) >= 1, "example image is not an MNIST test image"
    return int(matches[0])


@pytest.mark.parametrize("name", ["instances.json", "inputs.json"])
def test_example_rest_bodies_get_the_right_answers(name, trained_run, mnist):
    import tensorflow as tf

    _, (test_images, test_labels) = mnist
    body = json.loads((EXAMPLES / name).read_text())
    serve = tf.saved_model.load(trained_run["export_path"]).signatures["serving_default"]
    inputs = tensors_from_rest_body(body, serve.structured_input_signature[1])
    response = rest_response(body, serve(**{k: tf.constant(v) for k, v in inputs.items()}))
    json.dumps(response)  # what the server sends back is plain JSON

    if "instances" in body:
        answers = response["predictions"]
    else:
        columns = response["outputs"]
        answers = [dict(zip(columns, values)) for values in zip(*columns.values())]
    assert 1 <= len(answers) <= 5  # small, readable examples
    for image, number, answer in zip(inputs["image"], inputs["number"], answers):
        label = int(test_labels[mnist_test_index(image, test_images)])
        assert answer["digit"] == label
        assert answer["sum"] == label + number
        assert len(answer["digit_probabilities"]) == 10
        assert len(answer["sum_probabilities"]) == 19
        assert answer["digit_probabilities"][label] > 0.5


def test_example_bodies_are_what_write_examples_makes(mnist, tmp_path, capsys):
    """The committed bodies are exactly regenerable from their MNIST images and numbers."""
    _, (test_images, _) = mnist
    body = json.loads((EXAMPLES / "inputs.json").read_text())["inputs"]
    indices = [mnist_test_index(np.array(image), test_images) for image in body["image"]]
    predict.main(["--mnist-test-index", *map(str, indices),
                  "--number", *map(str, body["number"]), "--write-examples", str(tmp_path)])
    for name in ("instances.json", "inputs.json"):
        assert (tmp_path / name).read_text() == (EXAMPLES / name).read_text()
    assert "wrote" in capsys.readouterr().out


def test_models_config_serves_the_default_export_dir():
    from keras_adder.core.constants import DEFAULT_EXPORT_DIR as EXPORT_DIR

    config = (REPO / "saved_models" / "models.config").read_text()
    assert 'name: "keras_adder"' in config
    assert f'base_path: "/models/{Path(EXPORT_DIR).name}"' in config
    assert 'model_platform: "tensorflow"' in config
    assert Path(EXPORT_DIR).parent == Path("saved_models")  # the folder mounted at /models


# --- Atomic, versioned export -----------------------------------------------------------


def snapshot(folder):
    """Every path under `folder` with its bytes (None for directories)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture
def base_with_version_1(trained_run, tmp_path):
    """A SavedModel base path that already serves version 1 (a copy of the trained export)."""
    base = tmp_path / "models"
    shutil.copytree(trained_run["export_path"], base / "1")
    return base


def _fail_check(*args):
    raise RuntimeError("simulated failure while checking the export")


def _interrupt_check(*args):
    raise KeyboardInterrupt


def _half_write(obj, path, **kwargs):
    Path(path).mkdir(exist_ok=True)
    (Path(path) / "saved_model.pb").write_bytes(b"\x08\x01 half")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where, patch, raised, message", [
    ("check_export", _fail_check, KerasAdderError,
     "failed, nothing was written: simulated failure while checking the export"),
    ("tf.saved_model.save", _half_write, KerasAdderError,
     "failed, nothing was written: [Errno 28] No space left on device"),
    ("check_export", _interrupt_check, KeyboardInterrupt, None),
])
def test_failed_export_leaves_no_version_and_no_staging(
    base_with_version_1, trained_model, mnist, monkeypatch, where, patch, raised, message
):
    import tensorflow as tf

    _, (test_images, _) = mnist
    if where == "tf.saved_model.save":  # what Keras' ExportArchive.write_out calls
        monkeypatch.setattr(tf.saved_model, "save", patch)
    else:
        monkeypatch.setattr(saved_model, where, patch)
    before = snapshot(base_with_version_1)
    with pytest.raises(raised) as error:
        saved_model.export_saved_model(trained_model, base_with_version_1,
                                  check_images=test_images[:8])
    if message:
        assert message in str(error.value)
        assert str(base_with_version_1 / "2") in str(error.value)
    assert snapshot(base_with_version_1) == before  # no 2/, no .staging-*, 1/ untouched


def test_export_takes_the_next_version_and_never_overwrites(
    base_with_version_1, trained_model, mnist, monkeypatch
):
    import tensorflow as tf

    _, (test_images, test_labels) = mnist
    version_1 = snapshot(base_with_version_1 / "1")
    with pytest.raises(KerasAdderError, match="1 already exists; not overwriting it"):
        saved_model.export_saved_model(trained_model, base_with_version_1, version=1,
                                  check_images=test_images[:8])
    path = saved_model.export_saved_model(trained_model, base_with_version_1,
                                     check_images=test_images[:8])
    assert path == base_with_version_1 / "2"
    assert list(saved_model.existing_versions(base_with_version_1)) == [1, 2]
    assert sorted(p.name for p in base_with_version_1.iterdir()) == ["1", "2"]
    assert snapshot(base_with_version_1 / "1") == version_1
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    digits = serve(image=tf.constant(test_images[:16]),
                   number=tf.zeros([16], tf.int32))["digit"].numpy()
    assert (digits == test_labels[:16]).mean() >= 0.9

    # A version 3 that another exporter writes while this one is being checked.
    def racing_check(path, *args):
        (base_with_version_1 / "3").mkdir()
        (base_with_version_1 / "3" / "saved_model.pb").write_bytes(b"someone else's")

    monkeypatch.setattr(saved_model, "check_export", racing_check)
    with pytest.raises(KerasAdderError, match="export to .*3 failed, nothing was written"):
        saved_model.export_saved_model(trained_model, base_with_version_1,
                                  check_images=test_images[:8])
    assert (base_with_version_1 / "3" / "saved_model.pb").read_bytes() == b"someone else's"
    assert sorted(p.name for p in base_with_version_1.iterdir()) == ["1", "2", "3"]


def test_export_cli_refuses_an_existing_version(base_with_version_1, trained_run, capsys):
    before = snapshot(base_with_version_1)
    with pytest.raises(SystemExit) as exit_info:
        run(export.main, [trained_run["keras_path"], "--export-dir", str(base_with_version_1),
                          "--export-version", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: export version {base_with_version_1 / '1'} already exists; not overwriting it"
    )
    assert snapshot(base_with_version_1) == before
