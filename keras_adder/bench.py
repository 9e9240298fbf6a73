"""One benchmark run: training cost, time to accuracy, input pipeline, serving speed.

    python -m keras_adder.bench            # the full run (~15 min on 2 CPU cores)
    python -m keras_adder.bench --quick    # a smoke test of every part (~1-2 min)

Prints a table and writes bench.json; docs/performance.md shows the measured figures.
"""

import argparse

from keras_adder import startup
from keras_adder.cli import run


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
        description="Measure training throughput (compact vs reference), time to 99.4 %% "
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
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help never needs.
    from keras_adder.benchmark import run_benchmark

    results = run_benchmark(args.data_dir, quick=args.quick, output=args.output)
    print_table(results)
    print(f"\nwritten to {args.output}")
    return results


if __name__ == "__main__":
    run(main)
