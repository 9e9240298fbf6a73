"""The Keras path of the project, top to bottom: data -> model -> fit -> test -> export.

`train()` is the one function to read. Resume, multi-worker agreement and run-directory
bookkeeping sit behind small calls into `run_directory` and `distribution`.
"""

import time
from pathlib import Path

import keras
import tensorflow as tf

# TF 2.21 exports only enable_op_determinism; its off switch lives here.
from tensorflow.python.framework.config import disable_op_determinism

from keras_adder.core import signals
from keras_adder.core.constants import DEFAULT_EXPORT_DIR, TRAIN_SIZE, VALIDATION_SIZE
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import check_writable, read_json
from keras_adder.data import pipeline
from keras_adder.fitting import distribution
from keras_adder.fitting.callbacks import StopOnNaN, make_callbacks
from keras_adder.fitting.run_directory import RunDirectory, open_run
from keras_adder.model.architectures import build_model, compile_model
from keras_adder.reports import exhaustive
from keras_adder.serving import promotion, runtimes
from keras_adder.serving.saved_model import free_version, is_own_version


def train(recipe, *, recipe_name="default", data_dir=None, run_dir, export_dir=DEFAULT_EXPORT_DIR,
          export_version=None, promote="better", export_formats=(), strategy="auto",
          cpu_replicas=None, tensorboard=False, verbose="auto"):
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
    export_dir = _export_dir(run, strategy, export_dir, export_version)

    # 1. Data: 5,000 training images held out for validation; every image zipped
    #    with a random number by the tf.data pipelines.
    (train_images, train_labels), (test_images, test_labels) = pipeline.load_mnist(data_dir)
    (fit_images, fit_labels), (val_images, val_labels) = pipeline.split_validation(
        train_images, train_labels)
    fit_images, fit_labels = fit_images[:recipe.train_examples], fit_labels[:recipe.train_examples]
    steps = pipeline.steps_per_epoch(len(fit_labels), recipe.batch_size)
    train_batches = pipeline.train_dataset(
        fit_images, fit_labels, batch_size=recipe.batch_size, seed=recipe.seed,
        epochs=recipe.epochs, start_epoch=start_epoch, augment=recipe.augment)
    val_batches = pipeline.validation_dataset(val_images, val_labels, batch_size=1024, seed=recipe.seed)

    # 2. Model: the functional model, one sparse categorical cross-entropy per head.
    run.start(config)
    _seed_everything(recipe)
    model = _build(recipe, strategy, steps)

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

    # 4. Test the best epoch, export it, and serve it if it is at least as good.
    best = keras.saving.load_model(run.best_model)
    test = exhaustive.evaluate_on_test(best, test_images, test_labels, seed=recipe.seed)
    export_path = _export(run, best, export_dir, export_version, promote, recipe.seed,
                          validation=(val_images, val_labels), check_images=test_images[:64],
                          formats=export_formats if distribution.is_chief(strategy) else ())
    if not distribution.is_chief(strategy):
        return _leave_as_worker(run, strategy)
    exhaustive.write_run_figures(run.path, best, test_images, test_labels, seed=recipe.seed)
    metrics = {**config, **_run_facts(run, best, strategy, recipe, len(fit_labels)),
               "train_seconds": round(train_seconds, 1), "test": test,
               "export_path": export_path}
    run.finish(metrics)
    distribution.wait_for_everyone(strategy)
    return metrics


def _leave_as_worker(run, strategy):
    run.remove_worker_folder()
    distribution.wait_for_everyone(strategy)


def _run_facts(run, model, strategy, recipe, train_images):
    exported = run.exported()
    return {"params": model.count_params(), "train_images": train_images,
            "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "per_replica_batch": recipe.batch_size // strategy.num_replicas_in_sync,
            "keras_path": str(run.best_model), "history": str(run.history),
            "candidate_path": exported["candidate"],
            "runtime_files": exported.get("runtime_files", [])}


def _build(recipe, strategy, steps):
    """The compiled model, its variables mirrored over the strategy's replicas."""
    with strategy.scope():
        model = build_model(recipe.arch, recipe.dropout)
        return compile_model(distribution.synchronize_batch_norm(model, strategy), recipe, steps)


def _open(run_dir, config, strategy):
    """This process's run directory, checked and locked; the epoch to start from; and
    whether the run is finished (the same answer on every worker)."""
    distribution.check_batch_split(strategy, config["batch_size"],
                                   config["train_examples"] or TRAIN_SIZE - VALIDATION_SIZE)
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
    done = run.exported()
    # A version this run renamed into place before it was killed is its own, not taken.
    if "decision" not in done and is_own_version(export_dir, done.get("promoting")) is None:
        free_version(export_dir, export_version)
        check_writable(export_dir, "export directory")
    return export_dir


def _seed_everything(recipe):
    keras.utils.set_random_seed(recipe.seed)
    # Set both ways: op determinism is process-wide and would outlive this run.
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        disable_op_determinism()


def _check_converged(run, callbacks):
    """Refuse to go on from a run whose loss became NaN, and mark it as dead."""
    stop = next(callback for callback in callbacks if isinstance(callback, StopOnNaN))
    if stop.diverged_at is not None:
        epoch, batch = stop.diverged_at
        run.record_divergence(epoch, batch)
        raise KerasAdderError(
            f"training diverged: the loss became NaN at epoch {epoch}, batch {batch}; "
            f"nothing was exported. Start a new --run-dir, e.g. with a lower learning rate")


def _export(run, model, export_dir, export_version, policy, seed, *, validation, check_images,
            formats):
    """Export once, then promote, then write the asked LiteRT/ONNX files: the run records
    each step before the next, so a rerun after a later crash finishes without exporting
    again."""
    done = run.exported()
    if "decision" not in done:
        served, _, why = promotion.export_and_promote(
            model, run.path / "saved_model", export_dir, version=export_version,
            policy=policy, validation=validation, seed=seed, check_images=check_images,
            done=done, record=run.record_export)
        print(why)
        done = run.exported()
    if formats and "runtime_files" not in done:
        # Into the run directory, beside the candidate: a model that was not promoted
        # must not replace the files of the one that is served.
        files = [str(runtimes.export_file(model, kind, run.path / "keras_adder",
                                          check_images=check_images)) for kind in formats]
        print(f"also written: {', '.join(files)}")
        run.record_export(**done, runtime_files=files)
    return done["served"]


def summary_line(metrics):
    """What a finished run tells its user."""
    test = metrics["test"]
    return (f"\nTest (10,000 images, seed {metrics['seed']}): digit accuracy "
            f"{test['digit_accuracy']:.2%}, sum accuracy {test['sum_accuracy']:.2%}\n"
            f"{metrics['params']:,} parameters, {metrics['train_seconds']:.0f} s of training\n"
            f"Best model: {metrics['keras_path']}\n"
            f"SavedModel: {metrics['export_path'] or 'not served'} (candidate: "
            f"{metrics['candidate_path']})\n"
            + "".join(f"Also:       {path}\n" for path in metrics.get("runtime_files", [])) +
            f"Metrics:    {Path(metrics['keras_path']).parent / 'metrics.json'}")
