"""The Keras path of the project, top to bottom: data -> model -> fit -> test -> export.

`train()` is the one function to read. Resume, multi-worker agreement and run-directory
bookkeeping sit behind small calls into `resume` and `distribution`.
"""

import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_adder import data, distribution, evaluation, signals
from keras_adder.callbacks import StopOnNaN, make_callbacks
from keras_adder.constants import DEFAULT_EXPORT_DIR
from keras_adder.errors import KerasAdderError
from keras_adder.files import check_writable, read_json
from keras_adder.model import build_model, compile_model
from keras_adder.resume import RunDirectory, open_run
from keras_adder.saved_model import export_saved_model, free_version


def train(recipe, *, recipe_name="default", data_dir=None, run_dir, export_dir=DEFAULT_EXPORT_DIR,
          export_version=None, strategy="auto", cpu_replicas=None, tensorboard=False,
          verbose="auto"):
    """Train, test and export one `recipe.Recipe`; return the metrics of metrics.json.

    The same call with the same `run_dir` resumes a stopped run. Under multi-worker
    every worker calls it; only the chief writes, and the others return None.
    """
    strategy = distribution.choose_strategy(strategy, cpu_replicas)  # before any TF op
    config = {"recipe": recipe_name, **recipe.as_dict()}
    run, start_epoch, finished = _open(run_dir, config, strategy)
    if finished:
        print(f"{run_dir} is a finished run; not training again.")
        return read_json(run.metrics) if distribution.is_chief(strategy) else None
    with run.undone_on_error():  # a taken version or bad data leaves no run folder
        export_dir = _export_dir(run, strategy, export_dir, export_version)
        # 1. Data: 5,000 training images held out for validation; every image zipped
        #    with a random number by the tf.data pipelines.
        (train_images, train_labels), (test_images, test_labels) = data.load_mnist(data_dir)
    (fit_images, fit_labels), (val_images, val_labels) = data.split_validation(
        train_images, train_labels)
    fit_images, fit_labels = fit_images[:recipe.train_examples], fit_labels[:recipe.train_examples]
    steps = data.steps_per_epoch(len(fit_labels), recipe.batch_size)
    train_batches = data.train_dataset(
        fit_images, fit_labels, batch_size=recipe.batch_size, seed=recipe.seed,
        epochs=recipe.epochs, start_epoch=start_epoch, augment=recipe.augment)
    val_batches = data.validation_dataset(val_images, val_labels, batch_size=1024, seed=recipe.seed)

    # 2. Model: the functional model, one sparse categorical cross-entropy per head.
    run.start(config)
    _seed_everything(recipe)
    with strategy.scope():
        model = compile_model(build_model(recipe.arch), recipe, steps)

    # 3. Fit, with checkpoints of the best epoch, a CSV history and crash recovery.
    callbacks = make_callbacks(run, best_val_loss=run.keep_history(start_epoch),
                               tensorboard=tensorboard)
    started = time.perf_counter()
    if start_epoch < recipe.epochs:
        with signals.deferred():  # SIGTERM: stop at the next batch, see StopOnSigterm
            model.fit(train_batches, validation_data=val_batches, epochs=recipe.epochs,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                      shuffle=False)  # the pipeline shuffles, per epoch, from the seed
        _check_converged(run, callbacks)
    train_seconds = time.perf_counter() - started

    # 4. Test the best epoch, then export it for TF Serving.
    best = keras.saving.load_model(run.best_model)
    test = evaluation.evaluate_on_test(best, test_images, test_labels, seed=recipe.seed)
    export_path = run.exported_path() or _export(run, best, export_dir, export_version,
                                                 test_images[:64])
    if not distribution.is_chief(strategy):
        return _leave_as_worker(run, strategy)
    evaluation.write_run_figures(run.path, best, test_images, test_labels, seed=recipe.seed)
    metrics = {**config, **_run_facts(run, best, strategy, recipe, len(fit_labels)),
               "train_seconds": round(train_seconds, 1), "test": test,
               "export_path": str(export_path)}
    run.finish(metrics)
    distribution.wait_for_everyone(strategy)
    return metrics


def _leave_as_worker(run, strategy):
    run.remove_worker_folder()
    distribution.wait_for_everyone(strategy)


def _run_facts(run, model, strategy, recipe, train_images):
    return {"params": model.count_params(), "train_images": train_images,
            "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "per_replica_batch": recipe.batch_size // strategy.num_replicas_in_sync,
            "keras_path": str(run.best_model), "history": str(run.history)}


def _open(run_dir, config, strategy):
    """This process's run directory, checked and locked; the epoch to start from; and
    whether the run is finished (the same answer on every worker)."""
    check_writable(run_dir, "run directory")
    chief = distribution.is_chief(strategy)
    worker = None if chief else distribution.worker_index(strategy)
    run = open_run(run_dir, config, chief=chief, worker=worker)
    chief_run = RunDirectory(run_dir)
    finished, start_epoch = distribution.agree(strategy, chief_run.is_finished(),
                                               run.completed_epochs())
    if start_epoch:
        print(f"Resuming {run.path} after epoch {start_epoch} of {config['epochs']}.")
    return run, start_epoch, finished


def _export_dir(run, strategy, export_dir, export_version):
    """Where this process exports; a taken version fails here, before training."""
    if not distribution.is_chief(strategy):
        return run.path / "export"  # a worker's export is thrown away
    if run.exported_path() is None:
        free_version(export_dir, export_version)
        check_writable(export_dir, "export directory")
    return export_dir


def _seed_everything(recipe):
    keras.utils.set_random_seed(recipe.seed)
    # Set both ways: op determinism is process-wide and would outlive this run.
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf.config.experimental.disable_op_determinism()


def _check_converged(run, callbacks):
    """Refuse to go on from a run whose loss became NaN, and mark it as dead."""
    stop = next(callback for callback in callbacks if isinstance(callback, StopOnNaN))
    if stop.diverged_at is not None:
        epoch, batch = stop.diverged_at
        run.record_divergence(epoch, batch)
        raise KerasAdderError(
            f"training diverged: the loss became NaN at epoch {epoch}, batch {batch}; "
            f"nothing was exported. Start a new --run-dir, e.g. with a lower learning rate")


def _export(run, model, export_dir, export_version, check_images):
    """Export once: the run records its SavedModel before doing anything else, so a
    rerun after a later crash finishes without exporting again."""
    path = export_saved_model(model, export_dir, export_version, check_images=check_images)
    run.record_export(path)
    return path


def summary_line(metrics):
    """What a finished run tells its user."""
    test = metrics["test"]
    return (f"\nTest (10,000 images, seed {metrics['seed']}): digit accuracy "
            f"{test['digit_accuracy']:.2%}, sum accuracy {test['sum_accuracy']:.2%}\n"
            f"{metrics['params']:,} parameters, {metrics['train_seconds']:.0f} s of training\n"
            f"Best model: {metrics['keras_path']}\nSavedModel: {metrics['export_path']}\n"
            f"Metrics:    {Path(metrics['keras_path']).parent / 'metrics.json'}")
