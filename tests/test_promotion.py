"""Promotion: a run's SavedModel becomes the next served version only when it is at least
as good on the validation split (or when forced), so TF Serving never picks up a worse
model by itself."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keras_adder import export, train
from keras_adder.cli import EXIT_USAGE, run
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pipeline import split_validation
from keras_adder.model.architectures import build_model
from keras_adder.serving import promotion
from keras_adder.serving.saved_model import existing_versions, export_saved_model

SEED = 1337


@pytest.fixture(scope="module")
def validation(mnist):
    (train_images, train_labels), _ = mnist
    images, labels = split_validation(train_images, train_labels)[1]
    return images[:1000], labels[:1000]


@pytest.fixture(scope="module")
def weak_candidate(mnist, tmp_path_factory):
    """An untrained model's SavedModel: about 10 % on each head."""
    _, (test_images, _) = mnist
    return export_saved_model(build_model("compact"), tmp_path_factory.mktemp("weak"),
                              check_images=test_images[:8])


def serving(trained_run, tmp_path):
    base = tmp_path / "served"
    shutil.copytree(trained_run["export_path"], base / "1")
    return base


def test_a_weak_model_is_not_served(trained_run, weak_candidate, validation, tmp_path):
    base = serving(trained_run, tmp_path)
    promoted, why = promotion.decide(weak_candidate, base, policy="better",
                                     validation=validation, seed=SEED)
    assert not promoted
    assert why.startswith("not promoted (kept as a candidate): validation digit/sum")
    assert str(base / "1") in why


def test_a_better_model_is_served(trained_run, weak_candidate, validation, tmp_path):
    base = tmp_path / "served"
    shutil.copytree(weak_candidate, base / "1")
    promoted, why = promotion.decide(Path(trained_run["export_path"]), base, policy="better",
                                     validation=validation, seed=SEED)
    assert promoted and why.startswith("promoted: validation digit/sum")
    path = promotion.promote(Path(trained_run["export_path"]), base)
    assert path == base / "2" and list(existing_versions(base)) == [1, 2]
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no staging left


def test_forcing_serves_even_a_weak_model(trained_run, weak_candidate, validation, tmp_path):
    base = serving(trained_run, tmp_path)
    promoted, why = promotion.decide(weak_candidate, base, policy="always",
                                     validation=validation, seed=SEED)
    assert promoted and why == "promoted because --promote always"


def test_an_empty_base_path_serves_the_first_model(weak_candidate, validation, tmp_path):
    promoted, why = promotion.decide(weak_candidate, tmp_path / "empty", policy="better",
                                     validation=validation, seed=SEED)
    assert promoted and "serves no version yet" in why


def test_an_unknown_policy_is_refused(weak_candidate, validation, tmp_path):
    with pytest.raises(KerasAdderError, match="unknown promotion policy 'sometimes'"):
        promotion.decide(weak_candidate, tmp_path, policy="sometimes",
                         validation=validation, seed=SEED)


def test_a_weak_run_stays_a_candidate_end_to_end(trained_run, data_dir, tmp_path, capsys):
    """A one-epoch run on 256 images against the served fixture model: not promoted."""
    from keras_adder.core.recipe import Recipe
    from keras_adder.fitting.keras_path import train

    base = serving(trained_run, tmp_path)
    metrics = train(Recipe(epochs=1, train_examples=256), data_dir=data_dir,
                    run_dir=tmp_path / "run", export_dir=base, verbose=0)
    assert metrics["export_path"] is None
    assert Path(metrics["candidate_path"]).parent == tmp_path / "run" / "saved_model"
    assert list(existing_versions(base)) == [1]
    assert "not promoted (kept as a candidate)" in capsys.readouterr().out


def child_env():
    """The environment of a child process: this package first on its path."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def copies(base, **versions):
    """`base` with each `version=folder` copied in as that version."""
    for number, folder in versions.items():
        shutil.copytree(folder, base / number.lstrip("v"))
    return base


# --- Several versions: the highest is the one TF Serving serves --------------------------


def test_promotion_compares_with_the_highest_served_version(
        trained_run, weak_candidate, validation, tmp_path):
    # Only 10 is served. 2 is the oldest and 9 the highest as text; both are as weak as
    # the candidate, which is then "as good" if compared with either.
    base = copies(tmp_path / "served", v2=weak_candidate, v9=weak_candidate,
                  v10=trained_run["export_path"])
    promoted, why = promotion.decide(weak_candidate, base, policy="better",
                                     validation=validation, seed=SEED)
    assert not promoted
    assert why.endswith(f"of served {base / '10'}")


def test_a_version_below_the_highest_is_written_but_reported_as_not_served(
        trained_run, weak_candidate, validation, data_dir, tmp_path, capsys):
    base = copies(tmp_path / "served", v9=weak_candidate)
    # The command: better than 9, so written as 3, and said not to be served.
    served = run(export.main, [str(arg) for arg in [
        trained_run["keras_path"], "--export-dir", base, "--export-version", "3",
        "--candidate-dir", tmp_path / "c", "--data-dir", data_dir]])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert served == base / "3" and sorted(existing_versions(base)) == [3, 9]
    assert "promoted" not in out
    assert out.startswith(f"SavedModel written to {tmp_path / 'c' / '1'}; written as version 3 "
                          f"(validation digit/sum ")
    assert out.endswith(f"but NOT served under TF Serving's latest-version policy: "
                        f"version 9 ({base / '9'}) is higher")
    promoted, why = promotion.decide(weak_candidate, base, policy="always",
                                     validation=validation, seed=SEED, version=2)
    assert promoted and why == (
        f"written as version 2 (--promote always) but NOT served under TF Serving's "
        f"latest-version policy: version 9 ({base / '9'}) is higher")


@pytest.mark.parametrize("highest", ["empty folder", "file"])
def test_a_highest_version_without_saved_model_pb_serves_nothing_and_is_said_so(
        highest, trained_run, weak_candidate, validation, tmp_path):
    base = copies(tmp_path / "served", v1=trained_run["export_path"])
    (base / "9").mkdir() if highest == "empty folder" else (base / "9").write_text("notes")
    promoted, why = promotion.decide(weak_candidate, base, policy="better",
                                     validation=validation, seed=SEED)
    assert promoted and why == (f"promoted: TF Serving serves nothing from {base}: its "
                                f"highest version {base / '9'} has no saved_model.pb")
    assert promotion.promote(weak_candidate, base) == base / "10"


# --- A full disk while promoting ---------------------------------------------------------

# RLIMIT_FSIZE makes every write past it fail as a full disk would, without root: with
# SIGXFSZ ignored, write() fails with EFBIG ("File too large").
WRITE_ON_A_FULL_DISK = r"""
import resource, signal, sys
import numpy as np
from keras_adder import cli
from keras_adder.model.keras_file import load_keras_model
from keras_adder.serving import promotion, runtimes, saved_model

