"""What the commands share: argparse types, a quiet start and one way to fail.

Only the command modules (train, evaluate, predict, export, bench, demo) import this.
"""

import argparse
import importlib.util
import os
import sys

from keras_adder.core import signals
from keras_adder.core.errors import KerasAdderError

EXIT_USAGE = 2
EXIT_TERMINATED = 128 + 15  # the shell's code for a process ended by SIGTERM
MAX_PORT = 65535


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
            # Every clean-up of ours has run; tearing down TensorFlow's objects can
            # take longer than docker stop's 10 s on a busy machine
            # (docs/reliability.md), and the scheduler would SIGKILL us meanwhile.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_TERMINATED)
        sys.exit(EXIT_TERMINATED)


def require_packages(packages, what, requirements="requirements-export.txt"):
    """Fail before any work when an optional package that `what` will need is missing."""
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        raise KerasAdderError(f"{what} needs {', '.join(missing)}: "
                              f"pip install -r {requirements}")


def checked_integer(text, *, what="", low=None, high=None, noun="an integer"):
    """Command-line text → an int in [low, high]; ValueError with the one message
    every command prints for a bad integer (`what` names the value)."""
    name = f"{what} " if what else ""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}{text!r} is not {noun}") from None
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name}{value} is outside {low}-{high}")
    if low is not None and value < low:
        raise ValueError(f"{name}{value} must be at least {low}")
    return value


def integer_type(**limits):
    """An argparse type over checked_integer (argparse reports the error and exits 2)."""
    def parse(text):
        try:
            return checked_integer(text, **limits)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


integer = integer_type()  # its range is the caller's to check
positive_int = integer_type(low=1)
port_number = integer_type(what="port", low=1, high=MAX_PORT, noun="a port number")


def parse_integers(texts, what, low, high=None):
    """Words of a many-valued flag → ints in [low, high]; KerasAdderError for the
    first bad one."""
    try:
        return [checked_integer(text, what=what, low=low, high=high) for text in texts]
    except ValueError as error:
        raise KerasAdderError(str(error)) from None


def number(text):
    """argparse type: a number (its range is the caller's to check)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
