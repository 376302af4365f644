"""What a submitted job checks before its command runs: that it runs the sft-tune it was submitted
with, and that the cluster has what that sft-tune needs.

`sft-tune submit` ships the local sft-tune package with the job (Ray's `py_modules`: it comes first
on the job's import path, on the driver and on every worker) unless `--cluster-sft-tune` says the
cluster image has it; either way it tells the job which version it expects (`JOB_VERSION_ENV`).
The job's `sft-tune` compares, before anything else: a mismatch (an image with another version) or
a missing dependency is an input error naming both sides and the fix, exit code 2.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import sft_tune
from sft_tune.errors import InputError, Problem

JOB_VERSION_ENV = "SFT_TUNE_JOB_VERSION"  # the version `submit` ran
JOB_SOURCE_ENV = "SFT_TUNE_JOB_SOURCE"  # "shipped" (with the job) or "cluster" (the image's)
# Imported by every command a job runs (the distribution names of sft-tune's core dependencies).
NEEDED = {
    "torch": "torch",
    "transformers": "transformers",
    "datasets": "datasets",
    "ray": "ray",
    "optuna": "optuna",
    "sklearn": "scikit-learn",
    "pyarrow": "pyarrow",
}


def installed_version() -> str | None:
    """The version of the sft-tune distribution installed here (None without one)."""
    try:
        return importlib.metadata.version("sft-tune")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_job() -> str | None:
    """Inside a submitted job: the line saying which sft-tune runs, or `InputError` when it is not
    the submitted version or a dependency is missing. None outside a job."""
    expected = os.environ.get(JOB_VERSION_ENV)
    if not expected:
        return None
    source = os.environ.get(JOB_SOURCE_ENV, "shipped")
    here = sft_tune.__version__
    problems = []
    if here != expected:
        problems.append(
            Problem(
                JOB_VERSION_ENV,
                here,
                f"the job was submitted with sft-tune {expected}, and the cluster runs sft-tune "
                f"{here}",
                f"install sft-tune=={expected} in the cluster image (see the Dockerfile), or "
                "submit without --cluster-sft-tune to ship the local one with the job",
            )
        )
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        problems.append(
            Problem(
                "cluster image",
                ", ".join(missing),
                f"sft-tune {expected} needs these packages on every node",
                "build the image with sft-tune's dependencies (pip install "
                f"'sft-tune=={expected}', or the project's Dockerfile)",
            )
        )
    if problems:
        raise InputError(problems, title="this job cannot run here")
    image = installed_version()
    if source == "shipped":
        return f"sft-tune {here}, shipped with the job" + (
            f" (the cluster image has sft-tune {image})" if image and image != here else ""
        )
    return f"sft-tune {here}, from the cluster image"
