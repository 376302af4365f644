"""A sweep's input checked whole before Ray, torch or transformers import: the space (or the
snapshot of a sweep to resume), the base config's files and data, the sweep folder, and either
the cluster address (probed) or whether one trial fits this machine. Every problem of every stage
is reported at once; nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sft_tune.addresses import probe_address, refuse_ray_client
from sft_tune.core.files import RawData, data_problems
from sft_tune.errors import InputError, Problem, fail
from sft_tune.sweep.cluster import check_local_resources
from sft_tune.sweep.folder import SweepFolder
from sft_tune.sweep.space import Sweep, check_space
from sft_tune.sweep.storage import storage_problem
from sft_tune.tasks import task_files

# What Ray Tune saves in an experiment folder that `Tuner.restore` can resume (what
# `Tuner.can_restore` looks for); checked here for a local folder, by Ray for URI storage.
TUNER_STATE = "tuner.pkl"


@dataclass
class CheckedSweep:
    """What `run_search` starts from: the sweep, its folder, its data read and checked."""

    sweep: Sweep
    folder: SweepFolder
    data: RawData
    resume: bool
    address: str | None


def check_search(
    space_path: Path | None = None,
    resume: str | Path | None = None,
    address: str | None = None,
    data_dir: Path | None = None,
) -> CheckedSweep:
    """Check a new sweep (`space_path`) or one to resume (`resume`: its folder, or its home on
    URI storage, brought down first; `data_dir`: where its data files are now) and where it
    will run."""
    if (space_path is None) == (resume is None):
        raise fail(
            "--space / --resume",
            {"space": space_path and str(space_path), "resume": resume and str(resume)},
            "give exactly one of --space FILE (new sweep) and --resume DIR (continue one)",
            "e.g. sft-tune search --space search_spaces/alpha.yaml",
        )
    if resume is not None:
        sweep, folder, data, problems = _resumed(resume, data_dir)
        search = sweep.search
    else:
        found = check_space(Path(space_path))
        sweep, data, search, problems = found.sweep, found.data, found.search, found.problems
        folder = SweepFolder.of(sweep.search) if sweep is not None else None
        if folder is not None:
            problems += _taken(folder)
    if data_dir is not None and (resume is None or not Path(data_dir).is_dir()):
        problems.append(
            Problem(
                "--data-dir",
                str(data_dir),
                "re-points the data files of a sweep to resume: needs --resume and an existing folder",
                "drop --data-dir with --space (the space's config names its data), or pass the folder that holds the data now",
            )
        )
    target = address or os.environ.get("RAY_ADDRESS")
    try:
        if target and target not in ("auto", "local"):
            refuse_ray_client("--address" if address else "RAY_ADDRESS", target)
            probe_address("--address" if address else "RAY_ADDRESS", target)
        elif not target and search is not None:
            check_local_resources(search.resources)
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(problems, title=f"{space_path or resume}: invalid input")
    return CheckedSweep(sweep, folder, data, resume is not None, address)


def _taken(folder: SweepFolder) -> list[Problem]:
    """The problem of a new sweep whose folder (or home on URI storage, or that home's local
    cache) already holds a sweep, or whose URI storage cannot be read."""
    where = folder.location
    try:
        taken = folder.home.exists(SweepFolder.SNAPSHOT) if folder.remote else False
    except OSError as err:
        return storage_problem("search.storage_path", folder.storage_path, err).problems
    if taken or folder.holds_sweep():
        where = where if taken else str(folder.path)
        return [
            Problem(
                "search.name",
                folder.name,
                f"the sweep folder {where} already holds a sweep",
                f"resume it with `sft-tune search --resume {where}`, or pick another search.name",
            )
        ]
    return []


def _resumed(
    path: str | Path, data_dir: Path | None
) -> tuple[Sweep | None, SweepFolder | None, RawData | None, list[Problem]]:
    folder = SweepFolder.open(path, "--resume")
    if not folder.holds_sweep():
        raise fail(
            "--resume",
            str(path),
            f"must be a sweep folder holding {SweepFolder.SNAPSHOT}",
            "pass the folder printed by the interrupted `sft-tune search`",
        )
    sweep = folder.load_sweep(data_dir)
    if not folder.remote:  # where a moved local folder is now (a URI sweep's cache stays put)
        folder = SweepFolder.of(sweep.search)
    problems = []
    if not folder.remote and not (folder.path / TUNER_STATE).is_file():
        problems.append(
            Problem(
                "--resume",
                str(path),
                "the sweep never got as far as saving Ray Tune state, so there is nothing to resume",
                f"delete {path} and start the sweep again with --space",
            )
        )
    config, lm = sweep.base_config, "two-phase" in sweep.arms()
    data, found = data_problems(config, task_files(config.model.task), sweep.search.folds, lm)
    return sweep, folder, data, problems + found
