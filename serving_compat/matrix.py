"""Which TensorFlow (and so TF Serving) releases load and serve the exported SavedModel?

Writes the project's own answers for a batch of MNIST test images and for pictures drawn
from them (serving_compat/expect.py, under this Python, which must be the project's venv), then runs serving_compat/check.py
under each TensorFlow release in its own venv, and prints a table

    TensorFlow | numpy | loads | answers | refuses | empty | pictures | attributes it ignores
    | first error

("pictures": `serving_image` answers encoded PNG and JPEG pictures and a blank sheet as
the project's TensorFlow does, and refuses bytes that are not a picture; see check.py.)

("attributes it ignores": attributes of the exported graph that this TensorFlow does not
know, logged by it as "NodeDef mentions attribute ... which is not in the op definition".)

The venvs live under build/serving-compat/tf-<version>/ and are reused while their
requirements are unchanged (the first run downloads ~10 TensorFlow wheels); the release
this Python has, and the one .venv-serving-compat has (`make test`), are not installed
again. Results also
go to build/serving-compat/results.json. Exits 1 if any release fails a check.

    make serving-compat ARGS="--model saved_models/keras_adder/3 --versions 2.12.1 2.21.0"
"""

import argparse
import json
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The oldest release's requirements and the venv `make test` builds from them: the matrix
# installs that release the same way, and reuses that venv while it is up to date.
OLDEST = REPO / "requirements-serving-compat.txt"
OLDEST_STAMP = REPO / ".venv-serving-compat" / ".installed"
CHECK = REPO / "serving_compat" / "check.py"
# One patch of each minor release since 2.12 (the first with wheels for Python 3.11): the
# one the TF Serving release of that number is built on (TF Serving 2.16 stopped at 2.16.1).
VERSIONS = ("2.12.1", "2.13.1", "2.14.1", "2.15.1", "2.16.1",
            "2.17.1", "2.18.1", "2.19.1", "2.20.0", "2.21.0")
CHECKS = ("loads", "answers", "refuses", "empty", "pictures")
CHECK_TIMEOUT_S = 1800  # a hang guard only: a busy 2-core machine is slow
# What an older TensorFlow logs, and ignores, for an attribute newer than it knows.
UNKNOWN_ATTRIBUTE = re.compile(r"NodeDef mentions attribute (\w+) which is not in the op")


def version_key(version):
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def requirements(version):
    """pip requirements for one release; before 2.18 TensorFlow breaks under numpy 2,
    and not every one of those wheels says so."""
    pinned = [line.strip() for line in OLDEST.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    lines = [f"tensorflow-cpu=={version}"]
    if lines[0] in pinned:
        return pinned
    if version_key(version) < (2, 18):
        lines.append("numpy<2")
    return lines


def project_tensorflow():
    """The TensorFlow release of this Python (the project's venv), without importing it."""
    try:
        return metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return None


def release_python(version, build_dir):
    """The python of a venv holding `version` (made or reused; this Python if it has that
    release already), or None if pip failed."""
    if version == project_tensorflow():
        return Path(sys.executable)
    if (f"tensorflow-cpu=={version}" in OLDEST.read_text().split() and OLDEST_STAMP.is_file()
            and OLDEST_STAMP.stat().st_mtime >= OLDEST.stat().st_mtime):
        return OLDEST_STAMP.parent / "bin" / "python"
    folder = build_dir / f"tf-{version}"
    python = folder / "bin" / "python"
    stamp = folder / ".installed"
    wanted = "\n".join(requirements(version)) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return python
    print(f"installing {' '.join(requirements(version))} into {folder} ...", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    with open(folder / "pip.log", "w") as log:
        installed = subprocess.run(
            # --no-compile: byte-compiling all of TensorFlow costs minutes of CPU, and a
            # check imports a small part of it.
            [python, "-m", "pip", "install", "--quiet", "--no-compile",
             *requirements(version)],
            stdout=log, stderr=subprocess.STDOUT, check=False)
    if installed.returncode != 0:
        return None
    stamp.write_text(wanted)
    return python


def check_release(version, model, expected, build_dir):
    """check.py's JSON report for one release, or a failed one saying why."""
    failed = {"tensorflow": version, "numpy": "", **dict.fromkeys(CHECKS, False),
              "ignored_attributes": []}
    python = release_python(version, build_dir)
    if python is None:
        log = build_dir / f"tf-{version}" / "pip.log"
        return {**failed, "errors": [f"pip install failed, see {log}"]}
    try:
        result = subprocess.run([python, CHECK, model, expected], capture_output=True,
                                text=True, timeout=CHECK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {**failed, "errors": [f"check.py ran over {CHECK_TIMEOUT_S} s"]}
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        stderr = result.stderr.strip().splitlines()
        return {**failed, "errors": [f"check.py exited {result.returncode}: "
                                     f"{stderr[-1] if stderr else 'no output'}"]}
    report["ignored_attributes"] = sorted(set(UNKNOWN_ATTRIBUTE.findall(result.stderr)))
    return report


def version_folder(path):
    """A SavedModel version folder: `path` itself, or the newest integer one under it;
    None if neither."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def table(reports):
    yes = {True: "yes", False: "NO"}
    rows = ["| TensorFlow | numpy | " + " | ".join(CHECKS)
            + " | attributes it ignores | first error |",
            "|---" * (len(CHECKS) + 4) + "|"]
    for report in sorted(reports, key=lambda report: version_key(report["tensorflow"])):
        cells = [report["tensorflow"], report["numpy"], *(yes[report[c]] for c in CHECKS),
                 ", ".join(report["ignored_attributes"]),
                 report["errors"][0][:120] if report["errors"] else ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python serving_compat/matrix.py",
        description="Check the SavedModel with TF Serving's loader under several "
        "TensorFlow releases (one venv each) and print a table.")
    parser.add_argument("--model", default=REPO / "saved_models" / "keras_adder",
                        help="SavedModel version folder, or a base path whose newest "
                        "version is taken (default: saved_models/keras_adder)")
    parser.add_argument("--versions", nargs="+", default=VERSIONS, metavar="VERSION",
                        help="tensorflow-cpu releases (default: %(default)s)")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "serving-compat",
                        help="where the venvs and results go (default: build/serving-compat)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $KERAS_ADDER_DATA)")
    args = parser.parse_args(argv)
    model = version_folder(args.model)
    if model is None:
        print(f"error: {args.model} is neither a SavedModel nor a base path with versions; "
              "run `make train` or pass --model", file=sys.stderr)
        return 2
    args.build_dir.mkdir(parents=True, exist_ok=True)
    expected = args.build_dir / "expected.npz"
    # The project's own answers, from its own TensorFlow: this Python. It reports its
    # own errors (e.g. no MNIST) on stderr.
    written = subprocess.run(
        [sys.executable, "-m", "serving_compat.expect", str(model), str(expected),
         *(["--data-dir", args.data_dir] if args.data_dir else [])], cwd=REPO, check=False)
    if written.returncode != 0:
        return written.returncode
    reports = []
    for version in args.versions:
        reports.append(check_release(version, model, expected, args.build_dir))
        print(json.dumps(reports[-1]), file=sys.stderr)
    (args.build_dir / "results.json").write_text(
        json.dumps({"model": str(model), "reports": reports}, indent=1) + "\n")
    print(f"SavedModel: {model}\n")
    print(table(reports))
    return 0 if all(report[c] for report in reports for c in CHECKS) else 1


if __name__ == "__main__":
    sys.exit(main())
