"""The exported SavedModel, loaded as TF Serving loads it (a Session, the `serve` tag, the
signature run by tensor names), under the project's TensorFlow and under the oldest one
the docs promise (.venv-serving-compat, built by `make test` from
requirements-serving-compat.txt). Each runs serving_compat/check.py in a subprocess
that never imports the project.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving_compat.expect import write_expected

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "serving_compat" / "check.py"
OLDEST_PYTHON = REPO / ".venv-serving-compat" / "bin" / "python"
CHECK_IMAGES = 32


def oldest_tensorflow():
    """The version requirements-serving-compat.txt pins."""
    for line in (REPO / "requirements-serving-compat.txt").read_text().splitlines():
        if line.startswith("tensorflow-cpu=="):
            return line.split("==")[1].strip()
    raise AssertionError("requirements-serving-compat.txt pins no tensorflow-cpu")


@pytest.fixture(scope="module")
def expected(trained_run, mnist, tmp_path_factory):
    """The project's own answers (tf.saved_model.load) for a batch of test images."""
    path = tmp_path_factory.mktemp("serving_compat") / "expected.npz"
    _, (test_images, _) = mnist
    write_expected(trained_run["export_path"], test_images[:CHECK_IMAGES], path)
    return path


def run_check(python, model, expected):
    result = subprocess.run([str(python), str(CHECK), str(model), str(expected)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def assert_served(returncode, report):
    assert report["errors"] == []
    assert (report["loads"], report["answers"], report["refuses"], report["empty"]) == (
        True, True, True, True)
    assert returncode == 0


@pytest.mark.slow
def test_session_loader_under_project_tensorflow(trained_run, expected):
    import tensorflow as tf

    returncode, report = run_check(sys.executable, trained_run["export_path"], expected)
    assert report["tensorflow"] == tf.__version__
    assert_served(returncode, report)


@pytest.mark.slow
def test_session_loader_under_oldest_promised_tensorflow(trained_run, expected):
    assert OLDEST_PYTHON.is_file(), (
        f"{OLDEST_PYTHON} is missing: build it with `make .venv-serving-compat/.installed` "
        "(`make test` does)")
    returncode, report = run_check(OLDEST_PYTHON, trained_run["export_path"], expected)
    assert report["tensorflow"] == oldest_tensorflow()
    assert_served(returncode, report)


@pytest.mark.slow
def test_check_fails_on_answers_that_differ(trained_run, expected, tmp_path):
    """The check can fail: tampered expectations are caught, and the exit code says so."""
    import numpy as np

    with np.load(expected) as npz:
        arrays = dict(npz)
    arrays["sum_probabilities"] = arrays["sum_probabilities"] + 1e-3
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    returncode, report = run_check(sys.executable, trained_run["export_path"], tampered)
    assert (report["loads"], report["answers"], report["refuses"], report["empty"]) == (
        True, False, True, True)
    assert report["errors"][0].startswith("answers: ")
    assert returncode == 1
