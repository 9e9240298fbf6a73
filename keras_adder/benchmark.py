"""The benchmark's measurements: training cost, time to accuracy, input pipeline and
serving speed, all in one process so that their ratios are fair on a noisy machine.
Timed parts run after a warm-up and report the median of several windows.
"""

import dataclasses
import os
import platform
import tempfile
import time
from datetime import datetime, timezone

import keras
import numpy as np
import tensorflow as tf

from keras_adder.data import load_mnist, split_validation, steps_per_epoch, train_dataset
from keras_adder.evaluation import evaluate_on_test
from keras_adder.files import write_json
from keras_adder.model import build_model, compile_model
from keras_adder.recipe import RECIPES, Recipe
from keras_adder.saved_model import export_saved_model, load_saved_model

TARGET_ACCURACY = 0.994


def _median_rate(window_seconds, items_per_window):
    return items_per_window / float(np.median(window_seconds))


class BatchClock(keras.callbacks.Callback):
    """Times windows of `window` training steps after `warmup` steps."""

    def __init__(self, warmup, window):
        super().__init__()
        self.warmup, self.window = warmup, window
        self.windows, self._count, self._start = [], 0, None

    def on_train_batch_end(self, batch, logs=None):
        self._count += 1
        if self._count == self.warmup:
            self._start = time.perf_counter()
        elif self._count > self.warmup and (self._count - self.warmup) % self.window == 0:
            now = time.perf_counter()
            self.windows.append(now - self._start)
            self._start = now


class EpochTester(keras.callbacks.Callback):
    """Tests after every epoch with the training clock stopped; keeps a log."""

    def __init__(self, test_images, test_labels, seed):
        super().__init__()
        self.test_images, self.test_labels, self.log = test_images, test_labels, []
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        trained = time.perf_counter() - self._started
        tested_at = time.perf_counter()
        test = evaluate_on_test(self.model, self.test_images, self.test_labels,
                                seed=self.seed)
        self.log.append({
            "epoch": epoch + 1,
            "train_seconds": trained,
            "eval_seconds": time.perf_counter() - tested_at,
            "digit_accuracy": test["digit_accuracy"],
            "sum_accuracy": test["sum_accuracy"],
        })
        print(f"  epoch {epoch + 1}: test digit {test['digit_accuracy']:.2%}, "
              f"sum {test['sum_accuracy']:.2%} ({trained:.1f} s)", flush=True)


