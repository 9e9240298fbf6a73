"""The bad-input battery: every row of the README's "Bad input" table.

Each command-line row runs the CLI's `main` through `keras_adder.cli.run`, exactly as
`python -m keras_adder.<cli>` does, and checks the one-line message on stderr, exit
code 2, and that nothing under the test's folder was created, changed or removed.
Train rows carry `--epochs 1 --train-examples 64`, so a row that wrongly passes costs
seconds, not a full training. The SavedModel rows send bad requests to the serving
signature, as TF Serving would.
"""

import gzip
import json

import numpy as np
import pytest

from keras_adder import evaluate, export, predict, train
from keras_adder.cli import run
from keras_adder.recipe import Recipe

QUICK = ["--epochs", "1", "--train-examples", "64"]
MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(array, magic):
    """An uncompressed IDX file: magic, one big-endian uint32 per dimension, the bytes."""
    array = np.asarray(array, np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def data_dir_with(tmp, data_dir, replace, content):
    """A copy of the MNIST folder (as links) where file `replace` (a name of MNIST_NAMES,
    optionally + ".gz") is a new file holding `content`."""
    folder = tmp / "mnist"
    folder.mkdir()
    # The replaced file is never a link: writing through one would change the real data.
    (folder / replace).write_bytes(content)
    for name in MNIST_NAMES:
        if not replace.startswith(name):
            (folder / f"{name}.gz").symlink_to(data_dir / f"{name}.gz")
    return folder


def real_labels(data_dir):
    return gzip.decompress((data_dir / "train-labels-idx1-ubyte.gz").read_bytes())


# --- Rows: name -> (cli, setup(tmp, data_dir) -> argv, expected part of the message) ---


def _bad_data(replace, make_content):
    def setup(tmp, data_dir):
        folder = data_dir_with(tmp, data_dir, replace, make_content(data_dir))
        return [*QUICK, "--data-dir", str(folder), "--run-dir", str(tmp / "run"),
                "--export-dir", str(tmp / "export")]
    return setup


def _train(*extra):
    def setup(tmp, data_dir):
        return [*QUICK, "--run-dir", str(tmp / "run"), "--export-dir", str(tmp / "export"),
                *extra]
    return setup


def _labels_with_ten(data_dir):
    labels = np.frombuffer(real_labels(data_dir), np.uint8, offset=8).copy()
    labels[123] = 10
    return idx_bytes(labels, 2049)


def _renamed_files(tmp, data_dir):
    folder = tmp / "mnist"
    folder.mkdir()
    for name in MNIST_NAMES:  # the dot instead of the dash, as some mirrors name them
        (folder / f"{name.replace('-idx', '.idx')}.gz").symlink_to(data_dir / f"{name}.gz")
    return [*QUICK, "--data-dir", str(folder), "--run-dir", str(tmp / "run")]


def _data_dir_is_a_file(tmp, data_dir):
    (tmp / "mnist.zip").write_bytes(b"PK\x03\x04")
    return [*QUICK, "--data-dir", str(tmp / "mnist.zip"), "--run-dir", str(tmp / "run")]


def _run_dir_under_a_file(tmp, data_dir):
    (tmp / "notes.txt").write_text("a file, not a folder\n")
    return [*QUICK, "--run-dir", str(tmp / "notes.txt" / "run")]


def _export_dir_under_a_file(tmp, data_dir):
    (tmp / "notes.txt").write_text("a file, not a folder\n")
    return [*QUICK, "--run-dir", str(tmp / "run"), "--export-dir", str(tmp / "notes.txt" / "m")]


def _existing_version(tmp, data_dir):
    (tmp / "export" / "3").mkdir(parents=True)
    (tmp / "export" / "3" / "saved_model.pb").write_bytes(b"served right now")
    return [*QUICK, "--run-dir", str(tmp / "run"), "--export-dir", str(tmp / "export"),
            "--export-version", "3"]


def _resume_with_other_settings(tmp, data_dir):
    (tmp / "run").mkdir()
    started = Recipe(arch="reference", epochs=1, train_examples=64)
    (tmp / "run" / "config.json").write_text(json.dumps({"recipe": "default",
                                                         **started.as_dict()}))
    return [*QUICK, "--run-dir", str(tmp / "run"), "--export-dir", str(tmp / "export")]


def _corrupt_keras(tmp, data_dir):
    (tmp / "best.keras").write_bytes(b"PK\x03\x04 this zip ends here")
    return [str(tmp / "best.keras"), "--export-dir", str(tmp / "export")]


def _predict(*extra, npy=None):
    def setup(tmp, data_dir):
        args = list(extra)
        if npy is not None:
            np.save(tmp / "request.npy", npy)
            args.insert(0, str(tmp / "request.npy"))
        return args
    return setup


def _empty_version(tmp, data_dir):
    (tmp / "export" / "1").mkdir(parents=True)  # an export that was never completed
    return [str(tmp / "export")]


def _h5_model(tmp, data_dir):
    (tmp / "model.h5").write_bytes(b"\x89HDF\r\n")  # the legacy format
    return [str(tmp / "model.h5")]


def _evaluate_into_a_file(tmp, data_dir):
    from keras_adder.model import build_model

    build_model("compact").save(tmp / "model.keras")
    (tmp / "notes.txt").write_text("a file, not a folder\n")
    return [str(tmp / "model.keras"), "--output-dir", str(tmp / "notes.txt" / "eval")]


CLI_ROWS = {
    # The data loader, through the training CLI.
    "missing data dir": (train, lambda tmp, data: [*QUICK, "--data-dir", str(tmp / "nowhere")],
                         "does not exist"),
    "data dir is a file": (train, _data_dir_is_a_file, "is not a directory"),
    "wrong file names": (train, _renamed_files, "missing MNIST file train-images-idx3-ubyte"),
    "truncated gzip": (train, _bad_data("train-labels-idx1-ubyte.gz",
                                        lambda data: (data / "train-labels-idx1-ubyte.gz")
                                        .read_bytes()[:5000]),
                       "corrupt or truncated gzip"),
    "not an IDX file": (train, _bad_data("train-labels-idx1-ubyte", lambda data: b"<html>"),
                        "not an unsigned-byte IDX file"),
    "wrong IDX magic (labels as images)": (
        train, _bad_data("train-images-idx3-ubyte", real_labels),
        "wrong IDX magic number 2049 (expected 2051)"),
    "truncated IDX data": (train, _bad_data("train-labels-idx1-ubyte",
                                            lambda data: real_labels(data)[:-10]),
                           "does not match its header"),
    "label out of range": (train, _bad_data("train-labels-idx1-ubyte", _labels_with_ten),
                           "label 10 is out of range"),
    "image/label count mismatch": (
        train, _bad_data("train-labels-idx1-ubyte",
                         lambda data: idx_bytes(np.zeros(59_999), 2049)),
        "IDX header declares shape (59999,), MNIST's is (60000,)"),
    "images not 28x28": (train, _bad_data("t10k-images-idx3-ubyte",
                                          lambda data: idx_bytes(np.zeros((10_000, 28, 27)),
                                                                 2051)),
                         "declares shape (10000, 28, 27), MNIST's is (10000, 28, 28)"),
    # Training flags.
    "zero epochs": (train, lambda tmp, data: ["--epochs", "0"], "epochs 0 must be at least 1"),
    "negative epochs": (train, lambda tmp, data: ["--epochs", "-3"], "epochs -3 must be at least 1"),
    "zero batch size": (train, lambda tmp, data: ["--batch-size", "0"],
                        "batch size 0 must be at least 1"),
    "batch size not a number": (train, lambda tmp, data: ["--batch-size", "big"],
                                "'big' is not an integer"),
    "negative learning rate": (train, lambda tmp, data: ["--learning-rate=-0.1"],
                               "learning rate -0.1 must be a positive number"),
    "unknown arch": (train, lambda tmp, data: ["--arch", "resnet"], "invalid choice: 'resnet'"),
    "more train examples than images": (train, _train("--train-examples", "60000"),
                                        "train examples 60000 is outside 1-55,000"),
    "unwritable --run-dir (under a file)": (train, _run_dir_under_a_file,
                                            "notes.txt is not a directory"),
    "unwritable --export-dir (under a file)": (train, _export_dir_under_a_file,
                                               "notes.txt is not a directory"),
    "unwritable --run-dir (/proc)": (train, lambda tmp, data: [*QUICK, "--run-dir",
                                                               "/proc/keras-adder-run"],
                                     "cannot create run directory /proc/keras-adder-run"),
    "existing export version": (train, _existing_version, "already exists; not overwriting it"),
    "resume with other settings": (train, _resume_with_other_settings,
                                   "started with other settings (arch 'reference' -> "
                                   "'compact'); resume it with the same ones"),
    "multiworker without --run-dir": (train, lambda tmp, data: [*QUICK, "--strategy",
                                                                "multiworker"],
                                      "--strategy multiworker needs --run-dir"),
    "multiworker without TF_CONFIG": (train, _train("--strategy", "multiworker"),
                                      "needs the TF_CONFIG environment variable"),
    "TF_CONFIG not JSON": (train, _train("--strategy", "multiworker"), "TF_CONFIG is not JSON"),
    "TF_CONFIG without a task": (train, _train("--strategy", "multiworker"),
                                 "TF_CONFIG has no 'task' entry"),
    "TF_CONFIG task not in cluster": (train, _train("--strategy", "multiworker"),
                                      "TF_CONFIG task worker 2 is not in its cluster"),
    # Exporting a .keras file.
    "corrupt .keras file": (export, _corrupt_keras, "not a .keras model (not a zip archive"),
    "missing .keras file": (export, lambda tmp, data: [str(tmp / "best.keras")],
                            "does not exist"),
    # Evaluating a model.
    "evaluate: missing model": (evaluate, lambda tmp, data: [str(tmp / "nowhere")],
                                "does not exist"),
    "evaluate: model is not a .keras file": (evaluate, _h5_model,
                                             "is a file but not a .keras model"),
    "evaluate: version folder without saved_model.pb": (evaluate, _empty_version,
                                                        "highest version has no saved_model.pb"),
    "evaluate: zero --limit": (evaluate, lambda tmp, data: ["model.keras", "--limit", "0"],
                               "0 must be at least 1"),
    "evaluate: --output-dir under a file": (evaluate, _evaluate_into_a_file,
                                            "cannot create output directory"),
    # Asking a SavedModel through the predict CLI.
    "number outside 0-9": (predict, _predict("--number", "12", npy=np.zeros((28, 28))),
                           "number 12 is outside 0-9"),
    "number not an integer": (predict, _predict("--number", "4.5", npy=np.zeros((28, 28))),
                              "number '4.5' is not an integer"),
    "request image of the wrong shape": (predict, _predict("--number", "3",
                                                           npy=np.zeros((28, 27))),
                                         "is not [28, 28] or [N, 28, 28]"),
    "request pixels outside 0-255": (predict, _predict("--number", "3",
                                                       npy=np.full((28, 28), 300.0)),
                                     "values must be 0-255"),
    "no SavedModel at --model": (predict, _predict("--number", "3", "--model", "nowhere",
                                                   npy=np.zeros((28, 28))),
                                 "no SavedModel there"),
}

TF_CONFIGS = {
    "TF_CONFIG not JSON": "{cluster: worker}",
    "TF_CONFIG without a task": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}),
    "TF_CONFIG task not in cluster": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
         "task": {"type": "worker", "index": 2}}),
}


