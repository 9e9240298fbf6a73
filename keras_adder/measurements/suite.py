"""The benchmark's measurements: training cost against the machine's matmul peak, time
to accuracy of the fast and default recipes, input pipeline, serving speed by runtime and
the serving_image signature (image_requests), all in one process so that their ratios are fair on a noisy machine.
Timed parts run after a warm-up and report the median of several windows.
"""

import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.core.files import write_json
from keras_adder.core.recipe import RECIPES, Recipe, make_recipe
from keras_adder.data.pipeline import (
    load_mnist,
    split_validation,
    steps_per_epoch,
    train_dataset,
)
from keras_adder.measurements.image_requests import measure_image_signature
from keras_adder.measurements.latency import export_runtime_files, serving_speed_table
from keras_adder.measurements.peak import (
    durations,
    matmul_gflops,
    model_flops_per_image,
)
from keras_adder.model.architectures import build_model, compile_model
from keras_adder.reports.exhaustive import evaluate_on_test
from keras_adder.serving.saved_model import export_saved_model

# Each recipe's goal on both heads of the test set: the fast recipe is for quick
# trials, the default for the best final model.
TARGETS = {"fast": 0.994, "default": 0.996}
# Training FLOPs per sample = 3 x the forward FLOPs: per Conv2D/Dense layer, the forward
# product plus two of the same size in the backward pass (the gradients with respect to
# the activations and to the weights). A convention: the first layer needs no input
# gradient, and elementwise work (BatchNorm, activations, the optimizer) is not counted.
TRAINING_FLOPS_FACTOR = 3
FLOPS_CONVENTION = (f"training FLOPs/sample = {TRAINING_FLOPS_FACTOR} x forward FLOPs of Conv2D "
                    "+ Dense layers")


def _median_rate(window_seconds, items_per_window):
    return items_per_window / float(np.median(window_seconds))


