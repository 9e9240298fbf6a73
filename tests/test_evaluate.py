"""Exhaustive evaluation of the shared briefly trained model, checked by recounting."""

import json
from pathlib import Path

import numpy as np
import pytest

from keras_adder.cli import run
from keras_adder.core.constants import NUM_DIGITS, NUM_SUMS
from keras_adder.data.pipeline import model_inputs, split_validation
from keras_adder.evaluate import main
from keras_adder.reports.exhaustive import EVALUATION_FILE, evaluate, summarize

FIGURES = ("confusion_digit.png", "confusion_sum.png", "predictions.png", "misclassified.png")
KERAS_IMAGES = 1_000  # the .keras comparison runs on the first images only, to stay fast


@pytest.fixture(scope="module")
def exhaustive(trained_run, tmp_path_factory):
    """The full 100,000-pair evaluation of the exported model, from its base path."""
    output_dir = tmp_path_factory.mktemp("evaluation")
    base_path = Path(trained_run["export_path"]).parent
    summary, predictions = evaluate(base_path, output_dir=output_dir, verbose=0)
    return summary, predictions, output_dir


def test_base_path_means_newest_version_and_json_is_written(exhaustive, trained_run):
    summary, _, output_dir = exhaustive
    assert summary["model"] == trained_run["export_path"]
    assert summary["model_kind"] == "saved_model"
    assert json.loads((output_dir / EVALUATION_FILE).read_text()) == summary
    for name in FIGURES:
        assert (output_dir / name).stat().st_size > 10_000, name
    assert not list(output_dir.glob(".*")), "temporary files left behind"


def test_numbers_agree_with_an_independent_count(exhaustive, mnist):
    summary, predictions, _ = exhaustive
    _, (_, labels) = mnist
    digit, total = predictions["digit"], predictions["sum"]  # [image, number]
    assert digit.shape == total.shape == (10_000, NUM_DIGITS)
    numbers = np.arange(NUM_DIGITS)
    true_sum = labels[:, None] + numbers[None, :]

    assert summary["images"] == 10_000 and summary["pairs"] == 100_000
    digit_accuracy = np.count_nonzero(digit == labels[:, None]) / 100_000
    sum_accuracy = np.count_nonzero(total == true_sum) / 100_000
    assert summary["digit_accuracy"] == pytest.approx(digit_accuracy)
    assert summary["sum_accuracy"] == pytest.approx(sum_accuracy)
    assert summary["sum_minus_digit_accuracy"] == pytest.approx(sum_accuracy - digit_accuracy)
    consistent = sum(
        int(total[i, n] == digit[i, n] + n) for i in range(10_000) for n in range(NUM_DIGITS)
    )
    assert summary["consistency"] == pytest.approx(consistent / 100_000)
    for n in range(NUM_DIGITS):
        expected = np.mean(total[:, n] == labels + n)
        assert summary["sum_accuracy_by_number"][n] == pytest.approx(expected)
    for d in range(NUM_DIGITS):
        expected = np.mean(digit[labels == d] == d)
        assert summary["digit_accuracy_by_class"][d] == pytest.approx(expected)

    digit_confusion = np.array(summary["digit_confusion"])
    sum_confusion = np.array(summary["sum_confusion"])
    assert digit_confusion.shape == (NUM_DIGITS, NUM_DIGITS)
    assert sum_confusion.shape == (NUM_SUMS, NUM_SUMS)
    assert digit_confusion.sum() == sum_confusion.sum() == 100_000
    # Every image is counted once per number, in the row of its true digit.
    assert list(digit_confusion.sum(axis=1)) == list(NUM_DIGITS * np.bincount(labels, minlength=10))
    assert np.trace(digit_confusion) == np.count_nonzero(digit == labels[:, None])
    assert list(sum_confusion.sum(axis=1)) == list(np.bincount(true_sum.ravel(), minlength=19))
    assert np.trace(sum_confusion) == np.count_nonzero(total == true_sum)

    wrong = [i for i in range(10_000) if any(digit[i] != labels[i])]
    assert summary["misclassified_images"] == wrong
    for i, guess in zip(wrong, summary["misclassified_as"]):
        assert guess != labels[i] and guess in digit[i]


