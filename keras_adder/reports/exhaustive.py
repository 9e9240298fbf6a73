"""Exhaustive evaluation: every image of a split paired with every number 0-9.

The test split's 10,000 images x 10 numbers are 100,000 (image, number) pairs. A
SavedModel is called through its `serving_default` signature (raw uint8 pixels and
int32 numbers, exactly what TF Serving would get); a `.keras` file through
`model.predict`. The output directory receives evaluation.json:

    model, model_kind ("saved_model" | "keras"), split, images, pairs
    digit_accuracy            share of pairs whose predicted digit is right
    sum_accuracy              share of pairs whose predicted sum is right
    sum_minus_digit_accuracy  the gap between the two (negative: the sum head loses)
    consistency               share of pairs with predicted sum == predicted digit + number
    sum_accuracy_by_number    [10] sum accuracy of the pairs with number 0, 1, ... 9
    digit_accuracy_by_class   [10] digit accuracy of the pairs whose true digit is 0 ... 9
                              (null for a class with no images, e.g. with --limit)
    digit_confusion           [10][10] pair counts, row = true digit, column = predicted
    sum_confusion             [19][19] pair counts, row = true sum, column = predicted
    misclassified_images      indices (into the split) of the images whose digit is
                              wrong with at least one number
    misclassified_as          for each of them, its most frequent wrong digit
    seconds                   how long the predictions took

and the pictures confusion_digit.png, confusion_sum.png, predictions.png and
misclassified.png (see keras_adder.reports.plots).
"""

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.core.constants import (
    EVALUATION_BATCH,
    EVALUATION_DIR,
    EVALUATION_SPLITS,
    MAX_SERVING_BATCH,
    NUM_DIGITS,
    NUM_SUMS,
)
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import make_dir, write_json
from keras_adder.data.pipeline import (
    eval_dataset,
    load_mnist,
    model_inputs,
    paired_numbers,
    split_validation,
)
from keras_adder.reports import plots
from keras_adder.serving.formats import load_model

EVALUATION_FILE = "evaluation.json"
GRID_SIZE = 32
GRID_MISTAKES = 8


# --- Predicting ------------------------------------------------------------------------


