"""The benchmark's smoke test: `--quick` runs every part and writes a complete bench.json.

Timing figures are only checked for being measured (positive, finite): how fast a shared
CI machine is says nothing about the code.
"""

import json
import math

import pytest

from conftest import recount_test_accuracy
from keras_adder import benchmark
from keras_adder.bench import main as bench_main
from keras_adder.recipe import RECIPES

pytestmark = pytest.mark.slow


def test_quick_benchmark_measures_every_part(tmp_path, data_dir, mnist, capsys, monkeypatch):
    trained, original = [], benchmark.time_to_accuracy

    def time_to_accuracy(*args, **kwargs):  # keeps the model, to recount its accuracy
        log, reached, model = original(*args, **kwargs)
        trained.append(model)
        return log, reached, model

    monkeypatch.setattr(benchmark, "time_to_accuracy", time_to_accuracy)
    output = tmp_path / "bench.json"
    bench_main(["--quick", "--data-dir", str(data_dir), "--output", str(output)])
    results = json.loads(output.read_text())
    assert results["quick"] is True
    assert results["cpu_count"] >= 1 and results["tensorflow"] and results["keras"]
    figures = [
        *results["train_samples_per_s"].values(),
        results["train_ratio_compact_over_reference"],
        results["pipeline_samples_per_s"],
        results["pipeline_share_of_step"],
        *results["serving"].values(),
    ]
    assert all(math.isfinite(v) and v > 0 for v in figures), figures
    progress = results["time_to_accuracy"]
    assert [e["epoch"] for e in progress["epochs"]] == [1]
    _, (test_images, test_labels) = mnist
    recounted = recount_test_accuracy(trained[0], test_images, test_labels,
                                      seed=RECIPES["default"].seed)
    assert progress["final_digit_accuracy"] == pytest.approx(recounted["digit_accuracy"], abs=1e-6)
    assert progress["final_sum_accuracy"] == pytest.approx(recounted["sum_accuracy"], abs=1e-6)
    assert progress["params"] == 28_343
    assert results["serving"]["batch1_p50_ms"] <= results["serving"]["batch1_p99_ms"]
    table = capsys.readouterr().out
    assert "compact ÷ reference" in table and "QUICK" in table