class BatchClock(keras.callbacks.Callback):
    """Times windows of `window` training steps after `warmup` steps; `between()`, if
    given, runs after each window with the clock stopped."""

    def __init__(self, warmup, window, between=None):
        super().__init__()
        self.warmup, self.window, self.between = warmup, window, between
        self.windows, self._count, self._start = [], 0, None

    def on_train_batch_end(self, batch, logs=None):
        self._count += 1
        if self._count == self.warmup:
            self._start = time.perf_counter()
        elif self._count > self.warmup and (self._count - self.warmup) % self.window == 0:
            self.windows.append(time.perf_counter() - self._start)
            if self.between is not None:
                self.between()
            self._start = time.perf_counter()


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
                        jit_compile=False, between=None):
    """Samples/s of `model.fit` steps on the training pipeline (median of windows);
    `between()` runs after each timed window, off the clock."""
    # A long schedule, so the timed steps run at a realistic learning rate.
    model = compile_model(build_model(arch), Recipe(arch=arch, epochs=100), steps_per_epoch=100,
                          jit_compile=jit_compile)
    steps = warmup + window * windows
    epochs = -(-steps // steps_per_epoch(len(labels), batch_size))
    clock = BatchClock(warmup, window, between)
    model.fit(
        train_dataset(images, labels, batch_size=batch_size, seed=0, epochs=epochs),
        epochs=1, steps_per_epoch=steps, callbacks=[clock], verbose=0, shuffle=False,
    )
    return _median_rate(clock.windows, window * batch_size)


def training_cost(images, labels, *, batch_size, timing, reference_timing, peak_calls=16):
    """Training samples/s and achieved GFLOP/s of compact, compact + XLA and reference,
    against the fp32 matmul peak (`peak_calls` products per measurement) measured before
    the first timed window and after each one (the median of those), so that the peak
    sees the same load as the training."""
    peaks = [matmul_gflops(calls=peak_calls)]
    measure_peak = lambda: peaks.append(matmul_gflops(calls=peak_calls))  # noqa: E731
    variants = {"compact": ("compact", False, timing), "compact_xla": ("compact", True, timing),
                "reference": ("reference", False, reference_timing)}
    figures = {}
    for name, (arch, xla, windows) in variants.items():
        rate = training_throughput(arch, images, labels, batch_size=batch_size,
                                   jit_compile=xla, between=measure_peak, **windows)
        flops = TRAINING_FLOPS_FACTOR * model_flops_per_image(build_model(arch))
        figures[name] = {"samples_per_s": rate, "flops_per_sample": flops,
                         "gflops": rate * flops / 1e9}
    peak = float(np.median(peaks))
    for entry in figures.values():
        entry["fraction_of_peak"] = entry["gflops"] / peak
    return {"flops_convention": FLOPS_CONVENTION, "matmul_gflops": peak,
            "matmul_gflops_measured": peaks, "models": figures,
            "compact_over_reference": (figures["compact"]["samples_per_s"]
                                       / figures["reference"]["samples_per_s"])}


def pipeline_throughput(images, labels, *, batch_size, warmup, window, windows):
    """Samples/s of the training tf.data pipeline alone (with augmentation)."""
    steps = warmup + window * windows
    epochs = -(-steps // steps_per_epoch(len(labels), batch_size))
    iterator = iter(train_dataset(images, labels, batch_size=batch_size, seed=0, epochs=epochs))
    for _ in range(warmup):
        next(iterator)
    window_seconds = durations(lambda: [next(iterator) for _ in range(window)], windows)
    return _median_rate(window_seconds, window * batch_size)


def time_to_accuracy(fit_images, fit_labels, test_images, test_labels, *, recipe, target,
                     epochs=None):
    """Train the named recipe (`epochs`, if given, replaces its length), testing after
    every epoch with the clock stopped.

    Returns a summary (the per-epoch log; the training seconds and epochs until both
    heads first reached `target` on the test set, None if never; the final accuracies
    and totals) and the trained model.
    """
    chosen = make_recipe(recipe, epochs=epochs)
    keras.utils.set_random_seed(chosen.seed)
    steps = steps_per_epoch(len(fit_labels), chosen.batch_size)
    model = compile_model(build_model(chosen.arch, chosen.dropout), chosen, steps)
    tester = EpochTester(test_images, test_labels, seed=chosen.seed)
    model.fit(
        train_dataset(fit_images, fit_labels, batch_size=chosen.batch_size,
                      seed=chosen.seed, epochs=chosen.epochs, augment=chosen.augment),
        epochs=chosen.epochs, steps_per_epoch=steps, callbacks=[tester], verbose=0,
        shuffle=False,
    )
    log, clock, reached = tester.log, 0.0, None
    for entry in log:
        clock += entry["train_seconds"]
        entry["train_clock"] = clock
        if reached is None and min(entry["digit_accuracy"], entry["sum_accuracy"]) >= target:
            reached = entry
    return {
        "recipe": recipe,
        "target": target,
        "train_seconds_to_target": reached["train_clock"] if reached else None,
        "epochs_to_target": reached["epoch"] if reached else None,
        "epochs_run": chosen.epochs,
        "final_digit_accuracy": log[-1]["digit_accuracy"],
        "final_sum_accuracy": log[-1]["sum_accuracy"],
        "total_train_seconds": clock,
        "total_eval_seconds": sum(e["eval_seconds"] for e in log),
        "params": model.count_params(),
        "epochs": log,
    }, model


def serving_by_runtime(model, directory, *, check_images, calibration_images, images,
                       **timing):
    """Export `model` as a SavedModel (served with BatchNorm folded, as every export) and as
    LiteRT and ONNX files (fp32 and int8, calibrated on `calibration_images`, which must
    be training images), then time them all in the same rounds (serving_speed_table).
    Returns that table and the SavedModel's version folder."""
    directory = Path(directory)
    paths = {
        "SavedModel fp32": export_saved_model(model, directory / "saved_model",
                                              check_images=check_images),
        **export_runtime_files(model, directory / "files", check_images=check_images,
                               calibration_images=calibration_images),
    }
    return serving_speed_table(model, paths, images, **timing), paths["SavedModel fp32"]


def _machine():
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def _settings(quick):
    """Timing windows, matmul products per peak measurement, training images (None:
    all) of the timed parts and of each recipe, epochs (None: the recipe's own) and
    serving rounds."""
    if quick:  # exercise every code path, measure nothing worth quoting
        # The served (default) model trains one epoch on all images: after 16 steps its
        # sum head is at chance, and int8 flips so many near-ties that the export's
        # check (int8 classes agree with fp32 on 95 % of pairs) refuses the file.
        return dict(timing=dict(warmup=2, window=2, windows=3),
                    reference_timing=dict(warmup=1, window=1, windows=3), peak_calls=2,
                    examples=2048, recipe_examples={"fast": 2048, "default": None},
                    epochs=1, serving=dict(rounds=1, latency_calls=20, big_calls=1, warmup=2))
    return dict(timing=dict(warmup=20, window=50, windows=5),
                reference_timing=dict(warmup=3, window=5, windows=3), peak_calls=16,
                examples=None, recipe_examples={"fast": None, "default": None},
                epochs=None, serving=dict(rounds=9))


def run_benchmark(data_dir=None, quick=False, output="bench.json", pictures_dir=None):
    """Run every part, write `output`; return the results dict. `pictures_dir`: the
    non-MNIST pictures for serving_image (image_requests.read_picture_sets)."""
    (train_images, train_labels), (test_images, test_labels) = load_mnist(data_dir)
    (all_images, all_labels), _ = split_validation(train_images, train_labels)
    settings = _settings(quick)
    fit_images, fit_labels = (all_images[:settings["examples"]],
                              all_labels[:settings["examples"]])
    batch = RECIPES["default"].batch_size
    results = {**_machine(), "quick": quick, "batch_size": batch}
    print("1. training throughput (model.fit steps) and the fp32 matmul peak", flush=True)
    training = training_cost(fit_images, fit_labels, batch_size=batch,
                             timing=settings["timing"],
                             reference_timing=settings["reference_timing"],
                             peak_calls=settings["peak_calls"])
    results["training"] = training

    print("2. input pipeline alone", flush=True)
    timing = settings["timing"]
    pipeline = pipeline_throughput(fit_images, fit_labels, batch_size=batch,
                                   warmup=timing["warmup"], window=timing["window"] * 4,
                                   windows=timing["windows"])
    results["pipeline_samples_per_s"] = pipeline
    results["pipeline_share_of_step"] = training["models"]["compact"]["samples_per_s"] / pipeline

    results["recipes"], models = {}, {}
    for step, (recipe, target) in enumerate(TARGETS.items(), start=3):
        print(f"{step}. {recipe} recipe: time to {target:.1%} on both heads", flush=True)
        examples = settings["recipe_examples"][recipe]
        results["recipes"][recipe], models[recipe] = time_to_accuracy(
            all_images[:examples], all_labels[:examples], test_images, test_labels,
            recipe=recipe, target=target, epochs=settings["epochs"])

    print("5. serving by runtime (the default recipe's model)", flush=True)
    with tempfile.TemporaryDirectory() as export_dir:
        results["serving"], saved_model = serving_by_runtime(
            models["default"], export_dir, check_images=test_images[:64],
            calibration_images=fit_images, images=test_images, **settings["serving"])
        print("6. serving_image: encoded pictures (the same SavedModel)", flush=True)
        results["image_signature"] = measure_image_signature(
            saved_model, test_images, test_labels, pictures_dir=pictures_dir, quick=quick)

    write_json(output, results)
    return results


def run_image_signature_benchmark(saved_model, data_dir=None, quick=False, output="bench.json",
                                  pictures_dir=None):
    """Only the serving_image part of run_benchmark, on an existing SavedModel (a version
    folder or a base path); write `output`; return the results dict."""
    _, (test_images, test_labels) = load_mnist(data_dir)
    results = {**_machine(), "quick": quick}
    results["image_signature"] = measure_image_signature(
        saved_model, test_images, test_labels, pictures_dir=pictures_dir, quick=quick)
    write_json(output, results)
    return results
