"""The bad-input battery: every row of the docs' bad-input table (docs/reliability.md).

Each command-line row runs the CLI's `main` through `keras_adder.cli.run`, exactly as
`python -m keras_adder.<cli>` does, and checks exit code 2, one stderr line whose
message (after "error: ") is the table's, word for word, and that nothing under the
test's folder was created, changed or removed. The messages are read from the
hand-written table (tests/doc_table.py), so the code is checked against the docs.
Train rows carry `--epochs 1 --train-examples 64`, so a row that wrongly passes costs
seconds, not a full training. The SavedModel rows send bad requests to the serving
signature, as TF Serving would.
"""

import gzip
import json

import numpy as np
import pytest
from doc_table import bad_input_messages
from training_runs import snapshot

from keras_adder import evaluate, export, predict, train
from keras_adder.cli import run
from keras_adder.core.recipe import Recipe

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


# --- Rows: name -> (cli, setup(tmp, data_dir) -> argv); the message is the docs' ------


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


def _nan_tiff(tmp, data_dir):
    from PIL import Image

    picture = np.full((280, 280), 200.0, np.float32)  # a float (mode F) scan
    picture[40, 50] = np.nan
    Image.fromarray(picture, "F").save(tmp / "nan.tif")
    return [str(tmp / "nan.tif"), "--number", "3"]


def _with_nan(array, row, column):
    array = np.array(array, np.float32)
    array[row, column] = np.nan
    return array


def _empty_version(tmp, data_dir):
    (tmp / "export" / "1").mkdir(parents=True)  # an export that was never completed
    return [str(tmp / "export")]


def _h5_model(tmp, data_dir):
    (tmp / "model.h5").write_bytes(b"\x89HDF\r\n")  # the legacy format
    return [str(tmp / "model.h5")]


def _evaluate_into_a_file(tmp, data_dir):
    from keras_adder.model.architectures import build_model

    build_model("compact").save(tmp / "model.keras")
    (tmp / "notes.txt").write_text("a file, not a folder\n")
    return [str(tmp / "model.keras"), "--output-dir", str(tmp / "notes.txt" / "eval")]


def _data_dir(name):
    return lambda tmp, data: [*QUICK, "--data-dir", str(tmp / name)]


def _flags(*flags):
    return lambda tmp, data: list(flags)


