"""The pictures: training curves, confusion matrices, a prediction grid, the mistakes.

Each function takes plain arrays (or a history.csv path), writes one PNG and returns
its path, so training, `keras_adder.evaluate` and the notebook draw the same figures.
Figures are drawn on matplotlib's Agg canvas without pyplot: nothing needs a display,
and a notebook's own backend is left alone (show a written file with
`IPython.display.Image(path)`).

A PNG is written next to its final name and renamed into place, so a crash never
leaves a half-written picture behind.
"""

import csv
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import PercentFormatter

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import write_atomically

DPI = 100
WRONG = "tab:red"
HEADS = ("digit", "sum")


def picture_formats():
    """The file types savefig can write (png, pdf, svg, ...)."""
    return Figure().canvas.get_supported_filetypes()


def _save(figure, path):
    try:
        write_atomically(path, lambda staging: figure.savefig(staging, dpi=DPI))
    except OSError as error:
        raise KerasAdderError(f"cannot write picture {path} ({error.strerror})") from None
    return Path(path)


def read_history(history_csv):
    """history.csv (Keras' CSVLogger) as {column: float array}, one value per epoch."""
    path = Path(history_csv)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise KerasAdderError(f"cannot read training history {path} "
                              f"({error.strerror})") from None
    if not rows:
        raise KerasAdderError(f"{path}: no epochs recorded")
    try:
        return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}
    except (TypeError, ValueError):
        raise KerasAdderError(f"{path}: not a Keras CSVLogger history "
                              "(a row has a missing or non-numeric value)") from None


def plot_training_curves(history_csv, path):
    """Loss and error rate of each head per epoch, training vs validation (2x2 panels)."""
    history = read_history(history_csv)
    needed = [f"{prefix}{head}_{metric}" for prefix in ("", "val_")
              for head in HEADS for metric in ("loss", "accuracy")]
    missing = [key for key in needed if key not in history]
    if missing:
        raise KerasAdderError(f"{history_csv}: no column(s) {', '.join(missing)}")
    epochs = np.arange(1, len(history[needed[0]]) + 1)
    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    for row, head in enumerate(HEADS):
        for column, metric in enumerate(("loss", "accuracy")):
            ax = axes[row, column]
            training, validation = history[f"{head}_{metric}"], history[f"val_{head}_{metric}"]
            if metric == "accuracy":
                # The error rate on a log axis shows the last tenths of a percent, which
                # an accuracy axis from 0.8 to 1.0 presses against its top.
                training, validation = 1 - training, 1 - validation
                ax.set_title(f"{head} error rate (1 - accuracy)")
            else:
                ax.set_title(f"{head} loss")
            ax.plot(epochs, training, "o-", label="training")
            ax.plot(epochs, validation, "s-", label="validation")
            # Both fall by orders of magnitude; a log axis keeps late epochs readable.
            ax.set_yscale("log")
            if metric == "accuracy":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
            ax.grid(alpha=0.3, which="both")
            ax.legend()
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle("Training curves")
    return _save(figure, path)


def plot_confusion_matrix(matrix, path, *, name, title=None):
    """Counts of (true, predicted) classes; rows are the truth. `name`: "digit" or "sum".

    The colour scale is logarithmic so that a handful of mistakes still shows next to
    thousands of correct answers; every non-zero cell is labelled with its count.
    """
    matrix = np.asarray(matrix)
    classes = len(matrix)
    figure = Figure(figsize=(4 + 0.35 * classes, 3.5 + 0.35 * classes), layout="constrained")
    ax = figure.subplots()
    shown = np.ma.masked_equal(matrix, 0)
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(matrix.max(), 2)))
    figure.colorbar(image, ax=ax, shrink=0.8, label="count")
    threshold = np.sqrt(max(matrix.max(), 1))  # middle of the log scale
    for (true, predicted), count in np.ndenumerate(matrix):
        if count:
            ax.text(predicted, true, str(count), ha="center", va="center",
                    fontsize=7 if classes > 10 else 8,
                    color="white" if count > threshold else "black")
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel(f"predicted {name}")
    ax.set_ylabel(f"true {name}")
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    ax.set_title(title or f"{name} confusion matrix: {correct:,} of {total:,} right "
                 f"({correct / max(total, 1):.2%})")
    return _save(figure, path)


def _image_axes(figure, count, columns):
    rows = max(-(-count // columns), 1)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    return axes


def _mark_wrong(ax):
    # set_axis_off() hides the spines too, so frame the image with a rectangle.
    ax.add_patch(Rectangle((-0.5, -0.5), 28, 28, fill=False, edgecolor=WRONG, linewidth=3))


def plot_prediction_grid(images, numbers, digits, sums, path, *, labels=None,
                         probabilities=None, columns=8, limit=100):
    """Images with the number fed in and the predicted digit and sum; wrong ones in red.

    images: uint8 [N, 28, 28]; numbers, digits (predicted), sums (predicted): int [N].
    Each title reads "digit + number = sum" as the model answered. Optional:
    labels, the true digits (None where unknown): a wrong answer gets a red frame
    and the true sum below; probabilities, [N, 2] of the digit's and the sum's
    answer, add a "p 0.99 / 0.98" line. Shows the first `limit` images.
    """
    count = len(images)
    shown = min(count, limit)
    columns = min(columns, max(shown, 1))
    rows = max(-(-shown // columns), 1)
    lines = 1 + (labels is not None) + (probabilities is not None)
    figure = Figure(figsize=(1.5 * columns, (1.35 + 0.25 * lines) * rows + 0.4),
                    layout="constrained")
    axes = _image_axes(figure, shown, columns)
    for i, ax in zip(range(shown), axes):
        digit, number, total = int(digits[i]), int(numbers[i]), int(sums[i])
        label = None if labels is None else labels[i]
        wrong = label is not None and (digit != label or total != label + number)
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        title = f"{digit} + {number} = {total}"
        if probabilities is not None:
            title += f"\np {probabilities[i][0]:.2f} / {probabilities[i][1]:.2f}"
        if wrong:
            title += f"\ntrue: {label} + {number} = {label + number}"
            _mark_wrong(ax)
        ax.set_title(title, fontsize=9, color=WRONG if wrong else "black")
    heading = "Predicted digit + number = predicted sum"
    if labels is not None:
        heading += " (wrong answers in red)"
    if shown < count:
        heading += f"; first {shown} of {count}"
    figure.suptitle(heading)
    return _save(figure, path)


def plot_misclassified(images, labels, predicted, indices, path, *, columns=10, limit=40):
    """A gallery of misclassified digits: index in the split, true → predicted digit.

    images, labels: the whole split; indices: the misclassified images' positions in
    it; predicted: the digit predicted for each of them. Shows the first `limit`.
    """
    indices = np.asarray(indices, dtype=np.int64)
    shown = min(len(indices), limit)
    columns = min(columns, max(shown, 1))
    rows = max(-(-shown // columns), 1)
    figure = Figure(figsize=(1.3 * columns, 1.55 * rows + 0.4), layout="constrained")
    axes = _image_axes(figure, shown, columns)
    for ax, index, guess in zip(axes, indices[:shown], predicted):
        ax.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"#{index}\n{labels[index]} → {guess}", fontsize=8, color=WRONG)
    if not shown:
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    more = f" (first {shown} shown)" if shown < len(indices) else ""
    figure.suptitle(f"Misclassified digits: {len(indices)}{more}; image index, "
                    "true → predicted")
    return _save(figure, path)
