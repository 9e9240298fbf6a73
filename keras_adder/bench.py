"""One benchmark run: training cost, time to accuracy, input pipeline, serving speed.

    python -m keras_adder.bench            # the full run (~15 min on 2 CPU cores)
    python -m keras_adder.bench --quick    # a smoke test of every part (~1-2 min)

All figures come from the same process on the same machine, so the ratios between
them are fair even on a noisy shared machine. Timed parts run after a warm-up and
report the median of several windows. Prints a table and writes bench.json.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone

import keras
import numpy as np

from keras_adder import train as recipe
from keras_adder.cli import write_atomically

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

    def __init__(self, test_images, test_labels):
        super().__init__()
        self.test_images, self.test_labels, self.log = test_images, test_labels, []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        trained = time.perf_counter() - self._started
        tested_at = time.perf_counter()
        test = recipe.evaluate_on_test(self.model, self.test_images, self.test_labels,
                                       seed=recipe.SEED)
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
    from keras_adder.data import steps_per_epoch, train_dataset
    from keras_adder.model import build_model

    model = recipe.compile_model(
        build_model(arch), learning_rate=recipe.LEARNING_RATE, total_steps=10_000,
        warmup_steps=100, weight_decay=recipe.WEIGHT_DECAY, jit_compile=jit_compile,
    )
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
    from keras_adder.data import steps_per_epoch, train_dataset

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
    from keras_adder.data import steps_per_epoch, train_dataset
    from keras_adder.model import build_model

    keras.utils.set_random_seed(recipe.SEED)
    steps = steps_per_epoch(len(fit_labels), recipe.BATCH_SIZE)
    model = recipe.compile_model(
        build_model(recipe.ARCH), learning_rate=recipe.LEARNING_RATE,
        total_steps=epochs * steps, warmup_steps=recipe.WARMUP_EPOCHS * steps,
        weight_decay=recipe.WEIGHT_DECAY,
    )
    tester = EpochTester(test_images, test_labels)
    model.fit(
        train_dataset(fit_images, fit_labels, batch_size=recipe.BATCH_SIZE,
                      seed=recipe.SEED, epochs=epochs, augment=recipe.AUGMENT),
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
    import tensorflow as tf

    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
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


def run_benchmark(data_dir=None, quick=False, output="bench.json"):
    """Run every part, print the table, write `output`; return the results dict."""
    import tensorflow as tf

    from keras_adder.data import load_mnist, split_validation
    from keras_adder.export import export_saved_model

    (train_images, train_labels), (test_images, test_labels) = load_mnist(data_dir)
    (fit_images, fit_labels), _ = split_validation(train_images, train_labels)
    if quick:  # exercise every code path, measure nothing worth quoting
        fit_images, fit_labels = fit_images[:2048], fit_labels[:2048]
        timing = dict(warmup=2, window=2, windows=3)
        reference_timing, epochs, calls = dict(warmup=1, window=1, windows=3), 1, 100
    else:
        timing = dict(warmup=20, window=50, windows=5)
        reference_timing, epochs, calls = dict(warmup=3, window=5, windows=3), recipe.EPOCHS, 2000
    batch = recipe.BATCH_SIZE
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "batch_size": batch,
    }

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

    write_atomically(output, lambda staging: staging.write_text(json.dumps(results, indent=2)))
    print_table(results)
    print(f"\nwritten to {output}")
    return results


def print_table(results):
    t = results["time_to_accuracy"]
    s = results["serving"]
    rates = results["train_samples_per_s"]
    reached = t["train_seconds_to_target"]
    rows = [
        ("training, compact", f"{rates['compact']:,.0f} samples/s", ""),
        ("training, compact + XLA", f"{rates['compact_xla']:,.0f} samples/s", ""),
        ("training, reference", f"{rates['reference']:,.0f} samples/s", ""),
        ("compact ÷ reference", f"{results['train_ratio_compact_over_reference']:.1f}×", "≥ 20×"),
        ("input pipeline", f"{results['pipeline_samples_per_s']:,.0f} samples/s", "≥ 50,000"),
        ("pipeline share of a step", f"{results['pipeline_share_of_step']:.1%}", "< 5 %"),
        (f"time to {t['target']:.1%} (both heads)",
         f"{reached:.0f} s" if reached is not None else "not reached", "≤ 120 s"),
        ("final test digit accuracy", f"{t['final_digit_accuracy']:.2%}", "≥ 99.6 %"),
        ("final test sum accuracy", f"{t['final_sum_accuracy']:.2%}", "≥ 99.6 %"),
        ("compact parameters", f"{t['params']:,}", "≤ 30,000"),
        ("recipe training time", f"{t['total_train_seconds']:.0f} s "
         f"(+{t['total_eval_seconds']:.0f} s testing)", ""),
        ("serving batch-1 p50", f"{s['batch1_p50_ms']:.2f} ms", "≤ 2 ms"),
        ("serving batch-1 p99", f"{s['batch1_p99_ms']:.2f} ms", ""),
        ("serving batch-1024", f"{s['batch1024_images_per_s']:,.0f} images/s", "≥ 20,000"),
    ]
    print(f"\nkeras-adder bench, {results['date']}, {results['cpu_count']} CPUs, "
          f"TF {results['tensorflow']}, Keras {results['keras']}"
          + (" (QUICK: smoke test, figures meaningless)" if results["quick"] else ""))
    print(f"| {'measure':<28} | {'result':<26} | {'target':<8} |")
    print(f"|{'-' * 30}|{'-' * 28}|{'-' * 10}|")
    for name, value, target in rows:
        print(f"| {name:<28} | {value:<26} | {target:<8} |")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.bench",
        description="Measure training throughput (compact vs reference), time to 99.4%% "
        "test accuracy of the default recipe, input-pipeline speed and SavedModel "
        "serving latency/throughput in one run; print a table and write JSON.",
    )
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA, "
                        "else Keras' download)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny version of every part, for CI smoke tests only")
    parser.add_argument("--output", default="bench.json",
                        help="where to write the results (default: bench.json)")
    args = parser.parse_args(argv)
    return run_benchmark(args.data_dir, quick=args.quick, output=args.output)


if __name__ == "__main__":
    from keras_adder.cli import run

    run(main)
