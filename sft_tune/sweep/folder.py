"""The sweep folder: every path and file name of a sweep, its snapshot, and where it is now.

A local sweep lives in `storage_path/name`. With URI storage (s3://, gs://, any pyarrow
filesystem) the sweep's home is `STORAGE_URI/name`: Ray Tune and Ray Train keep their state and
checkpoints there, and the driver writes the sweep's own files in a local cache folder
(`runs/sweeps/name` under the working directory) and copies them up (`sync`: at the start, at
every trial's end and at the end); `SweepFolder.open(URI)` brings them down on any machine.
Everything else reads and writes the sweep through a `SweepFolder`, so a folder that was moved
(another disk, a copied run) or that lives on a URI is handled in one place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from sft_tune.errors import fail
from sft_tune.sweep.storage import Home, is_uri, join, listing, read_text, storage_problem

log = logging.getLogger(__name__)

LOCAL_FOR_URI_STORAGE = Path("runs/sweeps")  # the cache of a sweep on URI storage
# Inside each fold checkpoint of a trial:
FOLDS_FILE = (
    "folds.json"  # the fold scores so far and the last fold's metrics (where a retry resumes)
)
HISTORY_FILE = "history.jsonl"  # per-step losses of the fold, read by the driver's W&B callback
# The Tune config key of a trial that finishes a stopped one: the stopped trial's id.
FINISH_KEY = "finish_trial"
FINISH_EXPERIMENT = (
    "finish"  # the Tune experiment inside the sweep folder that finishes stopped trials
)
REPLAYED = "replayed"  # marks a result a restored trial reports again (its fold was already logged)


class SweepFolder:
    """One sweep's folder. Pickles as its path and storage setting (Ray ships it to workers)."""

    SNAPSHOT = "sweep.json"  # the sweep as it started: base config, params, search settings
    EVENTS = "events.jsonl"  # trial starts, finished folds and ends, appended by the driver
    STUDY = "study.db"  # the Optuna study (unless search.optuna_storage says otherwise)
    TRIALS_JSON = "trials.json"
    TRIALS_CSV = "trials.csv"
    BEST = "best.json"
    BEST_CONFIG = "best_config.yaml"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    BEST_MODEL = "best_model"
    LOG = "sweep.log"  # Ray's and Tune's output during the search
    WANDB = "wandb"  # the offline W&B runs (one per trial, one for the best model)
    # What `report` reads of the best model that `select` uploaded to a sweep's URI storage.
    REPORT_READS = (BEST, "history.jsonl")
    # What the driver writes and, with URI storage, copies to the sweep's home.
    OWN_FILES = (
        SNAPSHOT,
        EVENTS,
        STUDY,
        TRIALS_JSON,
        TRIALS_CSV,
        BEST,
        BEST_CONFIG,
        SUMMARY,
        REPORT,
        LOG,
        WANDB,
    )

    def __init__(self, path: Path, storage_path: str | None = None) -> None:
        self.path = Path(path).resolve()
        # search.storage_path: a local folder (by default the one holding this folder) or a URI
        self.storage_path = storage_path if storage_path is not None else str(self.path.parent)
        self._home: Home | None = None

    @classmethod
    def of(cls, search) -> SweepFolder:
        """The folder of a sweep's settings (`SearchSettings`): storage_path/name, or with URI
        storage its cache, runs/sweeps/name under the working directory."""
        storage = search.storage_path
        base = Path(storage) if not is_uri(storage) else LOCAL_FOR_URI_STORAGE
        return cls(base / search.name, storage)

    @classmethod
    def open(cls, where: str | Path, option: str, model_files: tuple[str, ...] = ()) -> SweepFolder:
        """The sweep folder a command names: a local folder, or a sweep's home on URI storage
        (STORAGE_URI/NAME) or a local cache of one. A home's files are brought down into its
        cache first (the storage holds the truth), with the named files of its uploaded best
        model. A cache named by its URI is ./runs/sweeps/NAME, which must not hold another sweep."""
        if is_uri(where):
            uri = str(where).rstrip("/")
            storage, name = uri.rsplit("/", 1)
            folder = cls(LOCAL_FOR_URI_STORAGE / name, storage)
            was = folder._saved_storage()
            if was is not None and was.rstrip("/") != storage:
                raise fail(
                    option,
                    uri,
                    f"its cache folder {folder.path} holds another sweep (storage_path {was})",
                    "run the command from another working directory, or move that folder away",
                )
        else:
            folder = cls(Path(where))
            storage = folder._saved_storage()
            if not is_uri(storage):
                return folder
            folder = cls(Path(where), storage)
        try:
            if not folder.home.exists(cls.SNAPSHOT):
                raise fail(
                    option,
                    folder.experiment,
                    "must be a sweep's home on its storage (STORAGE_URI/NAME, holding "
                    f"{cls.SNAPSHOT})",
                    "pass search.storage_path/search.name of the sweep, e.g. "
                    "s3://bucket/sweeps/NAME",
                )
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.home.pull(list(cls.OWN_FILES))
            if model_files:
                folder.home.pull_model(cls.BEST_MODEL, list(model_files))
        except OSError as err:
            raise storage_problem(option, folder.experiment, err) from None
        return folder

    def _saved_storage(self) -> str | None:
        """search.storage_path of the snapshot in this folder (None without one)."""
        if not self.holds_sweep():
            return None
        return json.loads(self.file(self.SNAPSHOT).read_text())["search"]["storage_path"]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def remote(self) -> bool:
        """Whether the sweep lives on URI storage (s3://, gs://): this folder is then its cache."""
        return is_uri(self.storage_path)

    @property
    def home(self) -> Home | None:
        """The sweep's home on URI storage (None for a local sweep)."""
        if self._home is None and self.remote:
            self._home = Home(self.experiment, self.path)
        return self._home

    @property
    def location(self) -> str:
        """Where the sweep lives: its home URI, or this folder."""
        return self.experiment if self.remote else str(self.path)

    def sync(self, names: tuple[str, ...] | list[str] | None = None, strict: bool = False) -> None:
        """With URI storage: copy the sweep's own files (or `names`) that changed up to its home.
        In the background (the caller never waits; a failed copy is a warning, retried at the
        next), or with `strict` at once, after what is queued, raising a failure."""
        if not self.remote:
            return
        names = list(names or self.OWN_FILES)
        if not strict:
            self.home.push_soon(names)
            return
        self.home.flush()
        self.home.push(names)

    def push_model(self) -> None:
        """With URI storage: upload the best model folder whole (its manifest last)."""
        if self.remote:
            self.home.push_model(self.BEST_MODEL)

    @property
    def experiment(self) -> str:
        """Where Ray Tune keeps the sweep's state: this folder, or STORAGE_URI/name."""
        return f"{self.storage_path.rstrip('/')}/{self.name}" if self.remote else str(self.path)

    @property
    def train_storage(self) -> str:
        """Where the Ray Train runs of multi-worker trials keep their checkpoints."""
        return f"{self.experiment}/train"

    def file(self, name: str) -> Path:
        return self.path / name

    def optuna_url(self, optuna_storage: str | None) -> str:
        return optuna_storage or f"sqlite:///{self.file(self.STUDY)}"

    def holds_sweep(self) -> bool:
        return self.file(self.SNAPSHOT).is_file()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "storage_path": self.storage_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.storage_path = Path(state["path"]), state["storage_path"]
        self._home = None

    def __repr__(self) -> str:
        return f"SweepFolder({str(self.path)!r})"

    # -- the snapshot ---------------------------------------------------------------------

    def save_snapshot(self, sweep) -> None:
        """Write the sweep as it starts (what `--resume`, `select` and `report` read back)."""
        self.path.mkdir(parents=True, exist_ok=True)
        snapshot = {
            "base": sweep.base,
            "params": {k: v.model_dump() for k, v in sweep.params.items()},
            "search": sweep.search.model_dump(),
            "source": sweep.source,
        }
        self.file(self.SNAPSHOT).write_text(json.dumps(snapshot, indent=2))

    def load_sweep(self, data_dir: Path | None = None):
        """The sweep saved in this folder, its storage re-pointed to where the folder is now when
        a local folder was moved since it started (it must keep its name), and its data files to
        `data_dir` when given (`repoint_data`)."""
        from sft_tune.runconfig import parse_config
        from sft_tune.sweep.space import Param, SearchSettings, Sweep

        saved = json.loads(self.file(self.SNAPSHOT).read_text())
        if data_dir is not None:
            saved["base"] = repoint_data(saved["base"], Path(data_dir))
        search = SearchSettings.model_validate(saved["search"])
        if "://" not in search.storage_path and SweepFolder.of(search).path != self.path:
            if self.name != search.name:
                raise fail(
                    "--resume",
                    str(self.path),
                    f"a sweep folder must keep its search.name ({search.name!r}): the Optuna "
                    "study and Ray Tune state inside are named after it",
                    f"rename the folder back to {self.path.parent / search.name}",
                )
            search = search.model_copy(update={"storage_path": str(self.path.parent)})
        return Sweep(
            base=saved["base"],
            base_config=parse_config(saved["base"]),
            params={k: Param.model_validate(v) for k, v in saved["params"].items()},
            search=search,
            source=saved["source"],
        )

    def moved_from(self) -> Path | None:
        """Where a moved local folder was when its sweep started (None when it did not move)."""
        saved = json.loads(self.file(self.SNAPSHOT).read_text())["search"]
        if "://" in saved["storage_path"]:
            return None
        was = (Path(saved["storage_path"]) / saved["name"]).resolve()
        return was if was != self.path else None

    # -- records the trials write and the driver reads --------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """The records of `events.jsonl` (empty when absent)."""
        return read_events(self.file(self.EVENTS))

    def trials(self) -> list[dict[str, Any]]:
        return json.loads(self.file(self.TRIALS_JSON).read_text())

    def require_results(self, what: str) -> None:
        """Raise the input error of a folder that is not a finished sweep."""
        if not self.holds_sweep() or not self.file(self.TRIALS_JSON).is_file():
            raise fail(
                "SWEEP_DIR",
                str(self.path),
                f"must be a sweep folder with {self.SNAPSHOT} and {self.TRIALS_JSON}",
                f"pass the folder printed by `sft-tune search` (storage_path/name) to {what}",
            )


