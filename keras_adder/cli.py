"""What the commands share: argparse types, a quiet start and one way to fail.

Only command modules (train, evaluate, predict, export, bench) import this.
"""

import argparse
import os
import sys

from keras_adder import signals
from keras_adder.errors import KerasAdderError

EXIT_USAGE = 2
EXIT_TERMINATED = 128 + 15  # the shell's code for a process ended by SIGTERM


def run(main, argv=None):
    """Call `main(argv)`: a KerasAdderError becomes one stderr line and exit code 2;
    SIGTERM runs every clean-up, as Ctrl-C does, and exits 143.

    `argv=None` means that this process is the command (`python -m ...`): after
    SIGTERM it then ends at once, without Python's final clean-up.
    """
    signals.raise_on_sigterm()
    try:
        return main(argv)
    except KerasAdderError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except signals.Terminated as stop:
        # The command may say how to go on, e.g. how to resume a training run.
        print("; ".join(["stopped by SIGTERM", *map(str, stop.args)]), file=sys.stderr)
        if argv is None:
            # Every clean-up of ours has run; tearing down TensorFlow's objects would
            # take longer than docker stop's 10 s on a busy machine (measured: 8-16 s
            # on 2 shared cores), and the scheduler would SIGKILL us meanwhile.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_TERMINATED)
        sys.exit(EXIT_TERMINATED)


def integer(text):
    """argparse type: an integer (its range is the caller's to check)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def number(text):
    """argparse type: a number (its range is the caller's to check)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_int(text):
    """argparse type: an integer ≥ 1 (argparse reports the error and exits 2)."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
