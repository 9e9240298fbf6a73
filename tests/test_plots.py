"""The pictures: real PNGs of a sensible size, mistakes marked in red, clear errors."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_adder.core.errors import KerasAdderError
from keras_adder.reports import plots

RUN_FIGURES = ("training_curves.png", "confusion_digit.png", "confusion_sum.png",
               "predictions.png", "misclassified.png")


def _picture(path, min_width=300, min_height=200):
    """The PNG as an RGB array, after checking it is a real, non-blank picture."""
    path = Path(path)
    assert path.stat().st_size > 5_000, f"{path} is suspiciously small"
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).astype(int)
    height, width, _ = pixels.shape
    assert width >= min_width and height >= min_height, (path, width, height)
    assert width <= 2_500 and height <= 2_500, "too large for a README"
    assert pixels.std() > 10, f"{path} is blank"
    return pixels


def _red_pixels(pixels):
    """Pixels close to the colour wrong answers are drawn in (matplotlib's tab:red)."""
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(np.count_nonzero((red > 180) & (green < 90) & (blue < 90)))


def test_training_writes_its_pictures(trained_run):
    run_dir = Path(trained_run["keras_path"]).parent
    for name in RUN_FIGURES:
        _picture(run_dir / name)


def test_training_curves_from_history(trained_run, tmp_path):
    path = plots.plot_training_curves(trained_run["history"], tmp_path / "curves.png")
    _picture(path, min_width=600, min_height=400)


def test_training_curves_refuse_a_bad_history(tmp_path):
    with pytest.raises(KerasAdderError, match="cannot read"):
        plots.plot_training_curves(tmp_path / "missing.csv", tmp_path / "curves.png")
    partial = tmp_path / "partial.csv"
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "digit_loss", "val_loss"])
        writer.writerow([0, 1.0, 0.5, 1.1])
    with pytest.raises(KerasAdderError, match="val_sum_accuracy"):
        plots.plot_training_curves(partial, tmp_path / "curves.png")
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("classes", [10, 19])
def test_confusion_matrix(tmp_path, classes):
    rng = np.random.default_rng(classes)
    matrix = np.diag(rng.integers(100, 5_000, classes)) + rng.poisson(0.3, (classes, classes))
    path = plots.plot_confusion_matrix(matrix, tmp_path / "confusion.png", name="sum")
    _picture(path, min_width=400, min_height=400)


def test_prediction_grid_marks_wrong_answers_in_red(mnist, tmp_path):
    _, (images, labels) = mnist
    images, labels = images[:16], labels[:16].astype(int)
    numbers = np.arange(16) % 10
    right = plots.plot_prediction_grid(images, numbers, labels, labels + numbers,
                                       tmp_path / "right.png", labels=labels)
    assert _red_pixels(_picture(right)) == 0

    digits, sums = labels.copy(), labels + numbers
    digits[3] = (digits[3] + 1) % 10
    sums[7] += 1  # a wrong sum alone must be marked too
    wrong = plots.plot_prediction_grid(images, numbers, digits, sums, tmp_path / "wrong.png",
                                       labels=labels)
    assert _red_pixels(_picture(wrong)) > 500


def test_prediction_grid_with_probabilities_and_unknown_labels(mnist, tmp_path):
    # What `predict --show` draws: some images without a label, probabilities, a cap.
    _, (images, labels) = mnist
    count = 30
    numbers = np.arange(count) % 10
    digits, sums = labels[:count].astype(int), labels[:count] + numbers
    digits[0] = (digits[0] + 1) % 10  # wrong, but its label is unknown: not red
    known = [None] * 10 + list(labels[10:count])
    probabilities = np.full((count, 2), 0.5)
    path = plots.plot_prediction_grid(images[:count], numbers, digits, sums,
                                      tmp_path / "grid.png", labels=known,
                                      probabilities=probabilities, limit=12)
    assert _red_pixels(_picture(path)) == 0

    def red_with(wrong_positions):
        wrong = digits.copy()
        wrong[wrong_positions] = (wrong[wrong_positions] + 1) % 10
        return _red_pixels(_picture(plots.plot_prediction_grid(
            images[:count], numbers, wrong, sums, tmp_path / "grid.png", labels=known,
            probabilities=probabilities, limit=12)))

    shown_wrong = red_with([11])
    assert shown_wrong > 300
    assert red_with([11, 12]) == shown_wrong  # the 13th image is past the limit


def test_misclassified_gallery(mnist, tmp_path):
    _, (images, labels) = mnist
    indices = np.arange(0, 500, 10)
    guesses = (labels[indices] + 1) % 10
    path = plots.plot_misclassified(images, labels, guesses, indices, tmp_path / "wrong.png")
    assert _red_pixels(_picture(path)) > 500
    # A perfect model has an empty gallery, which still is a picture.
    path = plots.plot_misclassified(images, labels, [], [], tmp_path / "none.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_unwritable_picture_fails_clearly_and_leaves_nothing(tmp_path):
    target = tmp_path / "no-such-dir" / "confusion.png"
    with pytest.raises(KerasAdderError, match="cannot write picture"):
        plots.plot_confusion_matrix(np.eye(10, dtype=int), target, name="digit")
    assert not list(tmp_path.rglob("*.png"))