def repoint_data(base: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """A run config mapping whose data files (train, test, unlabelled) are taken from `data_dir`,
    each at its path relative to the deepest folder holding all of them where the sweep ran (on
    a cluster: the job's working directory, gone with it). E.g. /job/data/train.csv and
    /job/data/lm/news.txt become DATA_DIR/train.csv and DATA_DIR/lm/news.txt."""
    data = dict(base["data"])
    paths = [
        data["train"],
        *([data["test"]] if data.get("test") else []),
        *data.get("unlabelled", []),
    ]
    root = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
    new = {p: str(Path(data_dir).resolve() / Path(p).relative_to(root)) for p in paths}
    data["train"] = new[data["train"]]
    if data.get("test"):
        data["test"] = new[data["test"]]
    data["unlabelled"] = [new[p] for p in data.get("unlabelled", [])]
    return {**base, "data": data}


def last_fold_state(trial_dir: str | None) -> dict[str, Any] | None:
    """The fold state in a trial folder's newest fold checkpoint (checkpoint_NNNNNN/folds.json),
    local or on URI storage; None without one."""
    if not trial_dir:
        return None
    checkpoints = sorted(
        info.base_name for info in listing(trial_dir) if info.base_name.startswith("checkpoint_")
    )
    for name in reversed(checkpoints):
        text = read_text(join(trial_dir, name, FOLDS_FILE))
        if text:
            return json.loads(text)
    return None


def new_fold(result: dict[str, Any]) -> bool:
    """Whether a Tune result is a fold finished now (not one a restored trial hands back again)."""
    return "fold" in result and not result.get(REPLAYED)


def fold_checkpoint(
    trial_path: str | None, metrics: dict[str, Any], storage_path: str = ""
) -> str | None:
    """Where a trial's last fold checkpoint is: the Train checkpoint of a multi-worker trial (the
    `checkpoint_path` metric that Train's TuneReportCallback passes on), or the Tune checkpoint an
    in-actor trial reported (`checkpoint_dir_name`, inside the trial's folder). On URI storage
    (`storage_path` s3://...) Tune and Train give these paths without their scheme
    ("bucket/prefix/..."), which no filesystem opens: the scheme is put back."""
    if metrics.get("checkpoint_path"):
        return with_scheme(metrics["checkpoint_path"], storage_path)
    name = metrics.get("checkpoint_dir_name")
    return with_scheme(f"{trial_path}/{name}", storage_path) if name and trial_path else None


def with_scheme(path: str, storage_path: str) -> str:
    """`path` as a URI of the storage's filesystem when the storage is a URI and the path came
    back without its scheme (Ray 2.60's `trial.path`, `Result.path`, Train's checkpoint path)."""
    if "://" not in storage_path or "://" in path:
        return path
    scheme = storage_path.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}"


class EventLog:
    """Append-only `events.jsonl` in the sweep folder: trial starts (retries, resumes), folds and
    ends. Written by the driver only (`tuner.TrialEvents`), from what Tune tells it."""

    def __init__(self, path: str | None, trial_id: str | None, enabled: bool) -> None:
        self.path = Path(path) if path and enabled and Path(path).parent.is_dir() else None
        self.trial_id = trial_id

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {
            "trial_id": self.trial_id,
            "event": event,
            "time": time.time(),
            **fields,
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The records of an `events.jsonl` (empty when absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
