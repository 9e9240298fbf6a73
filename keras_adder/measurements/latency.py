"""Serving speed by runtime: batch-1 latency and batch throughput of each exported
artifact, against the fp32 cap that the machine's matmul peak allows."""

from pathlib import Path

import numpy as np

from keras_adder.core.constants import NUM_DIGITS
from keras_adder.measurements.peak import (
    durations,
    matmul_gflops,
    model_flops_per_image,
)
from keras_adder.serving.formats import load_model
from keras_adder.serving.runtimes import QUANTIZATIONS, export_litert, export_onnx


def measure_serving(predictors, images, *, rounds=5, latency_calls=200, big_batch=1024,
                    big_calls=5, warmup=20):
    """Batch-1 latency and batch-`big_batch` throughput of each predictor, plus the
    fp32 matmul peak, measured in the same rounds.

    `predictors` maps a name to `predict(images uint8 [N, 28, 28], numbers int32 [N])`
    (numpy in; e.g. a SavedModel signature behind a small adapter, or a RuntimeModel).
    Each round times every predictor and the matmul one after the other, so a busy
    machine slows them alike; the figures are medians over the rounds (p50/p99 over
    all batch-1 calls). Returns {name: {batch1_p50_ms, batch1_p99_ms,
    batch_images_per_s}, "matmul_gflops": float, "big_batch": big_batch}.
    """
    one = (np.asarray(images[:1], np.uint8), np.array([3], np.int32))
    big = (np.asarray(images[:big_batch], np.uint8),
           np.arange(big_batch, dtype=np.int32) % NUM_DIGITS)
    for predict in predictors.values():
        for _ in range(warmup):
            predict(*one)
        predict(*big)
    latencies = {name: [] for name in predictors}
    rates = {name: [] for name in predictors}
    peaks = []
    for _ in range(rounds):
        peaks.append(matmul_gflops())
        for name, predict in predictors.items():
            latencies[name] += [1000 * s for s in durations(lambda: predict(*one), latency_calls)]
            rates[name].append(big_batch * big_calls
                               / sum(durations(lambda: predict(*big), big_calls)))
    results = {
        name: {"batch1_p50_ms": float(np.percentile(latencies[name], 50)),
               "batch1_p99_ms": float(np.percentile(latencies[name], 99)),
               "batch_images_per_s": float(np.median(rates[name]))}
        for name in predictors
    }
    results["matmul_gflops"] = float(np.median(peaks))
    results["big_batch"] = big_batch
    return results


def export_runtime_files(model, directory, *, check_images, calibration_images):
    """The LiteRT and ONNX files, fp32 and int8, of one model under `directory`:
    {"LiteRT fp32": path, "LiteRT int8": ..., "ONNX Runtime fp32": ..., ...}."""
    paths = {}
    for kind, export, suffix in (("LiteRT", export_litert, ".tflite"),
                                 ("ONNX Runtime", export_onnx, ".onnx")):
        for quantize in QUANTIZATIONS:
            precision = quantize or "fp32"
            paths[f"{kind} {precision}"] = export(
                model, Path(directory) / f"keras_adder-{precision}{suffix}",
                check_images=check_images, quantize=quantize,
                calibration_images=calibration_images)
    return paths


def serving_speed_table(model, paths, images, **timing):
    """Serving speed of each exported artifact of `model` ({name: path}: SavedModel
    folders and the files of export_runtime_files) against the fp32 cap measured in
    the same run.

    The cap is the images/s the machine's fp32 matmul peak allows at the model's
    FLOPs per image; each runtime's batch throughput is given as a fraction of it,
    and as a multiple of the first (SavedModel) entry's, and so is its batch-1 rate
    (1 / p50 latency). `timing` goes to measure_serving.
    """
    predictors = {name: load_model(path).call for name, path in paths.items()}
    measured = measure_serving(predictors, images, **timing)
    peak, big_batch = measured.pop("matmul_gflops"), measured.pop("big_batch")
    flops = model_flops_per_image(model)
    cap = peak * 1e9 / flops
    first = next(iter(measured.values()))["batch_images_per_s"]
    for figures in measured.values():
        rate = figures["batch_images_per_s"]
        figures.update(gflops=rate * flops / 1e9, fraction_of_cap=rate / cap,
                       times_first=rate / first,
                       batch1_fraction_of_cap=1000 / figures["batch1_p50_ms"] / cap)
    return {"flops_per_image": flops, "matmul_gflops": peak, "fp32_cap_images_per_s": cap,
            "big_batch": big_batch, "runtimes": measured}


def format_speed_table(table):
    """The serving table as Markdown lines."""
    lines = [f"model: {table['flops_per_image'] / 1e6:.2f} MFLOP/image; fp32 matmul peak "
             f"{table['matmul_gflops']:.0f} GFLOP/s; fp32 cap (peak / FLOPs per image) "
             f"{table['fp32_cap_images_per_s']:,.0f} images/s",
             "| runtime | batch-1 p50 | batch-1 p99 | batch-1 of fp32 cap "
             f"| batch-{table['big_batch']} images/s | GFLOP/s | of fp32 cap "
             "| x first |", "|---|---|---|---|---|---|---|---|"]
    for name, figures in table["runtimes"].items():
        lines.append(f"| {name} | {figures['batch1_p50_ms']:.2f} ms | "
                     f"{figures['batch1_p99_ms']:.2f} ms | "
                     f"{figures['batch1_fraction_of_cap']:.1%} | "
                     f"{figures['batch_images_per_s']:,.0f} | "
                     f"{figures['gflops']:.0f} | {figures['fraction_of_cap']:.0%} | "
                     f"{figures['times_first']:.2f}x |")
    return lines
