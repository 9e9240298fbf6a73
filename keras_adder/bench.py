"""One benchmark run: training cost against the machine's matmul peak, time to accuracy
of the fast and default recipes, input pipeline, serving speed by runtime, and the
serving_image signature (encoded pictures) against serving_default.

    python -m keras_adder.bench            # the full run (45+ min on 2 CPU cores: it
                                           # trains both recipes, 4 + 36 epochs)
    python -m keras_adder.bench --quick    # a smoke test of every part (a few minutes)
    python -m keras_adder.bench --pictures build/handwriting   # + non-MNIST accuracy
    python -m keras_adder.bench --image-signature-only saved_models/keras_adder
                                           # only the serving_image part, on that model

Prints two tables and writes bench.json; docs/performance.md describes the measures.
"""

import argparse

from keras_adder.cli import require_packages, run
from keras_adder.core import startup
from keras_adder.core.constants import RUNTIME_FORMATS
from keras_adder.core.files import check_output_file


def _training_rows(training):
    rows = []
    for name, label in (("compact", "compact"), ("compact_xla", "compact + XLA"),
                        ("reference", "reference")):
        m = training["models"][name]
        rows.append((f"training, {label}",
                     f"{m['samples_per_s']:,.0f} samples/s, {m['gflops']:.1f} GFLOP/s "
                     f"({m['fraction_of_peak']:.1%} of peak)", ""))
    peaks = training["matmul_gflops_measured"]
    rows += [
        ("fp32 matmul peak", f"{training['matmul_gflops']:.0f} GFLOP/s (median of "
         f"{len(peaks)}: {min(peaks):.0f}-{max(peaks):.0f})", ""),
        ("compact ÷ reference", f"{training['compact_over_reference']:.1f}×", ""),
    ]
    return rows


def _recipe_rows(name, t, goal):
    reached = (f"{t['train_seconds_to_target']:.0f} s, epoch {t['epochs_to_target']} "
               f"of {t['epochs_run']}" if t["epochs_to_target"] is not None
               else f"not reached in {t['epochs_run']} epoch(s)")
    return [
        (f"{name}: time to {t['target']:.1%} (both heads)", reached, ""),
        (f"{name}: final test digit / sum",
         f"{t['final_digit_accuracy']:.2%} / {t['final_sum_accuracy']:.2%}", goal),
        (f"{name}: training time", f"{t['total_train_seconds']:.0f} s "
         f"(+{t['total_eval_seconds']:.0f} s testing)", ""),
    ]


def _print_image_signature(results):
    # Deferred: the module imports TensorFlow, which --help never needs.
    from keras_adder.measurements.image_requests import format_image_table

    print("\nserving_image: encoded pictures (the default recipe's SavedModel, "
          "tf.saved_model.load; speed: medians of "
          f"{results['image_signature']['speed']['rounds']} rounds)")
    print("\n".join(format_image_table(results["image_signature"])))


def print_table(results):
    # Deferred: runtimes imports TensorFlow, which --help never needs.
    from keras_adder.measurements.latency import format_speed_table

    recipes = results["recipes"]
    rows = [
        *_training_rows(results["training"]),
        ("input pipeline", f"{results['pipeline_samples_per_s']:,.0f} samples/s", "≥ 50,000"),
        ("pipeline share of a step", f"{results['pipeline_share_of_step']:.1%}", "< 5 %"),
        *_recipe_rows("fast recipe", recipes["fast"], "≥ 99.4 %"),
        *_recipe_rows("default recipe", recipes["default"], "≥ 99.6 %"),
        ("compact parameters", f"{recipes['default']['params']:,}", "≤ 30,000"),
    ]
    print(f"\nkeras-adder bench, {results['date']}, {results['cpu_count']} CPUs, "
          f"TF {results['tensorflow']}, Keras {results['keras']}"
          + (" (QUICK: smoke test, figures meaningless)" if results["quick"] else ""))
    print(f"{results['training']['flops_convention']}; peak = TensorFlow fp32 matmul, "
          "measured between the timed windows")
    print(f"| {'measure':<42} | {'result':<50} | {'goal':<8} |")
    print(f"|{'-' * 44}|{'-' * 52}|{'-' * 10}|")
    for name, value, goal in rows:
        print(f"| {name:<42} | {value:<50} | {goal:<8} |")
    print("\nserving by runtime (the default recipe's model; LiteRT and ONNX Runtime on "
          "2 threads)")
    print("\n".join(format_speed_table(results["serving"])))
    _print_image_signature(results)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.bench",
        description="Measure training throughput (compact vs reference, in samples/s and "
        "GFLOP/s against the fp32 matmul peak), time to 99.4 % test accuracy of the fast "
        "recipe and to 99.6 % of the default, input-pipeline speed, and serving speed "
        "by runtime (SavedModel, LiteRT, ONNX Runtime; fp32 and int8), and the "
        "serving_image signature (encoded pictures: speed beside serving_default, answers "
        "for MNIST PNGs, accuracy on --pictures) in one run; print tables and write JSON.",
    )
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA, "
                        "else Keras' download)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny version of every part, for CI smoke tests only")
    parser.add_argument("--output", default="bench.json",
                        help="where to write the results (default: bench.json)")
    parser.add_argument("--pictures", metavar="DIR",
                        help="handwritten digits that are not MNIST, for serving_image's "
                        "accuracy: a folder written by `python tests/handwriting.py DIR` "
                        "(DIR/labels.csv; `make bench` writes build/handwriting)")
    parser.add_argument("--image-signature-only", metavar="SAVEDMODEL",
                        help="measure only serving_image beside serving_default, on this "
                        "SavedModel (a version folder or a base path)")
    args = parser.parse_args(argv)
    # Before any measurement: a full run takes 45 minutes, and its figures would be lost.
    check_output_file(args.output, "--output")
    if not args.image_signature_only:
        require_packages([package for packages in RUNTIME_FORMATS.values()
                          for package in packages],
                         "bench (it measures LiteRT and ONNX Runtime)")
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help never needs.
    from keras_adder.measurements import suite
    from keras_adder.measurements.image_requests import read_picture_sets

    if args.pictures:
        read_picture_sets(args.pictures)  # a wrong folder is refused now, not at the end
    if args.image_signature_only:
        results = suite.run_image_signature_benchmark(
            args.image_signature_only, args.data_dir, quick=args.quick, output=args.output,
            pictures_dir=args.pictures)
        _print_image_signature(results)
    else:
        results = suite.run_benchmark(args.data_dir, quick=args.quick, output=args.output,
                                      pictures_dir=args.pictures)
        print_table(results)
    print(f"\nwritten to {args.output}")
    return results


if __name__ == "__main__":
    run(main)