def _pair_batches(images, image_index, numbers, batch_size):
    """tf.data batches of (uint8 images, int32 numbers) for the given pairs."""
    images = tf.constant(images, tf.uint8)
    return (
        tf.data.Dataset.from_tensor_slices(
            (np.asarray(image_index, np.int64), np.asarray(numbers, np.int32))
        )
        .batch(batch_size)
        .map(lambda index, number: (tf.gather(images, index), number),
             num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def keras_predictor(model):
    """predict(images, image_index, numbers, *, batch_size, verbose) for a Keras model.

    Returns {"digit": int32 [P], "sum": int32 [P]}: the classes predicted for pair p,
    image `images[image_index[p]]` with number `numbers[p]`.
    """
    def predict(images, image_index, numbers, *, batch_size=EVALUATION_BATCH, verbose=1):
        batches = _pair_batches(images, image_index, numbers, batch_size).map(
            model_inputs, num_parallel_calls=tf.data.AUTOTUNE
        )
        probabilities = model.predict(batches, verbose=verbose)
        return {head: np.argmax(probabilities[head], axis=-1).astype(np.int32)
                for head in ("digit", "sum")}

    return predict


def call_predictor(call):
    """The same predict() for anything called like the serving signature,
    `call(uint8 images, int32 numbers) -> {"digit", "sum", ...}` (a SavedModel, a LiteRT
    or ONNX file), in batches the signature accepts, with a progress bar."""

    def predict(images, image_index, numbers, *, batch_size=EVALUATION_BATCH, verbose=1):
        batch_size = min(batch_size, MAX_SERVING_BATCH)  # the signature's limit
        progress = keras.utils.Progbar(len(numbers), unit_name="pair", verbose=verbose)
        outputs = {"digit": [np.zeros(0, np.int32)], "sum": [np.zeros(0, np.int32)]}
        for start in range(0, len(numbers), batch_size):
            batch = slice(start, start + batch_size)
            served = call(images[image_index[batch]], np.asarray(numbers[batch], np.int32))
            for head in outputs:
                outputs[head].append(np.asarray(served[head], np.int32))
            progress.add(len(numbers[batch]))
        return {head: np.concatenate(parts) for head, parts in outputs.items()}

    return predict


def load_predictor(path):
    """(predict, kind, resolved path) for any model format (serving.formats.load_model)."""
    loaded = load_model(path)
    if loaded.keras_model is not None:  # model.predict over tf.data: bigger batches
        return keras_predictor(loaded.keras_model), loaded.kind, loaded.path
    return call_predictor(loaded.call), loaded.kind, loaded.path


def exhaustive_pairs(count):
    """(image_index, numbers) of every image with every number, image-major:
    pair p is image p // 10 with number p % 10."""
    image_index = np.repeat(np.arange(count, dtype=np.int64), NUM_DIGITS)
    numbers = np.tile(np.arange(NUM_DIGITS, dtype=np.int32), count)
    return image_index, numbers


# --- Counting --------------------------------------------------------------------------


def confusion_matrix(true, predicted, classes):
    """[classes, classes] counts; row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(true), np.asarray(predicted)), 1)
    return matrix


def _share(mask):
    """The share of True values; None (null in JSON) when there are none at all."""
    return float(np.mean(mask)) if np.size(mask) else None


def summarize(labels, image_index, numbers, digit, total):
    """The evaluation.json numbers for pairs (image_index, numbers) and their predictions.

    labels: the true digits of the split's images; digit, total: predicted classes per
    pair. Works for any set of pairs, exhaustive or not.
    """
    labels = np.asarray(labels)
    pair_digit = labels[image_index]
    pair_sum = pair_digit + numbers
    digit_right = digit == pair_digit
    sum_right = total == pair_sum
    digit_accuracy = _share(digit_right)
    sum_accuracy = _share(sum_right)

    # How often each image got each wrong digit, to name its most frequent mistake.
    wrong_counts = np.zeros((len(labels), NUM_DIGITS), np.int64)
    np.add.at(wrong_counts, (image_index[~digit_right], digit[~digit_right]), 1)
    misclassified = np.flatnonzero(wrong_counts.sum(axis=1))
    return {
        "images": int(len(np.unique(image_index))),
        "pairs": int(len(numbers)),
        "digit_accuracy": digit_accuracy,
        "sum_accuracy": sum_accuracy,
        "sum_minus_digit_accuracy": sum_accuracy - digit_accuracy,
        "consistency": _share(total == digit + numbers),
        "sum_accuracy_by_number": [_share(sum_right[numbers == n]) for n in range(NUM_DIGITS)],
        "digit_accuracy_by_class": [_share(digit_right[pair_digit == d])
                                    for d in range(NUM_DIGITS)],
        "digit_confusion": confusion_matrix(pair_digit, digit, NUM_DIGITS).tolist(),
        "sum_confusion": confusion_matrix(pair_sum, total, NUM_SUMS).tolist(),
        "misclassified_images": misclassified.tolist(),
        "misclassified_as": wrong_counts[misclassified].argmax(axis=1).tolist(),
    }


# --- Pictures --------------------------------------------------------------------------


def grid_pairs(labels, image_index, numbers, predicted, candidates,
               size=GRID_SIZE, mistakes=GRID_MISTAKES):
    """Positions of the pairs to draw in the prediction grid: the first candidates,
    then the first wrong ones (a good model rarely errs among the first few)."""
    candidates = np.asarray(candidates)
    truth = labels[image_index[candidates]]
    wrong = ((predicted["digit"][candidates] != truth)
             | (predicted["sum"][candidates] != truth + numbers[candidates]))
    first = candidates[: size - mistakes]
    errors = candidates[size - mistakes:][wrong[size - mistakes:]][:mistakes]
    # Without enough mistakes, fill the grid with further pairs.
    rest = candidates[size - mistakes:][~wrong[size - mistakes:]][: mistakes - len(errors)]
    return np.concatenate([first, np.sort(np.concatenate([errors, rest]))]).astype(np.int64)


def write_figures(output_dir, images, labels, summary, image_index, numbers, predicted,
                  candidates):
    """The evaluation pictures in `output_dir`; returns their paths.

    summary: from summarize() for the pairs (image_index, numbers) and their
    `predicted` classes; candidates: positions of the pairs the prediction grid may
    show (one per image, see grid_pairs).
    """
    output_dir = Path(output_dir)
    shown = grid_pairs(labels, image_index, numbers, predicted, candidates)
    index = image_index[shown]
    return [
        plots.plot_confusion_matrix(summary["digit_confusion"],
                                    output_dir / "confusion_digit.png", name="digit"),
        plots.plot_confusion_matrix(summary["sum_confusion"],
                                    output_dir / "confusion_sum.png", name="sum"),
        plots.plot_prediction_grid(images[index], numbers[shown], predicted["digit"][shown],
                                   predicted["sum"][shown], output_dir / "predictions.png",
                                   labels=labels[index]),
        plots.plot_misclassified(images, labels, summary["misclassified_as"],
                                 summary["misclassified_images"],
                                 output_dir / "misclassified.png"),
    ]


def write_run_figures(run_dir, model, images, labels, *, seed):
    """Training's pictures: curves from run_dir/history.csv, and the evaluation
    pictures for the test images, each with its seeded number (as in metrics.json)."""
    numbers = paired_numbers(len(labels), seed).numpy()
    image_index = np.arange(len(labels))
    predicted = keras_predictor(model)(images, image_index, numbers, verbose=0)
    summary = summarize(labels, image_index, numbers, predicted["digit"], predicted["sum"])
    return [plots.plot_training_curves(Path(run_dir) / "history.csv",
                                 Path(run_dir) / "training_curves.png"),
            *write_figures(run_dir, images, labels, summary, image_index, numbers,
                           predicted, candidates=image_index)]


# --- The whole evaluation --------------------------------------------------------------


def split_images(split, data_dir=None):
    """(images, labels) of "test" (10,000) or "validation" (the 5,000 held out)."""
    if split not in EVALUATION_SPLITS:
        raise KerasAdderError(f"unknown split {split!r} (choose from {', '.join(EVALUATION_SPLITS)})")
    (train_images, train_labels), test = load_mnist(data_dir)
    if split == "test":
        return test
    return split_validation(train_images, train_labels)[1]


def evaluate(model_path, *, data_dir=None, split="test", limit=None, output_dir=EVALUATION_DIR,
             batch_size=EVALUATION_BATCH, figures=True, verbose=1):
    """Evaluate a model on every (image, number) pair of a split; write the results.

    Returns (summary, predictions): the dict written to evaluation.json, and
    {"digit", "sum"}: int32 [images, 10] predicted classes for image i with number n.
    `limit` keeps only the split's first images (a quick look, not the real figure).
    """
    predict, kind, path = load_predictor(model_path)
    images, labels = split_images(split, data_dir)
    images, labels = images[:limit], labels[:limit]
    output_dir = make_dir(output_dir, "output directory")  # before the long part
    image_index, numbers = exhaustive_pairs(len(labels))

    if verbose:
        print(f"Evaluating {path} on {len(labels):,} {split} images x {NUM_DIGITS} "
              f"numbers = {len(numbers):,} pairs")
    started = time.perf_counter()
    predicted = predict(images, image_index, numbers, batch_size=batch_size, verbose=verbose)
    seconds = time.perf_counter() - started
    summary = {
        "model": str(path), "model_kind": kind, "split": split,
        **summarize(labels, image_index, numbers, predicted["digit"], predicted["sum"]),
        "seconds": round(seconds, 1),
    }
    write_json(output_dir / EVALUATION_FILE, summary)
    if figures:
        # The grid shows one pair per image: image i with number i % 10.
        write_figures(output_dir, images, labels, summary, image_index, numbers, predicted,
                      candidates=np.flatnonzero(numbers == image_index % NUM_DIGITS))
    return summary, {head: values.reshape(-1, NUM_DIGITS) for head, values in predicted.items()}


def format_report(summary):
    """A short human-readable report of an evaluation summary."""
    def percent(values):
        return "  ".join(f"{i}: {'-' if v is None else f'{v:.2%}'}"
                         for i, v in enumerate(values))

    return "\n".join([
        f"{summary['model']} ({summary['model_kind']}), {summary['split']} split: "
        f"{summary['images']:,} images x {summary['pairs'] // summary['images']} numbers "
        f"= {summary['pairs']:,} pairs",
        f"  digit accuracy   {summary['digit_accuracy']:.3%}",
        f"  sum accuracy     {summary['sum_accuracy']:.3%}   "
        f"(sum - digit: {summary['sum_minus_digit_accuracy'] * 100:+.3f} points)",
        f"  consistency      {summary['consistency']:.3%}   "
        "(predicted sum == predicted digit + number)",
        f"  misclassified    {len(summary['misclassified_images'])} images",
        f"  sum accuracy by number:  {percent(summary['sum_accuracy_by_number'])}",
        f"  digit accuracy by class: {percent(summary['digit_accuracy_by_class'])}",
    ])


def evaluate_on_test(model, test_images, test_labels, *, seed, batch_size=1024):
    """Digit and sum accuracy of a Keras model on the test images with the seeded
    numbers (one number per image: the figure training reports)."""
    results = model.evaluate(
        eval_dataset(test_images, test_labels, batch_size=batch_size, seed=seed),
        return_dict=True, verbose=0,
    )
    return {
        "digit_accuracy": float(results["digit_accuracy"]),
        "sum_accuracy": float(results["sum_accuracy"]),
        "loss": float(results["loss"]),
    }
