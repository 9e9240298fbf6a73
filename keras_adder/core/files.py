"""Files and folders that appear whole or not at all, and never replace a stranger's."""

import errno
import json
import os
import uuid
from pathlib import Path

from keras_adder.core.errors import KerasAdderError


def temporary_sibling(path, prefix="."):
    """A hidden, unique name next to `path` that keeps its suffix.

    Unique beyond the process id: two containers each running as PID 1 may share a
    volume.
    """
    path = Path(path)
    return path.with_name(f"{prefix}{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}"
                          f".tmp{path.suffix}")


def write_atomically(path, write):
    """Call `write(staging_path)` on a hidden sibling of `path`, then rename it into place.

    A crash, Ctrl-C, SIGTERM or a full disk never leaves a half-written file under
    `path`, and an existing file stays as it was until the new one is complete and on
    the disk (fsync of the file before the rename, of the folder after it). The
    sibling keeps the suffix, so matplotlib's savefig picks the right format.
    """
    path = Path(path)
    staging = temporary_sibling(path)
    try:
        write(staging)
        sync(staging)  # else a power cut after the rename may leave an empty file
        staging.replace(path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    sync(path.parent)  # the rename itself


def sync(path):
    """Flush a file's bytes, or a folder's entries (a rename into it), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno != errno.EINVAL:  # a file system that cannot sync a folder
            raise
    finally:
        os.close(descriptor)


def write_json(path, data):
    """`data` as indented JSON at `path`, atomically; a clear error when it cannot be."""
    try:
        write_atomically(path, lambda staging: staging.write_text(json.dumps(data, indent=2) + "\n"))
    except OSError as error:
        raise KerasAdderError(f"cannot write {path} ({error.strerror})") from None


def check_writable(path, what):
    """Fail before any work when `path` cannot be created or written (creates nothing)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KerasAdderError(f"cannot create {what} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise KerasAdderError(f"{what} {path} is not writable")


def make_dir(path, what):
    """Create the folder `path` (and its parents) or fail with a clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create {what} {path} ({error.strerror})") from None
    if not os.access(path, os.W_OK):
        raise KerasAdderError(f"{what} {path} is not writable")
    return path


def read_json(path):
    """The JSON object in `path`, or a clear error naming the damaged file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise KerasAdderError(f"cannot read {path} ({error})") from None
