"""Promotion: a new SavedModel is served only when it is at least as good.

TF Serving serves the highest version under its base path and picks up new versions by
itself, so every run first writes its SavedModel as a candidate in its run directory.
The candidate becomes the next version only if, on the validation split with the
seeded numbers, neither head is less accurate than the highest version served now
(or when the user says `always`). An empty base path takes the first candidate, and so
does one whose highest version folder has no saved_model.pb (TF Serving serves nothing
from it). A version asked for below the highest is written, if the policy allows, but
reported as not served.
"""

import os
import shutil
from pathlib import Path

import numpy as np

from keras_adder.core.constants import PROMOTION_POLICIES
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pipeline import VALIDATION_STREAM, paired_numbers
from keras_adder.serving.formats import load_model
from keras_adder.serving.saved_model import (
    claim_staging,
    copy_folder,
    existing_versions,
    export_saved_model,
    free_version,
    is_own_version,
    load_saved_model,
    reason,
    rename_into_place,
)


def validation_accuracy(saved_model_path, images, labels, seed):
    """{"digit", "sum"}: accuracy of a SavedModel's signature on the validation images,
    each paired with its seeded validation number."""
    # The served version may be anything an operator put there: checked like any model.
    call = load_model(saved_model_path).call
    numbers = paired_numbers(len(labels), seed, VALIDATION_STREAM).numpy()
    outputs = call(images, numbers)
    return {"digit": float(np.mean(outputs["digit"] == labels)),
            "sum": float(np.mean(outputs["sum"] == labels + numbers))}


def decide(candidate, export_dir, *, policy, validation, seed, version=None):
    """(write the version?, one line saying why) for the candidate SavedModel folder.

    `version` is the number asked for (None: the next free one). TF Serving's default
    policy serves only the highest version, so a lower one is written if the policy
    allows but reported as not served; a highest folder without saved_model.pb serves
    nothing, so any candidate is better.
    """
    if policy not in PROMOTION_POLICIES:
        raise KerasAdderError(f"unknown promotion policy {policy!r} "
                              f"(choose from {', '.join(PROMOTION_POLICIES)})")
    served = existing_versions(export_dir)
    highest = max(served, default=None)
    hidden = version is not None and highest is not None and version < highest
    if policy == "always":
        return True, (_not_served(version, highest, served, "--promote always") if hidden
                      else "promoted because --promote always")
    if not served:
        return True, f"promoted: {export_dir} serves no version yet"
    newest = served[highest]
    if not (newest / "saved_model.pb").is_file():
        nothing = (f"TF Serving serves nothing from {export_dir}: its highest version "
                   f"{newest} has no saved_model.pb")
        return True, (_not_served(version, highest, served, nothing) if hidden
                      else f"promoted: {nothing}")
    mine = validation_accuracy(candidate, *validation, seed)
    theirs = validation_accuracy(newest, *validation, seed)
    figures = (f"validation digit/sum {mine['digit']:.2%}/{mine['sum']:.2%} vs "
               f"{theirs['digit']:.2%}/{theirs['sum']:.2%} of served {newest}")
    if not all(mine[head] >= theirs[head] for head in mine):
        return False, f"not promoted (kept as a candidate): {figures}"
    return True, (_not_served(version, highest, served, figures) if hidden
                  else f"promoted: {figures}")


def _not_served(version, highest, served, why):
    return (f"written as version {version} ({why}) but NOT served under TF Serving's "
            f"latest-version policy: version {highest} ({served[highest]}) is higher")


def promote(candidate, export_dir, version=None, before_rename=None):
    """Copy the candidate SavedModel to `<export_dir>/<version>` atomically: a staging
    copy is loaded back, then renamed to its number (`saved_model.rename_into_place`,
    which calls `before_rename`). Returns the new version's path."""
    export_dir = Path(export_dir)
    version = free_version(export_dir, version)
    final = export_dir / str(version)
    failed = f"promotion to {final} failed, nothing was written"
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
        staging, lock = claim_staging(export_dir, version)
    except OSError as error:
        raise KerasAdderError(f"{failed}: {reason(error)}") from None
    try:
        copy_folder(candidate, staging)
        load_saved_model(staging)  # a copy that does not load is not served
        rename_into_place(staging, final, before_rename)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception):
            raise
        raise KerasAdderError(f"{failed}: {reason(error)}") from error
    finally:
        os.close(lock)
    return final


def export_and_promote(model, candidate_dir, export_dir, *, version=None, policy, validation,
                       seed, check_images, done=None, record=None):
    """Export `model` as a candidate under `candidate_dir`, then promote it into
    `export_dir` if `decide` says so. Returns (served path or None, candidate, why).

    `record`, if given, is called with all that has been done after each step, and
    with each version's claim (number, fingerprint) just before its rename. `done`,
    what an earlier call recorded, lets a stopped run resume without exporting or
    promoting twice, even when it was killed between a rename and its record: the
    version folder with the claimed fingerprint is its own.
    """
    done = dict(done or {})

    def note(**new):
        done.update(new)
        if record is not None:
            record(**done)

    candidate = done.get("candidate") or is_own_version(candidate_dir, done.get("exporting"))
    if candidate is None:
        candidate = export_saved_model(
            model, candidate_dir, check_images=check_images,
            before_rename=lambda number, sha: note(exporting=claim(number, sha)))
    note(candidate=str(candidate))
    own = is_own_version(export_dir, done.get("promoting"))
    if own is not None:
        note(served=str(own), decision=done["promoting"]["decision"])
        return own, Path(candidate), done["decision"]
    promoted, why = decide(candidate, export_dir, policy=policy, validation=validation,
                           seed=seed, version=version)
    served = promote(candidate, export_dir, version,
                     lambda number, sha: note(promoting=claim(number, sha, decision=why))
                     ) if promoted else None
    note(served=served and str(served), decision=why)
    return served, Path(candidate), why


def claim(version, sha, **more):
    """What a run records about a version just before renaming it into place."""
    return {"version": version, "fingerprint": sha, **more}