def snapshot(folder):
    """Everything under `folder`: file bytes, link targets, directories."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[path] = ("link", str(path.readlink()))
        elif path.is_dir():
            state[path] = ("dir", None)
        else:
            state[path] = ("file", path.read_bytes())
    return state


@pytest.mark.parametrize("name", CLI_ROWS)
def test_bad_cli_input(name, tmp_path, data_dir, monkeypatch, capsys):
    cli, setup, expected = CLI_ROWS[name]
    monkeypatch.chdir(tmp_path)  # default paths (runs/, saved_models/) land here
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if name in TF_CONFIGS:
        monkeypatch.setenv("TF_CONFIG", TF_CONFIGS[name])
    argv = setup(tmp_path, data_dir)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(cli.main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in message
    assert message.startswith("error:") or ": error: " in message  # ours / argparse's
    assert snapshot(tmp_path) == before  # nothing created, changed or removed


# --- Bad requests to the exported SavedModel (what TF Serving answers with HTTP 400) ----


@pytest.fixture(scope="module")
def serving_signature(tmp_path_factory):
    """The serving signature of an exported (untrained: only its checks matter) model."""
    import tensorflow as tf

    from keras_adder.saved_model import export_saved_model
    from keras_adder.model import build_model

    folder = tmp_path_factory.mktemp("served")
    path = export_saved_model(build_model("compact"), folder,
                              check_images=np.zeros((4, 28, 28), np.uint8))
    return tf.saved_model.load(str(path)).signatures["serving_default"]


REQUEST_ROWS = {
    "number 10": (np.zeros((1, 28, 28), np.uint8), [10], "number must be an integer from 0 to 9"),
    "number -1": (np.zeros((1, 28, 28), np.uint8), [-1], "number must be an integer from 0 to 9"),
    "image 28x27": (np.zeros((1, 28, 27), np.uint8), [3],
                    "[1,28,27] is not compatible with expected shape [?,28,28]"),
    "image without batch axis": (np.zeros((28, 28), np.uint8), [3],
                                 "[28,28] is not compatible with expected shape [?,28,28]"),
    "2 images, 1 number": (np.zeros((2, 28, 28), np.uint8), [3],
                           "image and number must have the same batch size"),
    "float32 image": (np.zeros((1, 28, 28), np.float32), [3],
                      "expected to be a uint8 tensor but is a float tensor"),
}


@pytest.mark.parametrize("name", REQUEST_ROWS)
def test_bad_request_to_saved_model(name, serving_signature):
    import tensorflow as tf

    image, number, expected = REQUEST_ROWS[name]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:  # HTTP 400 in TF Serving
        serving_signature(image=tf.constant(image), number=tf.constant(number, tf.int32))
    assert expected in str(error.value)
