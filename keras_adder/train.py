"""Train a digit + sum model with `model.fit`, test it, and export it for serving.

    python -m keras_adder.train                    # the default recipe (compact model)
    python -m keras_adder.train --arch reference   # the original design
    python -m keras_adder.train --dry-run          # print model.summary() and exit

Everything a run produces lands in its run directory (`runs/<timestamp>` unless
`--run-dir`): history.csv, best.keras, metrics.json, the BackupAndRestore state and,
with --tensorboard, TensorBoard logs. The SavedModel goes to `<export-dir>/<version>/`.
Running the same command with the same --run-dir after a crash resumes it.
"""

import argparse
import csv
import json
import os
import time
from datetime import datetime
from pathlib import Path

# The default recipe: plain values, as in nanoGPT. `make train` runs exactly these.
ARCH = "compact"
EPOCHS = 30
BATCH_SIZE = 128
LEARNING_RATE = 3e-3  # peak of a warm-up + cosine schedule
WARMUP_EPOCHS = 1
WEIGHT_DECAY = 1e-4
DIGIT_LOSS_WEIGHT = 1.0
SUM_LOSS_WEIGHT = 1.0
AUGMENT = True
SEED = 1337
EXPORT_DIR = "saved_models/keras_adder"
RUNS_DIR = "runs"

BACKUP_SUBDIR = "backup"