def training_throughput(arch, images, labels, *, batch_size, warmup, window, windows,
                        jit_compile=False):
    """Samples/s of `model.fit` steps on the training pipeline (median of windows)."""
    # A long schedule, so the timed steps run at a realistic learning rate.
    model = compile_model(build_model(arch), Recipe(arch=arch, epochs=100), steps_per_epoch=100,
                          jit_compile=jit_compile)
    steps = warmup + window * windows
    epochs = -(-steps // steps_per_epoch(len(labels), batch_size))
    clock = BatchClock(warmup, window)
    model.fit(
        train_dataset(images, labels, batch_size=batch_size, seed=0, epochs=epochs),
        epochs=1, steps_per_epoch=steps, callbacks=[clock], verbose=0, shuffle=False,
    )
    return _median_rate(clock.windows, window * batch_size)


def pipeline_throughput(images, labels, *, batch_size, warmup, window, windows):
    """Samples/s of the training tf.data pipeline alone (with augmentation)."""
    steps = warmup + window * windows
    epochs = -(-steps // steps_per_epoch(len(labels), batch_size))
    iterator = iter(train_dataset(images, labels, batch_size=batch_size, seed=0, epochs=epochs))
    for _ in range(warmup):
        next(iterator)
    durations = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(window):
            next(iterator)
        durations.append(time.perf_counter() - start)
    return _median_rate(durations, window * batch_size)


def time_to_accuracy(fit_images, fit_labels, test_images, test_labels, *, epochs,
                     target=TARGET_ACCURACY):
    """Train the default recipe, testing after every epoch with the clock stopped.

    Returns the per-epoch log, the training seconds until both heads reached `target`
    on the test set (None if never), and the trained model.
    """
    recipe = dataclasses.replace(RECIPES["default"], epochs=epochs)
    keras.utils.set_random_seed(recipe.seed)
    steps = steps_per_epoch(len(fit_labels), recipe.batch_size)
    model = compile_model(build_model(recipe.arch), recipe, steps)
    tester = EpochTester(test_images, test_labels, seed=recipe.seed)
    model.fit(
        train_dataset(fit_images, fit_labels, batch_size=recipe.batch_size,
                      seed=recipe.seed, epochs=epochs, augment=recipe.augment),
        epochs=epochs, steps_per_epoch=steps, callbacks=[tester], verbose=0,
        shuffle=False,
    )
    log, clock, reached = tester.log, 0.0, None
    for entry in log:
        clock += entry["train_seconds"]
        entry["train_clock"] = clock
        if reached is None and min(entry["digit_accuracy"], entry["sum_accuracy"]) >= target:
            reached = clock
    return log, reached, model


def _durations(call, count):
    """Wall seconds of `count` calls of `call`, one by one."""
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def serving_speed(export_path, test_images, *, calls, big_batch=1024, big_calls=20):
    """Batch-1 latency percentiles and large-batch throughput of serving_default."""
    _, serve = load_saved_model(export_path)
    one_image = tf.constant(test_images[:1])
    one_number = tf.constant([3], tf.int32)
    call_one = lambda: serve(image=one_image, number=one_number)
    _durations(call_one, 50)  # warm-up
    latencies = _durations(call_one, calls)
    images = tf.constant(test_images[:big_batch])
    numbers = tf.constant(np.arange(big_batch) % 10, tf.int32)
    call_big = lambda: serve(image=images, number=numbers)
    call_big()  # warm-up
    durations = _durations(call_big, big_calls)
    latencies_ms = np.array(latencies) * 1000
    return {
        "batch1_p50_ms": float(np.percentile(latencies_ms, 50)),
        "batch1_p99_ms": float(np.percentile(latencies_ms, 99)),
        "batch1_calls": calls,
        f"batch{big_batch}_images_per_s": _median_rate(durations, big_batch),
    }


def _machine():
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def run_benchmark(data_dir=None, quick=False, output="bench.json"):
    """Run every part, write `output`; return the results dict."""
    (train_images, train_labels), (test_images, test_labels) = load_mnist(data_dir)
    (fit_images, fit_labels), _ = split_validation(train_images, train_labels)
    if quick:  # exercise every code path, measure nothing worth quoting
        fit_images, fit_labels = fit_images[:2048], fit_labels[:2048]
        timing = dict(warmup=2, window=2, windows=3)
        reference_timing, epochs, calls = dict(warmup=1, window=1, windows=3), 1, 100
    else:
        timing = dict(warmup=20, window=50, windows=5)
        reference_timing, epochs, calls = (dict(warmup=3, window=5, windows=3),
                                           RECIPES["default"].epochs, 2000)
    batch = RECIPES["default"].batch_size
    results = {**_machine(), "quick": quick, "batch_size": batch}
    print("1. training throughput (model.fit steps)", flush=True)
    compact = training_throughput("compact", fit_images, fit_labels, batch_size=batch, **timing)
    compact_xla = training_throughput("compact", fit_images, fit_labels, batch_size=batch,
                                      jit_compile=True, **timing)
    reference = training_throughput("reference", fit_images, fit_labels, batch_size=batch,
                                    **reference_timing)
    results["train_samples_per_s"] = {"compact": compact, "compact_xla": compact_xla,
                                      "reference": reference}
    results["train_ratio_compact_over_reference"] = compact / reference

    print("2. input pipeline alone", flush=True)
    pipeline = pipeline_throughput(fit_images, fit_labels, batch_size=batch,
                                   warmup=timing["warmup"], window=timing["window"] * 4,
                                   windows=timing["windows"])
    results["pipeline_samples_per_s"] = pipeline
    results["pipeline_share_of_step"] = compact / pipeline

    print(f"3. time to {TARGET_ACCURACY:.1%} on both heads ({epochs} epochs)", flush=True)
    log, reached, model = time_to_accuracy(fit_images, fit_labels, test_images, test_labels,
                                           epochs=epochs)
    results["time_to_accuracy"] = {
        "target": TARGET_ACCURACY,
        "train_seconds_to_target": reached,
        "epochs": log,
        "final_digit_accuracy": log[-1]["digit_accuracy"],
        "final_sum_accuracy": log[-1]["sum_accuracy"],
        "total_train_seconds": log[-1]["train_clock"],
        "total_eval_seconds": sum(e["eval_seconds"] for e in log),
        "params": model.count_params(),
    }

    print("4. serving (SavedModel serving_default from Python)", flush=True)
    with tempfile.TemporaryDirectory() as export_dir:
        path = export_saved_model(model, export_dir, check_images=test_images[:16])
        results["serving"] = serving_speed(path, test_images, calls=calls)

    write_json(output, results)
    return results
