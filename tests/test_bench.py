"""The benchmark's smoke test: `--quick` runs every part and writes a complete bench.json.

Timing figures are only checked for being measured (positive, finite) and consistent with
each other: how fast a shared CI machine is says nothing about the code.
"""

import json
import math

import numpy as np
import pytest
from conftest import recount_test_accuracy
from handwriting import build as build_pictures

from keras_adder.bench import main as bench_main
from keras_adder.core.errors import KerasAdderError
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


# --quick: this many MNIST test pairs, pictures of each non-MNIST set.
QUICK_PAIRS, QUICK_SET_PICTURES = 128, 4
IMAGE_ROWS = ["serving_image, batch 1 (112x112 PNGs)", "serving_image, batch 64",
              "MNIST test PNGs as they are: same (digit, sum)", "MNIST test PNGs 4x enlarged"]


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory):
    """A small folder of non-MNIST pictures, as `make bench` writes build/handwriting."""
    folder = tmp_path_factory.mktemp("handwriting")
    return folder, list(build_pictures(folder, limit=QUICK_SET_PICTURES + 2))


def fraction(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def check_image_signature(figures, set_names):
    """The serving_image part: speed measured beside serving_default's, MNIST PNGs as
    they are answered exactly as raw pixels, the enlarged ones mostly, every set."""
    for batch in (1, 64):
        speed = figures["speed"][f"batch_{batch}"]
        assert measured(*speed.values())
        assert speed["image_over_default"] == pytest.approx(
            speed["serving_image_images_per_s"] / speed["serving_default_images_per_s"])
    assert figures["speed"]["rounds"] == 2
    png = figures["mnist_png"]
    assert png["pairs"] == QUICK_PAIRS and fraction(png["raw_digit_accuracy"])
    # Already MNIST-like: used exactly as it is, so exactly serving_default's answers.
    assert png["png_as_is"] == {"same_answers": 1.0, "differing_pairs": 0,
                                "digit_accuracy": png["raw_digit_accuracy"]}
    enlarged = png["png_enlarged"]
    assert fraction(enlarged["same_answers"]) and fraction(enlarged["digit_accuracy"])
    assert enlarged["differing_pairs"] == round((1 - enlarged["same_answers"]) * QUICK_PAIRS)
    assert abs(enlarged["digit_accuracy"] - png["raw_digit_accuracy"]) <= (
        enlarged["differing_pairs"] / QUICK_PAIRS)
    assert list(figures["picture_sets"])[:len(set_names)] == set_names
    for name in set_names:
        m = figures["picture_sets"][name]
        assert m["pictures"] == QUICK_SET_PICTURES, name
        assert all(fraction(m[key]) for key in ("digit_accuracy", "sum_accuracy", "no_ink"))
        assert m["refused"] == 0.0, name  # every file is within the signature's limits


def test_quick_benchmark_measures_every_part(tmp_path, data_dir, mnist, capsys, monkeypatch,
                                             picture_folder):
    trained, original = {}, benchmark.time_to_accuracy

    def time_to_accuracy(*args, **kwargs):  # keeps each model, to recount its accuracy
        summary, model = original(*args, **kwargs)
        trained[kwargs["recipe"]] = model
        return summary, model

    monkeypatch.setattr(benchmark, "time_to_accuracy", time_to_accuracy)
    output = tmp_path / "bench.json"
    folder, set_names = picture_folder
    bench_main(["--quick", "--data-dir", str(data_dir), "--output", str(output),
                "--pictures", str(folder)])
    results = json.loads(output.read_text())
    assert results["quick"] is True
    assert results["cpu_count"] >= 1 and results["tensorflow"] and results["keras"]
    check_training(results["training"])
    assert measured(results["pipeline_samples_per_s"], results["pipeline_share_of_step"])
    assert list(results["recipes"]) == list(trained) == ["fast", "default"]
    for name, target in (("fast", 0.994), ("default", 0.996)):
        check_recipe(results["recipes"][name], trained[name], name, target, mnist)
    check_serving(results["serving"], results["training"])
    check_image_signature(results["image_signature"], set_names)
    table = capsys.readouterr().out
    for part in ("compact ÷ reference", "of peak", "fp32 matmul peak", "3 x forward",
                 "fast recipe: time to 99.4%", "default recipe: time to 99.6%",
                 "batch-1 of fp32 cap", *SERVED, "QUICK", *IMAGE_ROWS, *set_names):
        assert part in table, part


def test_image_signature_alone_on_an_existing_saved_model(tmp_path, data_dir, capsys,
                                                          picture_folder):
    """--image-signature-only measures that part alone; a file that is not a picture is
    counted as refused while the rest of its request is still answered."""
    from keras_adder.model.architectures import build_model
    from keras_adder.serving.saved_model import export_saved_model

    export = tmp_path / "export"
    export_saved_model(build_model("compact"), export,
                       check_images=np.zeros((4, 28, 28), np.uint8))
    folder, set_names = picture_folder
    text = tmp_path / "digit.txt"
    text.write_text("7")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    mixed = [(text, 7)] + [(path, 0) for path in sorted(folder.glob("sklearn-8x8/*.png"))[:3]]
    (pictures / "labels.csv").write_text((folder / "labels.csv").read_text() + "".join(
        f"text among pictures,{path},{label}\n" for path, label in mixed))
    output = tmp_path / "bench.json"
    bench_main(["--quick", "--data-dir", str(data_dir), "--output", str(output),
                "--pictures", str(pictures), "--image-signature-only", str(export)])
    results = json.loads(output.read_text())
    assert "training" not in results and "serving" not in results
    assert results["image_signature"]["saved_model"] == str(export / "1")
    check_image_signature(results["image_signature"], set_names)
    mixed = results["image_signature"]["picture_sets"]["text among pictures"]
    assert mixed["pictures"] == 4 and mixed["refused"] == 0.25
    table = capsys.readouterr().out
    assert all(part in table for part in [*IMAGE_ROWS, "text among pictures"]), table


@pytest.mark.parametrize("labels", [None, "set,path\n", "set,path,label\nphotos,{missing},3\n",
                                    "set,path,label\nphotos,{picture},12\n"])
def test_a_wrong_pictures_folder_is_refused_before_measuring(tmp_path, data_dir, labels,
                                                             monkeypatch):
    picture = tmp_path / "a.png"
    picture.write_bytes(b"")
    if labels is not None:
        (tmp_path / "labels.csv").write_text(
            labels.format(missing=tmp_path / "gone.png", picture=picture))
    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(KerasAdderError, match=r"^--pictures .*labels\.csv"):
        bench_main(["--quick", "--data-dir", str(data_dir), "--output",
                    str(tmp_path / "bench.json"), "--pictures", str(tmp_path)])
    assert not (tmp_path / "bench.json").exists()
