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
import shutil
import time
from datetime import datetime
from pathlib import Path

# The default recipe: plain values, as in nanoGPT. `make train` runs exactly these.
ARCH = "compact"
EPOCHS = 36
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
CONFIG_FILE = "config.json"  # the settings a resumed run must share with the original
STRATEGIES = ("auto", "mirrored", "multiworker")
STRATEGY = "auto"
DETERMINISTIC = True  # costs ~10 % per step on CPU; the measured recipe used it (README)


def choose_strategy(name=STRATEGY):
    """The tf.distribute strategy for `--strategy` (see STRATEGIES).

    "auto" mirrors over all GPUs when there are several, else uses the default one;
    "multiworker" reads the cluster from the TF_CONFIG environment variable. It must be
    called before TensorFlow runs anything, as MultiWorkerMirroredStrategy requires.
    """
    import tensorflow as tf

    from keras_adder.cli import KerasAdderError

    if name not in STRATEGIES:
        raise KerasAdderError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    if name == "multiworker":
        from keras_adder.compat import patch_keras_for_multi_worker

        _check_tf_config()
        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _check_tf_config():
    """Fail with a clear message before TensorFlow misreads a bad TF_CONFIG."""
    from keras_adder.cli import KerasAdderError

    text = os.environ.get("TF_CONFIG")
    if not text:
        raise KerasAdderError("--strategy multiworker needs the TF_CONFIG environment "
                              "variable (cluster and task of this worker; see --help)")
    expected = ('expected {"cluster": {"worker": ["host:port", ...]}, '
                '"task": {"type": "worker", "index": N}}')
    try:
        config = json.loads(text)
    except ValueError as error:
        raise KerasAdderError(f"TF_CONFIG is not JSON ({error}); {expected}") from None
    try:
        workers = config["cluster"]["worker"]
        task_type, task_index = config["task"]["type"], config["task"]["index"]
    except (TypeError, KeyError) as error:
        raise KerasAdderError(f"TF_CONFIG has no {error} entry; {expected}") from None
    members = config["cluster"].get(task_type, [])
    if not isinstance(task_index, int) or not 0 <= task_index < len(members):
        raise KerasAdderError(f"TF_CONFIG task {task_type} {task_index} is not in its "
                              f"cluster ({len(workers)} workers)")


def is_chief(strategy):
    """Whether this process writes the run's checkpoints, exports and metrics.

    As in the TF multi-worker guide: the "chief" task, else worker 0, else (one machine)
    the only process.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _gather_from_workers(strategy, values):
    """Each worker's int `values`, as rows [workers, len(values)] (a collective op)."""
    import tensorflow as tf

    local = tf.constant([values], tf.int64)
    return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy()


def _agree(strategy, finished, start_epoch):
    """All workers must take the same path: finished if any says so, one start epoch."""
    from keras_adder.cli import KerasAdderError
    from keras_adder.compat import is_multi_worker

    if not is_multi_worker(strategy):
        return finished, start_epoch
    everyone = _gather_from_workers(strategy, [int(finished), start_epoch])
    finished, latest, earliest = everyone[:, 0].max(), everyone[:, 1].max(), everyone[:, 1].min()
    if not finished and latest != earliest:
        raise KerasAdderError(
            f"the workers' backups are at different epochs ({earliest} to {latest}); "
            f"a worker was stopped during a backup: start a new --run-dir"
        )
    return bool(finished), int(latest)


def compile_model(model, *, learning_rate, total_steps, warmup_steps, weight_decay,
                  digit_loss_weight=DIGIT_LOSS_WEIGHT, sum_loss_weight=SUM_LOSS_WEIGHT,
                  jit_compile="auto"):
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
        jit_compile=jit_compile,
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


