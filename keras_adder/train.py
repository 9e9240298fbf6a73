"""Train a digit + sum model with `model.fit`, test it, and export it for serving.

    python -m keras_adder.train                    # the default recipe (compact model)
    python -m keras_adder.train --recipe fast      # a quick good model
    python -m keras_adder.train --arch reference   # the original design
    python -m keras_adder.train --dry-run          # print model.summary() and exit

Everything a run produces lands in its run directory (`runs/<timestamp>` unless
`--run-dir`); the SavedModel goes to `<export-dir>/<version>/`. Running the same
command with the same --run-dir after a crash or SIGTERM resumes it.
"""

import argparse
from datetime import datetime
from pathlib import Path

from keras_adder.cli import integer, number, positive_int, require_packages, run
from keras_adder.core import signals, startup
from keras_adder.core.constants import (
    ARCHITECTURES,
    DEFAULT_EXPORT_DIR,
    PROMOTION_POLICIES,
    RUNS_DIR,
    RUNTIME_FORMATS,
    STRATEGIES,
)
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import check_writable
from keras_adder.core.recipe import RECIPES, make_recipe, settings


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_adder.train",
        description="Train the MNIST digit + number -> sum model with model.fit, "
        "evaluate it on the MNIST test set and export a SavedModel for TF Serving.",
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="named set of the settings below; a flag overrides one value "
                        "(default: default)")
    recipe_flags = parser.add_argument_group("recipe settings (default: the recipe's)")
    for name, default, help, kind in settings():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            recipe_flags.add_argument(flag, action=argparse.BooleanOptionalAction,
                                      help=f"{help} (default recipe: {'on' if default else 'off'})")
        else:
            recipe_flags.add_argument(
                flag, type={float: number, float | None: number, str: str}.get(kind, integer),
                choices=ARCHITECTURES if name == "arch" else None,
                metavar=None if name == "arch" else "N",
                help=f"{help} (default recipe: {default})")
    parser.add_argument("--data-dir", help="folder with the four MNIST IDX files "
                        "(gzipped or not); default: $KERAS_ADDER_DATA, else Keras' download")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy: auto = MirroredStrategy over all GPUs "
                        "when there are several, else one device; mirrored = "
                        "MirroredStrategy; multiworker = MultiWorkerMirroredStrategy over "
                        "the machines in TF_CONFIG (start the same command on each, with "
                        "the same --run-dir; only the chief writes) (default: auto)")
    parser.add_argument("--cpu-replicas", type=positive_int, metavar="N",
                        help="with --strategy mirrored: split the CPU into N logical devices "
                        "and mirror over them, to exercise multi-device training without GPUs")
    parser.add_argument("--run-dir", help=f"where history, checkpoints and metrics go "
                        f"(default: {RUNS_DIR}/<timestamp>); reuse it to resume a run")
    parser.add_argument("--export-dir", default=DEFAULT_EXPORT_DIR,
                        help=f"SavedModel base path; the model goes to <export-dir>/<next "
                        f"version>/ (default: {DEFAULT_EXPORT_DIR})")
    parser.add_argument("--export-version", type=positive_int,
                        help="export as this version number (refused if it exists)")
    parser.add_argument("--promote", choices=PROMOTION_POLICIES, default="better",
                        help="better: the run's SavedModel becomes the next served version "
                        "only if neither head is less accurate on the validation split than "
                        "the highest version served now (else it stays a candidate in the "
                        "run directory); always: serve it anyway (default: better)")
    parser.add_argument("--export-format", choices=sorted(RUNTIME_FORMATS), action="append",
                        default=[], dest="export_formats",
                        help="also write the model as a checked LiteRT or ONNX file, "
                        "<run-dir>/keras_adder.tflite / .onnx (fp32; repeatable; needs "
                        "requirements-export.txt; int8: python -m keras_adder.export)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs to <run-dir>/tensorboard")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model, print model.summary() and exit")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Every flag is checked before TensorFlow starts and before anything is written.
    recipe = make_recipe(args.recipe, **{name: getattr(args, name) for name, *_ in settings()})
    if args.strategy == "multiworker" and not args.run_dir:
        raise KerasAdderError("--strategy multiworker needs --run-dir: every worker must "
                              "name the same run (also to resume it)")
    require_packages([package for kind in args.export_formats
                      for package in RUNTIME_FORMATS[kind]], "--export-format")
    run_dir = Path(args.run_dir or Path(RUNS_DIR) / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if not args.dry_run:
        check_writable(run_dir, "run directory")
        check_writable(args.export_dir, "export directory")
    startup.import_tensorflow()
    # Deferred: the library imports TensorFlow, which --help and bad flags never need.
    from keras_adder.fitting import keras_path
    from keras_adder.model import architectures

    if args.dry_run:
        architectures.build_model(recipe.arch, recipe.dropout).summary()
        return None
    try:
        metrics = keras_path.train(
            recipe, recipe_name=args.recipe, data_dir=args.data_dir, run_dir=run_dir,
            export_dir=args.export_dir, export_version=args.export_version,
            promote=args.promote, export_formats=args.export_formats,
            strategy=args.strategy, cpu_replicas=args.cpu_replicas,
            tensorboard=args.tensorboard)
    except signals.Terminated:
        # The run keeps its last whole epoch; a default run directory is named by the
        # time it started, so the same command alone would start a new run.
        raise signals.Terminated(f"to resume, rerun the same command with --run-dir "
                                 f"{run_dir}") from None
    if metrics:
        print(keras_path.summary_line(metrics))
    return metrics


if __name__ == "__main__":
    run(main)
