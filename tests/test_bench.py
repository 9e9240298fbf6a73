"""The benchmark's smoke test: `--quick` runs every part and writes a complete bench.json.

Timing figures are only checked for being measured (positive, finite) and consistent with
each other: how fast a shared CI machine is says nothing about the code.
"""

import json
import math

import pytest
from conftest import recount_test_accuracy

from keras_adder.bench import main as bench_main
from keras_adder.core.recipe import RECIPES
from keras_adder.measurements import suite as benchmark

pytestmark = pytest.mark.slow

SERVED = ["SavedModel fp32", "LiteRT fp32", "LiteRT int8", "ONNX Runtime fp32",
          "ONNX Runtime int8"]


def measured(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def check_training(training):
    assert "3 x forward" in training["flops_convention"]
    peaks = training["matmul_gflops_measured"]
    # Before the first window and after each of 3 windows of each of the 3 models.
    assert len(peaks) == 1 + 3 * 3 and measured(*peaks)
    assert min(peaks) <= training["matmul_gflops"] <= max(peaks)
    models = training["models"]
    assert list(models) == ["compact", "compact_xla", "reference"]
    for m in models.values():
        assert measured(*m.values())
        assert m["gflops"] == pytest.approx(m["samples_per_s"] * m["flops_per_sample"] / 1e9)
        assert m["fraction_of_peak"] == pytest.approx(m["gflops"] / training["matmul_gflops"])
    assert models["compact"]["flops_per_sample"] == models["compact_xla"]["flops_per_sample"]
    assert models["reference"]["flops_per_sample"] > 20 * models["compact"]["flops_per_sample"]
    assert training["compact_over_reference"] == pytest.approx(
        models["compact"]["samples_per_s"] / models["reference"]["samples_per_s"])


def check_recipe(summary, model, name, target, mnist):
    assert summary["recipe"] == name and summary["target"] == target
    assert [e["epoch"] for e in summary["epochs"]] == [1] and summary["epochs_run"] == 1
    first = summary["epochs"][0]
    if min(first["digit_accuracy"], first["sum_accuracy"]) >= target:
        assert summary["epochs_to_target"] == 1
        assert summary["train_seconds_to_target"] == summary["total_train_seconds"]
    else:
        assert summary["epochs_to_target"] is None and summary["train_seconds_to_target"] is None
    assert measured(summary["total_train_seconds"], summary["total_eval_seconds"])
    _, (test_images, test_labels) = mnist
    recounted = recount_test_accuracy(model, test_images, test_labels, seed=RECIPES[name].seed)
    assert summary["final_digit_accuracy"] == pytest.approx(recounted["digit_accuracy"], abs=1e-6)
    assert summary["final_sum_accuracy"] == pytest.approx(recounted["sum_accuracy"], abs=1e-6)
    assert summary["params"] == 28_134


def check_serving(serving, training):
    assert list(serving["runtimes"]) == SERVED
    assert serving["flops_per_image"] * 3 == training["models"]["compact"]["flops_per_sample"]
    cap = serving["matmul_gflops"] * 1e9 / serving["flops_per_image"]
    assert serving["fp32_cap_images_per_s"] == pytest.approx(cap)
    for figures in serving["runtimes"].values():
        assert measured(*figures.values())
        assert figures["batch1_p50_ms"] <= figures["batch1_p99_ms"]
        assert figures["fraction_of_cap"] == pytest.approx(figures["batch_images_per_s"] / cap)
        assert figures["batch1_fraction_of_cap"] == pytest.approx(
            1000 / figures["batch1_p50_ms"] / cap)


def test_quick_benchmark_measures_every_part(tmp_path, data_dir, mnist, capsys, monkeypatch):
    trained, original = {}, benchmark.time_to_accuracy

    def time_to_accuracy(*args, **kwargs):  # keeps each model, to recount its accuracy
        summary, model = original(*args, **kwargs)
        trained[kwargs["recipe"]] = model
        return summary, model

    monkeypatch.setattr(benchmark, "time_to_accuracy", time_to_accuracy)
    output = tmp_path / "bench.json"
    bench_main(["--quick", "--data-dir", str(data_dir), "--output", str(output)])
    results = json.loads(output.read_text())
    assert results["quick"] is True
    assert results["cpu_count"] >= 1 and results["tensorflow"] and results["keras"]
    check_training(results["training"])
    assert measured(results["pipeline_samples_per_s"], results["pipeline_share_of_step"])
    assert list(results["recipes"]) == list(trained) == ["fast", "default"]
    for name, target in (("fast", 0.994), ("default", 0.996)):
        check_recipe(results["recipes"][name], trained[name], name, target, mnist)
    check_serving(results["serving"], results["training"])
    table = capsys.readouterr().out
    for part in ("compact ÷ reference", "of peak", "fp32 matmul peak", "3 x forward",
                 "fast recipe: time to 99.4%", "default recipe: time to 99.6%",
                 "batch-1 of fp32 cap", *SERVED, "QUICK"):
        assert part in table, part
