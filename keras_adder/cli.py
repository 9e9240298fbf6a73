"""Plumbing shared by the command-line shells: one error type, one exit code, and
files that appear whole or not at all."""

import argparse
import os
import sys
from pathlib import Path


class KerasAdderError(Exception):
    """A problem with what the user gave us (a file, a flag, a request).

    The message is the whole story: the CLIs print it as one line on stderr and exit
    with code 2, so it must name the file or value and what is wrong with it.
    """


EXIT_USAGE = 2


def run(main, argv=None):
    """Call `main(argv)`; turn a KerasAdderError into one stderr line and exit 2."""
    try:
        return main(argv)
    except KerasAdderError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def positive_int(text):
    """argparse type: an integer ≥ 1 (argparse reports the error and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text):
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def write_atomically(path, write):
    """Call `write(staging_path)` on a hidden sibling of `path`, then rename it into place.

    A crash, Ctrl-C or a full disk never leaves a half-written file under `path`, and
    an existing file stays as it was until the new one is complete. The sibling keeps
    the suffix, so matplotlib's savefig picks the right format.
    """
    path = Path(path)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(staging)
        staging.replace(path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