def _epoch_seeded_dropout():
    """A callback that keys the model's random layers (Dropout) to the epoch.

    BackupAndRestore restores weights and optimizer state but not the layers' RNG
    counters, so a resumed run would draw other dropout masks than an uninterrupted
    one. Restarting each generator's counter at a value derived from the epoch makes
    the masks of epoch e the same either way, like the data pipeline's randomness.
    """
    import keras

    class EpochSeededDropout(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            for variable in self.model.variables:
                if variable.path.endswith("seed_generator_state"):
                    seed = int(variable.numpy()[0])
                    variable.assign([seed, epoch << 32])

    return EpochSeededDropout()


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
        _epoch_seeded_dropout(),
        keras.callbacks.TerminateOnNaN(),
        best,
        keras.callbacks.CSVLogger(str(Path(run_dir) / "history.csv"), append=True),
        # Kept after the last epoch, so that a crash while testing or exporting resumes
        # there; train() deletes it once metrics.json is written.
        keras.callbacks.BackupAndRestore(str(Path(run_dir) / BACKUP_SUBDIR),
                                         delete_checkpoint=False),
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


def _check_writable(path, what):
    """Fail before any work when `path` cannot be created or written (creates nothing)."""
    from keras_adder.cli import KerasAdderError

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KerasAdderError(f"cannot create {what} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise KerasAdderError(f"{what} {path} is not writable")


def _prepare_dir(path, what):
    from keras_adder.cli import KerasAdderError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create {what} {path} ({error.strerror})") from None
    if not os.access(path, os.W_OK):
        raise KerasAdderError(f"{what} {path} is not writable")


def _check_same_config(run_dir, config):
    """Refuse to resume a run with other settings (its backup and schedule would not fit)."""
    from keras_adder.cli import KerasAdderError

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in config.items()
               if saved.get(key) != value]
    if changed:
        raise KerasAdderError(
            f"{run_dir} is a run started with other settings ({'; '.join(changed)}); "
            f"resume it with the same ones or use a new --run-dir"
        )


def train(*, data_dir=None, arch=ARCH, epochs=EPOCHS, batch_size=BATCH_SIZE,
          learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
          digit_loss_weight=DIGIT_LOSS_WEIGHT, sum_loss_weight=SUM_LOSS_WEIGHT,
          augment=AUGMENT, seed=SEED, train_examples=None, run_dir=None,
          export_dir=EXPORT_DIR, export_version=None, tensorboard=False,
          strategy=STRATEGY, deterministic=DETERMINISTIC, verbose="auto"):
    """Train, test and export; return the metrics dict also written to metrics.json.

    A run directory that already holds metrics.json is a finished run: nothing is
    trained again and its metrics are returned. Under --strategy multiworker every
    worker runs this, but only the chief writes into `run_dir` and `export_dir`; the
    others work in `run_dir/workertemp_<index>`, delete it at the end and return None.
    """
    import keras
    import tensorflow as tf

    from keras_adder.cli import KerasAdderError, write_atomically
    from keras_adder.compat import is_multi_worker
    from keras_adder.data import (
        load_mnist, split_validation, steps_per_epoch, train_dataset, validation_dataset,
    )
    from keras_adder.export import export_saved_model, free_version
    from keras_adder.model import build_model

    if strategy == "multiworker" and not run_dir:
        raise KerasAdderError("--strategy multiworker needs --run-dir: every worker must "
                              "name the same run (also to resume it)")
    strategy = choose_strategy(strategy)  # before any TensorFlow op, see its docstring
    build_model(arch)  # an unknown arch fails here, before any data is read
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    metrics_path = run_dir / "metrics.json"
    chief = is_chief(strategy)
    if not chief:
        # The TF multi-worker guide's layout: the same work, into a private folder.
        run_dir = run_dir / f"workertemp_{strategy.cluster_resolver.task_id}"
        export_dir = run_dir / "export"
    finished, start_epoch = _agree(strategy, metrics_path.exists(), completed_epochs(run_dir))
    if finished:
        print(f"{metrics_path.parent} is a finished run (see {metrics_path}); "
              f"not training again.")
        return json.loads(metrics_path.read_text()) if chief else None
    export_dir = Path(export_dir)
    _check_writable(run_dir, "run directory")
    _check_writable(export_dir, "export directory")
    free_version(export_dir, export_version)  # a taken version fails before training
    config = {"arch": arch, "epochs": epochs, "batch_size": batch_size,
              "learning_rate": learning_rate, "weight_decay": weight_decay,
              "digit_loss_weight": digit_loss_weight, "sum_loss_weight": sum_loss_weight,
              "augment": augment, "seed": seed, "train_examples": train_examples}

    (train_images, train_labels), (test_images, test_labels) = load_mnist(data_dir)
    (fit_images, fit_labels), (val_images, val_labels) = split_validation(
        train_images, train_labels
    )
    if train_examples is not None:
        if train_examples > len(fit_labels):
            raise KerasAdderError(f"--train-examples {train_examples} is more than the "
                                  f"{len(fit_labels):,} training images")
        fit_images, fit_labels = fit_images[:train_examples], fit_labels[:train_examples]
    _check_same_config(run_dir, config)
    _prepare_dir(run_dir, "run directory")
    _prepare_dir(export_dir, "export directory")
    if not (run_dir / CONFIG_FILE).exists():
        write_atomically(run_dir / CONFIG_FILE,
                         lambda staging: staging.write_text(json.dumps(config, indent=2) + "\n"))
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if start_epoch:
        print(f"Resuming {run_dir} after epoch {start_epoch} of {epochs}.")
    steps = steps_per_epoch(len(fit_labels), batch_size)

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
    if start_epoch < epochs:
        model.fit(
            train_dataset(fit_images, fit_labels, batch_size=batch_size, seed=seed,
                          epochs=epochs, start_epoch=start_epoch, augment=augment),
            validation_data=validation_dataset(val_images, val_labels,
                                               batch_size=1024, seed=seed),
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=make_callbacks(run_dir, start_epoch=start_epoch,
                                     tensorboard=tensorboard),
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
    if not chief:
        shutil.rmtree(run_dir)
        _gather_from_workers(strategy, [0])  # wait for the chief's end, see below
        return None
    from keras_adder.evaluate import write_run_figures

    write_run_figures(run_dir, best_model, test_images, test_labels, seed=seed)
    metrics = {
        "arch": arch,
        "params": best_model.count_params(),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "augment": augment,
        "train_examples": len(fit_labels),
        "deterministic": deterministic,
        "replicas": strategy.num_replicas_in_sync,
        "train_seconds": round(train_seconds, 1),
        "test": test,
        "export_path": str(export_path),
        "keras_path": str(run_dir / "best.keras"),
        "history": str(run_dir / "history.csv"),
    }
    write_atomically(metrics_path,
                     lambda staging: staging.write_text(json.dumps(metrics, indent=2) + "\n"))
    shutil.rmtree(run_dir / BACKUP_SUBDIR, ignore_errors=True)
    if is_multi_worker(strategy):
        # A worker that exits while the chief still works is reported as crashed.
        _gather_from_workers(strategy, [0])
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
    parser.add_argument("--train-examples", type=positive_int, metavar="N",
                        help="train on the first N of the 55,000 training images, for "
                        "quick trials and tests (validation and test sets are unchanged)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                        default=DETERMINISTIC,
                        help="TF op determinism: the same seed on the same machine gives "
                        "the same history and test metrics (default: "
                        f"{'on' if DETERMINISTIC else 'off'})")
    parser.add_argument("--strategy", choices=STRATEGIES, default=STRATEGY,
                        help="tf.distribute strategy: auto = MirroredStrategy over all "
                        "GPUs when there are several, else one device; mirrored = "
                        "MirroredStrategy; multiworker = MultiWorkerMirroredStrategy "
                        "over the machines in the TF_CONFIG environment variable (start "
                        "the same command on every machine, with the same --run-dir; "
                        "only the chief writes checkpoints, exports and metrics) "
                        f"(default: {STRATEGY})")
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
        train_examples=args.train_examples, run_dir=args.run_dir,
        export_dir=args.export_dir, export_version=args.export_version,
        tensorboard=args.tensorboard, strategy=args.strategy,
        deterministic=args.deterministic,
    )


if __name__ == "__main__":
    from keras_adder.cli import run

    run(main)
