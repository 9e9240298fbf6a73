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

import numpy as np
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


def run_check(python, model, expected, check=CHECK):
    result = subprocess.run([str(python), str(check), str(model), str(expected)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


CHECKS = ("loads", "answers", "refuses", "empty", "pictures")


def assert_served(returncode, report):
    assert report["errors"] == []
    assert [report[check] for check in CHECKS] == [True] * len(CHECKS)
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
    with np.load(expected) as npz:
        arrays = dict(npz)
    arrays["sum_probabilities"] = arrays["sum_probabilities"] + 1e-3
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    returncode, report = run_check(sys.executable, trained_run["export_path"], tampered)
    assert [report[check] for check in CHECKS] == [True, False, True, True, True]
    assert report["errors"][0].startswith("answers: ")
    assert returncode == 1


@pytest.mark.slow
def test_pictures_are_sent_through_serving_image(expected):
    """What the pictures check sends: 4x-enlarged MNIST digits as PNG and JPEG files and
    a blank sheet, answered by the project's TensorFlow (the blank one with no ink)."""
    with np.load(expected) as npz:
        arrays = dict(npz)
    starts = np.cumsum([0, *arrays["picture_lengths"][:-1]])
    kinds = [arrays["picture_bytes"][start:start + 4].tobytes() for start in starts]
    assert kinds == [b"\x89PNG"] * 6 + [b"\xff\xd8\xff\xe0"] * 2 + [b"\x89PNG"]
    assert arrays["picture_ink_found"].tolist() == [True] * 8 + [False]
    assert arrays["picture_digit"][-1] == arrays["picture_sum"][-1] == -1
    # The briefly trained model answers most enlarged digits as serving_default answers
    # their raw pixels.
    assert np.mean(arrays["picture_digit"][:8] == arrays["digit"][:8]) >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize("tamper", ["digit", "image", "refusal"])
def test_check_fails_on_pictures_that_differ(trained_run, expected, tmp_path, tamper):
    """The pictures check can fail: a changed answer or what the model saw, or a request
    that is no longer refused (a valid picture in place of the bytes that are not one)."""
    with np.load(expected) as npz:
        arrays = dict(npz)
    if tamper == "refusal":
        script = tmp_path / "check.py"
        source = CHECK.read_text()
        assert source.count("[pictures[0], NOT_A_PICTURE]") == 1
        script.write_text(source.replace("[pictures[0], NOT_A_PICTURE]",
                                         "[pictures[0], pictures[1]]"))
        (tmp_path / "session.py").write_text((CHECK.parent / "session.py").read_text())
    else:
        script = CHECK
        key = f"picture_{tamper}"
        arrays[key] = arrays[key].copy()
        arrays[key][0] += 1
    np.savez(tmp_path / "tampered.npz", **arrays)
    returncode, report = run_check(sys.executable, trained_run["export_path"],
                                   tmp_path / "tampered.npz", script)
    assert [report[check] for check in CHECKS] == [True, True, True, True, False]
    assert report["errors"][0].startswith("pictures: ")
    assert returncode == 1


# --- The MNIST-style preparation (keras_adder/data/preparation.py) --------------------

PREPARATION = REPO / "keras_adder" / "data" / "preparation.py"
PREPARATION_CHECK = REPO / "serving_compat" / "preparation_check.py"


def preparation_pictures(test_images):
    """Pictures that take every branch of the preparation, with their modes: an MNIST
    image as it is and forced, one redrawn dark on a wide sheet under uneven light, a
    thin-pen and a marker-thick digit (dilation, erosion), a coarse 8x8 scan, two digits
    side by side, a blank sheet."""
    from PIL import Image, ImageDraw

    from keras_adder.data import preparation

    rng = np.random.default_rng(36)
    big = np.asarray(Image.fromarray(test_images[0]).resize((112, 112)), np.float32)
    sheet = np.linspace(250, 150, 400, dtype=np.float32)[None, :].repeat(260, 0)
    sheet[40:152, 250:362] -= big * 0.5
    sheet += rng.normal(0, 3, sheet.shape).astype(np.float32)
    pens = []
    for width in (2, 40):
        pen = Image.new("L", (400, 400), 255)
        ImageDraw.Draw(pen).line([(120, 40), (280, 40), (170, 360)], fill=0, width=width)
        pens.append(np.asarray(pen, np.float32))
    coarse = np.asarray(Image.fromarray(test_images[1]).resize((8, 8), Image.BOX), np.float32)
    pair = np.concatenate([255 - big, 255 - np.asarray(
        Image.fromarray(test_images[2]).resize((112, 112)), np.float32)], axis=1)
    pictures = [test_images[0], test_images[0], sheet, *pens, coarse, pair,
                np.full((64, 64), 200.0)]
    modes = [preparation.AUTO, preparation.ALWAYS] + [preparation.AUTO] * 6
    return [np.asarray(picture, np.float32) for picture in pictures], modes


@pytest.fixture(scope="module")
def preparation_answers(mnist, tmp_path_factory):
    """The pictures and the project's own TensorFlow's answers, as preparation_check.py
    reads them."""
    from keras_adder.data import preparation

    _, (test_images, _) = mnist
    arrays = {}
    for i, (gray, mode) in enumerate(zip(*preparation_pictures(test_images))):
        out = preparation.prepare(gray, mode)
        arrays.update({f"gray_{i}": gray, f"mode_{i}": np.int32(mode),
                       f"image_{i}": out["image"].numpy(),
                       f"facts_{i}": np.array([int(out[name]) for name in (
                           "prepared", "inverted", "empty", "digits")])})
    path = tmp_path_factory.mktemp("preparation") / "pictures.npz"
    np.savez(path, **arrays)
    return path, arrays


def run_preparation_check(python, pictures):
    result = subprocess.run([str(python), str(PREPARATION_CHECK), str(PREPARATION),
                             str(pictures)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_preparation_pictures_take_every_branch(preparation_answers):
    _, arrays = preparation_answers
    facts = [tuple(arrays[f"facts_{i}"]) for i in range(8)]
    assert facts[0] == (0, 0, 0, 1) and facts[1] == (1, 0, 0, 1)  # as it is; forced
    assert facts[2] == (1, 1, 0, 1)  # dark ink on a lit sheet
    assert facts[6][3] == 2 and facts[7][2] == 1  # two digits; a blank sheet
    assert all(arrays[f"image_{i}"].any() for i in range(7))


def test_preparation_runs_under_oldest_promised_tensorflow(preparation_answers):
    assert OLDEST_PYTHON.is_file(), (
        f"{OLDEST_PYTHON} is missing: build it with `make .venv-serving-compat/.installed` "
        "(`make test` does)")
    returncode, report = run_preparation_check(OLDEST_PYTHON, preparation_answers[0])
    assert report["tensorflow"] == oldest_tensorflow()
    assert report["errors"] == []
    assert report["pictures"] == report["same_facts"] == 8
    assert report["largest_difference"] <= 1
    assert returncode == 0


def test_preparation_check_fails_on_answers_that_differ(preparation_answers, tmp_path):
    _, arrays = preparation_answers
    tampered = dict(arrays, facts_0=arrays["facts_0"] + 1)
    np.savez(tmp_path / "tampered.npz", **tampered)
    returncode, report = run_preparation_check(sys.executable, tmp_path / "tampered.npz")
    assert report["errors"] == [] and report["same_facts"] == 7
    assert returncode == 1