CLI_ROWS = {
    # The data loader, through the training CLI.
    "missing data dir": (train, _data_dir("nowhere")),
    "data dir is a file": (train, _data_dir_is_a_file),
    "wrong file names": (train, _renamed_files),
    "truncated gzip": (train, _bad_data("train-labels-idx1-ubyte.gz",
                                        lambda data: (data / "train-labels-idx1-ubyte.gz")
                                        .read_bytes()[:5000])),
    "not an IDX file": (train, _bad_data("train-labels-idx1-ubyte", lambda data: b"<html>")),
    "wrong IDX magic (labels as images)": (
        train, _bad_data("train-images-idx3-ubyte", real_labels)),
    "truncated IDX data": (train, _bad_data("train-labels-idx1-ubyte",
                                            lambda data: real_labels(data)[:-10])),
    "label out of range": (train, _bad_data("train-labels-idx1-ubyte", _labels_with_ten)),
    "image/label count mismatch": (
        train, _bad_data("train-labels-idx1-ubyte",
                         lambda data: idx_bytes(np.zeros(59_999), 2049))),
    "images not 28x28": (train, _bad_data("t10k-images-idx3-ubyte",
                                          lambda data: idx_bytes(np.zeros((10_000, 28, 27)),
                                                                 2051))),
    # Training flags.
    "zero epochs": (train, _flags("--epochs", "0")),
    "negative epochs": (train, _flags("--epochs", "-3")),
    "zero batch size": (train, _flags("--batch-size", "0")),
    "batch size not a number": (train, _flags("--batch-size", "big")),
    "negative learning rate": (train, _flags("--learning-rate=-0.1")),
    "unknown arch": (train, _flags("--arch", "resnet")),
    "more train examples than images": (train, _train("--train-examples", "60000")),
    "unwritable --run-dir (under a file)": (train, _run_dir_under_a_file),
    "unwritable --export-dir (under a file)": (train, _export_dir_under_a_file),
    "unwritable --run-dir (/proc)": (train, _flags(*QUICK, "--run-dir",
                                                   "/proc/keras-adder-run")),
    "existing export version": (train, _existing_version),
    "resume with other settings": (train, _resume_with_other_settings),
    "multiworker without --run-dir": (train, _flags(*QUICK, "--strategy", "multiworker")),
    "multiworker without TF_CONFIG": (train, _train("--strategy", "multiworker")),
    "TF_CONFIG not JSON": (train, _train("--strategy", "multiworker")),
    "TF_CONFIG without a task": (train, _train("--strategy", "multiworker")),
    "TF_CONFIG task not in cluster": (train, _train("--strategy", "multiworker")),
    # Exporting a .keras file.
    "corrupt .keras file": (export, _corrupt_keras),
    "missing .keras file": (export, lambda tmp, data: [str(tmp / "best.keras")]),
    # Evaluating a model.
    "evaluate: missing model": (evaluate, lambda tmp, data: [str(tmp / "nowhere")]),
    "evaluate: model is not a .keras file": (evaluate, _h5_model),
    "evaluate: version folder without saved_model.pb": (evaluate, _empty_version),
    "evaluate: zero --limit": (evaluate, _flags("model.keras", "--limit", "0")),
    "evaluate: --output-dir under a file": (evaluate, _evaluate_into_a_file),
    # Asking a SavedModel through the predict CLI.
    "number outside 0-9": (predict, _predict("--number", "12", npy=np.zeros((28, 28)))),
    "number not an integer": (predict, _predict("--number", "4.5", npy=np.zeros((28, 28)))),
    "request image of the wrong shape": (predict, _predict("--number", "3",
                                                           npy=np.zeros((28, 27)))),
    "request pixels outside 0-255": (predict, _predict("--number", "3",
                                                       npy=np.full((28, 28), 300.0))),
    "request pixels scaled to 0-1": (predict, _predict("--number", "3",
                                                       npy=np.full((28, 28), 0.5, np.float32))),
    "request pixels only 0 and 1": (predict, _predict("--number", "3",
                                                      npy=np.eye(28, dtype=np.uint8))),
    "request pixels with fractions": (predict, _predict("--number", "3",
                                                        npy=np.full((28, 28), 127.5))),
    "request pixel NaN": (predict, _predict("--number", "3",
                                            npy=_with_nan(np.zeros((28, 28)), 3, 4))),
    "NaN pixel in a float TIFF": (predict, _nan_tiff),
    "missing --model": (predict, _predict("--number", "3", "--model", "nowhere",
                                                   npy=np.zeros((28, 28)))),
}

TF_CONFIGS = {
    "TF_CONFIG not JSON": "{cluster: worker}",
    "TF_CONFIG without a task": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}),
    "TF_CONFIG task not in cluster": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
         "task": {"type": "worker", "index": 2}}),
}


@pytest.mark.parametrize("name", CLI_ROWS)
def test_bad_cli_input(name, tmp_path, data_dir, monkeypatch, capsys):
    cli, setup = CLI_ROWS[name]
    expected = bad_input_messages(tmp_path)[name]  # the docs' words, in full
    monkeypatch.chdir(tmp_path)  # default paths (runs/, saved_models/) land here
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if name in TF_CONFIGS:
        monkeypatch.setenv("TF_CONFIG", TF_CONFIGS[name])
    argv = setup(tmp_path, data_dir)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(cli.main, argv)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") or ": error: " in line  # ours / argparse's
    assert line.split("error: ", 1)[1] == expected
    assert snapshot(tmp_path) == before  # nothing created, changed or removed


def test_every_row_of_the_docs_table_is_tested(tmp_path):
    assert sorted(bad_input_messages(tmp_path)) == sorted(CLI_ROWS)


# --- Bad requests to the exported SavedModel (what TF Serving answers with HTTP 400) ----


@pytest.fixture(scope="module")
def serving_signature(tmp_path_factory):
    """The serving signature of an exported (untrained: only its checks matter) model."""
    import tensorflow as tf

    from keras_adder.model.architectures import build_model
    from keras_adder.serving.saved_model import export_saved_model

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