what, source, target = sys.argv[1:]
images = np.zeros((8, 28, 28), np.uint8)
if what == "promotion":
    write = lambda: promotion.promote(source, target)
elif what == "saved_model":
    write = lambda: saved_model.export_saved_model(model, target, check_images=images)
else:
    write = lambda: runtimes.export_file(model, what, f"{target}/m", check_images=images)
model = None if what == "promotion" else load_keras_model(source)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
cli.run(lambda argv: write(), [])
"""


@pytest.mark.parametrize("what, failed", [
    ("promotion", "promotion to {base}/1 failed, nothing was written: [Errno 27] File too large: "),
    ("saved_model", "export to {base}/1 failed, nothing was written: "),
    ("litert", "export to {base}/m.tflite failed, nothing was written: "),
    ("onnx", "export to {base}/m.onnx failed, nothing was written: "),
], ids=["promotion", "saved_model", "litert", "onnx"])
def test_a_full_disk_while_promoting_or_exporting_is_one_line_and_writes_nothing(
        what, failed, trained_run, tmp_path):
    base = tmp_path / "served"
    source = trained_run["export_path" if what == "promotion" else "keras_path"]
    result = subprocess.run([sys.executable, "-c", WRITE_ON_A_FULL_DISK, what, source, str(base)],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_USAGE, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and len(errors[0]) < 500, result.stderr[-3000:]
    assert errors[0].startswith("error: " + failed.format(base=base))
    assert "File too large" in errors[0]
    assert list(base.iterdir()) == []  # no version, no staging folder, no temporary file


# --- Killed right after a rename, before the run recorded it -----------------------------

# SIGKILL, like a power cut, runs no clean-up: the rename is done, the record is not.
KILL_RIGHT_AFTER_A_RENAME_INTO = r"""
import os, signal, sys
from pathlib import Path

into, rename = Path(sys.argv[1]), os.rename


def rename_then_die(source, target, *args, **kwargs):
    rename(source, target, *args, **kwargs)
    if Path(target).parent == into:
        os.kill(os.getpid(), signal.SIGKILL)


os.rename = rename_then_die
from keras_adder import cli, train

cli.run(train.main, sys.argv[2:])
"""


@pytest.mark.parametrize("killed_in, flags", [
    ("export", ["--export-version", "5"]),  # the rerun said "export version 5 already exists"
    ("export", []),  # the rerun served a second, identical version
    ("run/saved_model", []),  # the rerun exported a second candidate
])
def test_a_run_killed_right_after_a_rename_knows_the_version_as_its_own(
        killed_in, flags, tmp_path, data_dir, capsys):
    argv = [str(arg) for arg in [
        "--epochs", "1", "--train-examples", "512", "--data-dir", data_dir,
        "--run-dir", tmp_path / "run", "--export-dir", tmp_path / "export", *flags]]
    killed = subprocess.run([sys.executable, "-c", KILL_RIGHT_AFTER_A_RENAME_INTO,
                             str(tmp_path / killed_in), *argv],
                            env=child_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    version = "5" if flags else "1"
    assert (tmp_path / killed_in / ("1" if "run" in killed_in else version)).is_dir()

    metrics = run(train.main, argv)
    capsys.readouterr()
    assert metrics["export_path"] == str(tmp_path / "export" / version)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [version]
    assert sorted(p.name for p in (tmp_path / "run" / "saved_model").iterdir()) == ["1"]
    assert run(train.main, argv)["export_path"] == metrics["export_path"]  # finished


def test_a_claimed_version_whose_files_differ_is_not_taken_as_ones_own(weak_candidate, tmp_path):
    from keras_adder.serving.saved_model import fingerprint, is_own_version

    base = copies(tmp_path / "served", v5=weak_candidate)
    claim = promotion.claim(5, fingerprint(weak_candidate))
    assert is_own_version(base, claim) == base / "5"
    assert is_own_version(tmp_path / "elsewhere", claim) is None
    with (base / "5" / "saved_model.pb").open("ab") as file:
        file.write(b"\0")  # another writer's version 5, or a damaged one
    assert is_own_version(base, claim) is None