def choose_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default one."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def compile_model(model, *, learning_rate, total_steps, warmup_steps, weight_decay,
                  digit_loss_weight=DIGIT_LOSS_WEIGHT, sum_loss_weight=SUM_LOSS_WEIGHT):
    """Sparse categorical cross-entropy and accuracy on each head; AdamW, warm-up + cosine."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps - warmup_steps, 1),
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
        loss={
            "digit": keras.losses.SparseCategoricalCrossentropy(),
            "sum": keras.losses.SparseCategoricalCrossentropy(),
        },
        loss_weights={"digit": digit_loss_weight, "sum": sum_loss_weight},
        metrics={"digit": ["accuracy"], "sum": ["accuracy"]},
    )
    return model


def completed_epochs(run_dir):
    """Epochs that BackupAndRestore has saved in `run_dir` (0 for a new run).

    The pipeline's randomness is keyed by epoch, so a resumed run must start its data
    at the same epoch that BackupAndRestore restores the weights to.
    """
    metadata = Path(run_dir) / BACKUP_SUBDIR / "training_metadata.json"
    if not metadata.exists():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def _history_rows(run_dir):
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _truncate_history(run_dir, epochs):
    """Drop history rows of epochs the backup does not hold (a crash between the two)."""
    path = Path(run_dir) / "history.csv"
    rows = _history_rows(run_dir)
    if len(rows) <= epochs:
        return rows
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:epochs])
    return rows[:epochs]


def make_callbacks(run_dir, *, start_epoch, tensorboard):
    """Best-model checkpoint, CSV history, crash recovery and (optionally) TensorBoard."""
    import keras

    best = keras.callbacks.ModelCheckpoint(
        str(Path(run_dir) / "best.keras"), monitor="val_loss", save_best_only=True
    )
    # A resumed run must not replace a better checkpoint from before the crash.
    earlier = [float(r["val_loss"]) for r in _truncate_history(run_dir, start_epoch)]
    if earlier:
        best.best = min(earlier)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        best,
        keras.callbacks.CSVLogger(str(Path(run_dir) / "history.csv"), append=True),
        keras.callbacks.BackupAndRestore(str(Path(run_dir) / BACKUP_SUBDIR)),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(Path(run_dir) / "tensorboard")))
    return callbacks


def evaluate_on_test(model, test_images, test_labels, *, seed, batch_size=1024):
    """Digit and sum accuracy on the 10,000 test images with the seeded numbers."""
    from keras_adder.data import eval_dataset

    results = model.evaluate(
        eval_dataset(test_images, test_labels, batch_size=batch_size, seed=seed),
        return_dict=True, verbose=0,
    )
    return {
        "digit_accuracy": float(results["digit_accuracy"]),
        "sum_accuracy": float(results["sum_accuracy"]),
        "loss": float(results["loss"]),
    }


def default_run_dir():
    return Path(RUNS_DIR) / datetime.now().strftime("%Y%m%d-%H%M%S")


def _prepare_dir(path, what):
    from keras_adder.cli import KerasAdderError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create {what} {path} ({error.strerror})") from None
    if not os.access(path, os.W_OK):
        raise KerasAdderError(f"{what} {path} is not writable")


def train(*, data_dir=None, arch=ARCH, epochs=EPOCHS, batch_size=BATCH_SIZE,
          learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
          digit_loss_weight=DIGIT_LOSS_WEIGHT, sum_loss_weight=SUM_LOSS_WEIGHT,
          augment=AUGMENT, seed=SEED, run_dir=None, export_dir=EXPORT_DIR,
          export_version=None, tensorboard=False, verbose="auto"):
    """Train, test and export; return the metrics dict also written to metrics.json.

    A run directory that already holds metrics.json is a finished run: nothing is
    trained again and its metrics are returned.
    """
    import keras

    from keras_adder.data import (
        load_mnist, split_validation, steps_per_epoch, train_dataset, validation_dataset,
    )
    from keras_adder.export import export_saved_model
    from keras_adder.model import build_model

    build_model(arch)  # an unknown arch fails here, before any data is read
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        print(f"{run_dir} is a finished run (see {metrics_path}); not training again.")
        return json.loads(metrics_path.read_text())
    _prepare_dir(run_dir, "run directory")
    _prepare_dir(Path(export_dir), "export directory")

    (train_images, train_labels), (test_images, test_labels) = load_mnist(data_dir)
    (fit_images, fit_labels), (val_images, val_labels) = split_validation(
        train_images, train_labels
    )
    keras.utils.set_random_seed(seed)
    start_epoch = completed_epochs(run_dir)
    if start_epoch:
        print(f"Resuming {run_dir} after epoch {start_epoch} of {epochs}.")
    steps = steps_per_epoch(len(fit_labels), batch_size)

    strategy = choose_strategy()
    with strategy.scope():
        model = compile_model(
            build_model(arch),
            learning_rate=learning_rate,
            total_steps=epochs * steps,
            warmup_steps=WARMUP_EPOCHS * steps,
            weight_decay=weight_decay,
            digit_loss_weight=digit_loss_weight,
            sum_loss_weight=sum_loss_weight,
        )
    started = time.perf_counter()
    model.fit(
        train_dataset(fit_images, fit_labels, batch_size=batch_size, seed=seed,
                      epochs=epochs, start_epoch=start_epoch, augment=augment),
        validation_data=validation_dataset(val_images, val_labels,
                                           batch_size=1024, seed=seed),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=make_callbacks(run_dir, start_epoch=start_epoch, tensorboard=tensorboard),
        shuffle=False,  # the pipeline shuffles, per epoch, from the seed
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - started

    best_model = keras.saving.load_model(run_dir / "best.keras")
    test = evaluate_on_test(best_model, test_images, test_labels, seed=seed)
    export_path = export_saved_model(
        best_model, export_dir, version=export_version,
        check_images=test_images[:64],
    )
    metrics = {
        "arch": arch,
        "params": best_model.count_params(),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "augment": augment,
        "train_seconds": round(train_seconds, 1),
        "test": test,
        "export_path": str(export_path),
        "keras_path": str(run_dir / "best.keras"),
        "history": str(run_dir / "history.csv"),
    }
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"\nTest (10,000 images, seed {seed}): digit accuracy {test['digit_accuracy']:.2%}, "
        f"sum accuracy {test['sum_accuracy']:.2%}\n"
        f"{metrics['params']:,} parameters, {train_seconds:.0f} s of training\n"
        f"Best model: {metrics['keras_path']}\nSavedModel: {export_path}\n"
        f"Metrics:    {metrics_path}"
    )
    return metrics


def build_parser():
    from keras_adder.cli import positive_float, positive_int
    from keras_adder.model import ARCHITECTURES

    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.train",
        description="Train the MNIST digit + number → sum model with model.fit, "
        "evaluate it on the MNIST test set and export a SavedModel for TF Serving.",
    )
    parser.add_argument("--data-dir", help="folder with the four MNIST IDX files "
                        "(gzipped or not); default: $KERAS_ADDER_DATA, else Keras' download")
    parser.add_argument("--arch", default=ARCH, choices=sorted(ARCHITECTURES),
                        help=f"architecture (default: {ARCH})")
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS,
                        help=f"training epochs (default: {EPOCHS})")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                        help=f"global batch size, split across GPUs (default: {BATCH_SIZE})")
    parser.add_argument("--learning-rate", type=positive_float, default=LEARNING_RATE,
                        help=f"peak learning rate of the warm-up + cosine schedule "
                        f"(default: {LEARNING_RATE})")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                        help=f"AdamW weight decay (default: {WEIGHT_DECAY})")
    parser.add_argument("--digit-loss-weight", type=float, default=DIGIT_LOSS_WEIGHT,
                        help=f"weight of the digit head's loss (default: {DIGIT_LOSS_WEIGHT})")
    parser.add_argument("--sum-loss-weight", type=float, default=SUM_LOSS_WEIGHT,
                        help=f"weight of the sum head's loss (default: {SUM_LOSS_WEIGHT})")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="train without random shifts/rotations/zooms")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed for weights, data order, numbers, augmentation "
                        f"(default: {SEED})")
    parser.add_argument("--run-dir", help=f"where history, checkpoints and metrics go "
                        f"(default: {RUNS_DIR}/<timestamp>); reuse it to resume a run")
    parser.add_argument("--export-dir", default=EXPORT_DIR,
                        help=f"SavedModel base path; the model goes to <export-dir>/<next "
                        f"version>/ (default: {EXPORT_DIR})")
    parser.add_argument("--export-version", type=positive_int,
                        help="export as this version number (refused if it exists)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs to <run-dir>/tensorboard")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model, print model.summary() and exit without "
                        "reading data")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from keras_adder.model import build_model

        build_model(args.arch).summary()
        return None
    return train(
        data_dir=args.data_dir, arch=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, digit_loss_weight=args.digit_loss_weight,
        sum_loss_weight=args.sum_loss_weight, augment=args.augment, seed=args.seed,
        run_dir=args.run_dir, export_dir=args.export_dir,
        export_version=args.export_version, tensorboard=args.tensorboard,
    )


if __name__ == "__main__":
    from keras_adder.cli import run

    run(main)