def test_predictions_are_the_models_answers_for_each_pair(exhaustive, trained_model, mnist):
    """Recompute random (image, number) pairs with the Keras model: the pairing is right."""
    _, predictions, _ = exhaustive
    _, (images, _) = mnist
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(images), 300)
    numbers = rng.integers(0, NUM_DIGITS, 300)
    answers = trained_model(model_inputs(images[index], numbers), training=False)
    assert np.array_equal(np.argmax(answers["digit"], -1), predictions["digit"][index, numbers])
    assert np.array_equal(np.argmax(answers["sum"], -1), predictions["sum"][index, numbers])


def test_digit_accuracy_matches_training_test_figure(exhaustive, trained_run):
    # The digit does not depend on the number, so the exhaustive digit accuracy is
    # the test accuracy training measured with model.evaluate (up to float32 sums).
    summary, _, _ = exhaustive
    assert summary["digit_accuracy"] == pytest.approx(
        trained_run["test"]["digit_accuracy"], abs=1e-4
    )


def test_keras_file_gives_the_same_results(exhaustive, trained_run, mnist, tmp_path, capsys):
    _, saved_predictions, _ = exhaustive
    _, (_, labels) = mnist
    summary = run(main, [trained_run["keras_path"], "--limit", str(KERAS_IMAGES),
                         "--output-dir", str(tmp_path), "--no-figures"])
    report = capsys.readouterr().out
    assert "digit accuracy" in report and "consistency" in report
    assert f"{KERAS_IMAGES:,} images" in report
    assert summary["model_kind"] == "keras"
    assert json.loads((tmp_path / EVALUATION_FILE).read_text()) == summary
    assert not list(tmp_path.glob("*.png"))

    # The same numbers as the SavedModel's predictions for those images.
    digit = saved_predictions["digit"][:KERAS_IMAGES].ravel()
    total = saved_predictions["sum"][:KERAS_IMAGES].ravel()
    image_index = np.repeat(np.arange(KERAS_IMAGES), NUM_DIGITS)
    numbers = np.tile(np.arange(NUM_DIGITS), KERAS_IMAGES)
    expected = summarize(labels[:KERAS_IMAGES], image_index, numbers, digit, total)
    for key, value in expected.items():
        assert summary[key] == value, key


def test_validation_split(trained_run, mnist, tmp_path):
    (train_images, train_labels), _ = mnist
    _, (_, val_labels) = split_validation(train_images, train_labels)
    summary, predictions = evaluate(trained_run["export_path"], split="validation", limit=300,
                                    output_dir=tmp_path, figures=False, verbose=0)
    assert summary["split"] == "validation"
    assert (summary["images"], summary["pairs"]) == (300, 3_000)
    rows = np.array(summary["digit_confusion"]).sum(axis=1)
    assert list(rows) == list(NUM_DIGITS * np.bincount(val_labels[:300], minlength=10))
    assert predictions["digit"].shape == (300, NUM_DIGITS)


def test_summarize_on_a_hand_made_case():
    labels = np.array([3, 7])
    image_index = np.array([0, 0, 1, 1])
    numbers = np.array([0, 5, 1, 9])
    digit = np.array([3, 8, 7, 7])  # image 0 read as 8 once
    # Pair 1 is wrong but consistent (8 + 5 = 13), pair 2 wrong and inconsistent.
    total = np.array([3, 13, 9, 16])
    summary = summarize(labels, image_index, numbers, digit, total)
    assert summary["digit_accuracy"] == 0.75
    assert summary["sum_accuracy"] == 0.5
    assert summary["consistency"] == 0.75
    assert summary["misclassified_images"] == [0]
    assert summary["misclassified_as"] == [8]
    assert summary["sum_accuracy_by_number"][5] == 0.0
    assert summary["sum_accuracy_by_number"][9] == 1.0


def _fails(argv, capsys, *words):
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ")
    for word in words:
        assert word in message


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, capsys, trained_run):
    out = tmp_path / "out"
    _fails([str(tmp_path / "missing"), "--output-dir", str(out)], capsys, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails([str(empty), "--output-dir", str(out)], capsys, str(empty), "SavedModel")
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_text("not a model")
    _fails([str(not_a_model), "--output-dir", str(out)], capsys, str(not_a_model))
    text = tmp_path / "model.txt"
    text.write_text("hello")
    _fails([str(text), "--output-dir", str(out)], capsys, ".keras")
    assert not out.exists()

    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    _fails([trained_run["export_path"], "--output-dir", str(a_file / "sub")], capsys,
           "output directory")
    assert a_file.read_text() == "keep me"
    with pytest.raises(SystemExit) as exit_info:
        main([trained_run["export_path"], "--limit", "0"])
    assert exit_info.value.code == 2
