"""Promotion: a new SavedModel is served only when it is at least as good.

TF Serving serves the highest version under its base path and picks up new versions by
itself, so every run first writes its SavedModel as a candidate in its run directory.
The candidate becomes the next version only if, on the validation split with the
seeded numbers, neither head is less accurate than the highest version served now
(or when the user says `always`). An empty base path takes the first candidate.
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
    existing_versions,
    export_saved_model,
    free_version,
    load_saved_model,
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


def decide(candidate, export_dir, *, policy, validation, seed):
    """(promote?, one line saying why) for the candidate SavedModel folder."""
    if policy not in PROMOTION_POLICIES:
        raise KerasAdderError(f"unknown promotion policy {policy!r} "
                              f"(choose from {', '.join(PROMOTION_POLICIES)})")
    served = existing_versions(export_dir)
    if policy == "always":
        return True, "promoted because --promote always"
    if not served:
        return True, f"promoted: {export_dir} serves no version yet"
    newest = served[max(served)]
    mine = validation_accuracy(candidate, *validation, seed)
    theirs = validation_accuracy(newest, *validation, seed)
    figures = (f"validation digit/sum {mine['digit']:.2%}/{mine['sum']:.2%} vs "
               f"{theirs['digit']:.2%}/{theirs['sum']:.2%} of served {newest}")
    if all(mine[head] >= theirs[head] for head in mine):
        return True, f"promoted: {figures}"
    return False, f"not promoted (kept as a candidate): {figures}"


def promote(candidate, export_dir, version=None):
    """Copy the candidate SavedModel to `<export_dir>/<version>` atomically: a staging
    copy is loaded back, then renamed to its number. Returns the new version's path."""
    export_dir = Path(export_dir)
    version = free_version(export_dir, version)
    final = export_dir / str(version)
    export_dir.mkdir(parents=True, exist_ok=True)
    staging, lock = claim_staging(export_dir, version)
    try:
        shutil.copytree(candidate, staging, dirs_exist_ok=True)
        load_saved_model(staging)  # a copy that does not load is not served
        staging.rename(final)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception):
            raise
        raise KerasAdderError(f"promotion to {final} failed, nothing was written: "
                              f"{error}") from error
    finally:
        os.close(lock)
    return final


def export_and_promote(model, candidate_dir, export_dir, *, version=None, policy, validation,
                       seed, check_images, candidate=None, record=None):
    """Export `model` as a candidate under `candidate_dir`, then promote it into
    `export_dir` if `decide` says so. Returns (served path or None, candidate, why).

    `record`, if given, is called with what has been done after each step, and a
    `candidate` exported before is reused: a run stopped between the steps resumes
    without exporting twice.
    """
    record = record or (lambda **done: None)
    if candidate is None:
        candidate = export_saved_model(model, candidate_dir, check_images=check_images)
    record(candidate=str(candidate))
    promoted, why = decide(candidate, export_dir, policy=policy, validation=validation,
                           seed=seed)
    served = promote(candidate, export_dir, version) if promoted else None
    record(candidate=str(candidate), served=served and str(served), decision=why)
    return served, candidate, why
