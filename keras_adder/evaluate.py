"""Exhaustive evaluation: every image of a split paired with every number 0-9.

    python -m keras_adder.evaluate saved_models/keras_adder             # newest version
    python -m keras_adder.evaluate saved_models/keras_adder/3
    python -m keras_adder.evaluate runs/<run>/best.keras --split validation

What evaluation.json holds is described in `keras_adder.reports.exhaustive`.
"""

import argparse
from pathlib import Path

from keras_adder.cli import positive_int, run
from keras_adder.core import startup
from keras_adder.core.constants import (
    EVALUATION_BATCH,
    EVALUATION_DIR,
    EVALUATION_SPLITS,
)
from keras_adder.core.files import check_writable


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.evaluate",
        description="Evaluate a model on every image of the MNIST test (or validation) "
        "split paired with every number 0-9; write evaluation.json and pictures.",
    )
    parser.add_argument("model", help="a SavedModel version folder, a SavedModel base "
                        "path (its highest version is used) or a .keras file")
    parser.add_argument("--split", choices=EVALUATION_SPLITS, default="test",
                        help="test: the 10,000 MNIST test images (default); validation: "
                        "the 5,000 training images held out for model selection")
    parser.add_argument("--output-dir", default=EVALUATION_DIR,
                        help=f"where evaluation.json and the PNGs go (default: {EVALUATION_DIR})")
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA, "
                        "else Keras' download)")
    parser.add_argument("--batch-size", type=positive_int, default=EVALUATION_BATCH,
                        help=f"pairs per model call (default: {EVALUATION_BATCH})")
    parser.add_argument("--limit", type=positive_int,
                        help="only the first LIMIT images of the split (a quick check)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="write evaluation.json only")
    args = parser.parse_args(argv)
    check_writable(args.output_dir, "output directory")  # before minutes of evaluation
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help never needs.
    from keras_adder.reports.exhaustive import EVALUATION_FILE, evaluate, format_report

    summary, _ = evaluate(
        args.model, data_dir=args.data_dir, split=args.split, limit=args.limit,
        output_dir=args.output_dir, batch_size=args.batch_size, figures=args.figures,
    )
    print(format_report(summary))
    print(f"Results in {Path(args.output_dir) / EVALUATION_FILE}"
          + (" and the PNG pictures next to it" if args.figures else ""))
    return summary


if __name__ == "__main__":
    run(main)
