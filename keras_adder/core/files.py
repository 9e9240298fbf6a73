"""Files and folders that appear whole or not at all, and never replace a stranger's."""

import errno
import json
import os
import uuid
from pathlib import Path

from keras_adder.core.errors import KerasAdderError


def temporary_sibling(path, prefix=".", suffix=None):
    """A hidden, unique name next to `path` that keeps its suffix (or the longer
    `suffix` it ends with, e.g. Keras' required ".weights.h5").

    Unique beyond the process id: two containers each running as PID 1 may share a
    volume.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    stem = path.name[:len(path.name) - len(suffix)]
    return path.with_name(f"{prefix}{stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}"
                          f".tmp{suffix}")


def write_atomically(path, write, suffix=None):
    """Call `write(staging_path)` on a hidden sibling of `path`, then rename it into place.

    A crash, Ctrl-C, SIGTERM or a full disk never leaves a half-written file under
    `path`, and an existing file stays as it was until the new one is complete and on
    the disk (fsync of the file before the rename, of the folder after it). The
    sibling keeps the suffix, so matplotlib's savefig picks the right format.
    """
    path = Path(path)
    staging = temporary_sibling(path, suffix=suffix)
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


def check_output_file(path, what, *, parents=False):
    """Fail before any work when the file `path` cannot be written (creates nothing):
    it must not be a folder, and its folder must exist and be writable, or, with
    `parents` (the writer creates missing folders), be creatable."""
    path = Path(path)
    if path.is_dir():
        raise KerasAdderError(f"{what} {path}: is a directory")
    if parents:
        check_writable(path.parent, f"folder of {what}")
    elif not path.parent.is_dir():
        raise KerasAdderError(f"{what} {path}: folder {path.parent} does not exist")
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise KerasAdderError(f"{what} {path}: folder {path.parent} is not writable")


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


def os_error_reason(error):
    """An OSError's reason in a few words ("No space left on device"), without the long
    text some libraries (h5py) put in its message."""
    if getattr(error, "errno", None):
        return os.strerror(error.errno)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def read_checked(path, parse, advice):
    """`parse(text)` of the file at `path`: the one reader of a file the project wrote
    and reads back. A missing, empty, truncated or damaged file gives one KerasAdderError
    naming it, what is wrong and `advice` (what to do); nothing is deleted. `parse`
    raises ValueError (or KeyError, TypeError) for content it cannot use."""
    path = Path(path)
    try:
        text = path.read_text()
        if not text.strip():
            raise ValueError("it is empty")
        return parse(text)
    except OSError as error:
        reason = os_error_reason(error)
    except (ValueError, KeyError, TypeError) as error:
        reason = str(error) or type(error).__name__
    raise KerasAdderError(f"{path} is damaged or unreadable ({reason}); {advice}")


def json_object(**fields):
    """A parser for read_checked: a JSON object holding `fields` (name=type)."""
    def parse(text):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"not whole JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise ValueError(f"no {kind.__name__} {name!r}")
        return data
    return parse


def read_json(path, advice="delete it or write it again"):
    """The JSON object in `path`, or a clear error naming the damaged file."""
    return read_checked(path, json_object(), advice)
