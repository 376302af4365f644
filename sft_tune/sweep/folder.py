"""The sweep folder: every path and file name of a sweep, its snapshot, and where it is now.

A local sweep lives in `storage_path/name`; with s3:// or gs:// storage, Ray Tune and Ray Train
keep their state and checkpoints under `STORAGE_URI/name` and the sweep's own files still land in
a local folder (`runs/sweeps/name`). Everything else reads and writes the sweep through a
`SweepFolder`, so a folder that was moved (another disk, a copied run) is handled in one place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sft_tune.errors import fail

LOCAL_FOR_URI_STORAGE = Path("runs/sweeps")  # where a sweep on s3:// or gs:// keeps its own files
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
    EVENTS = "events.jsonl"  # trial starts and finished folds, appended by the trials
    STUDY = "study.db"  # the Optuna study (unless search.optuna_storage says otherwise)
    TRIALS_JSON = "trials.json"
    TRIALS_CSV = "trials.csv"
    BEST = "best.json"
    BEST_CONFIG = "best_config.yaml"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    BEST_MODEL = "best_model"

    def __init__(self, path: Path, storage_path: str | None = None) -> None:
        self.path = Path(path).resolve()
        # search.storage_path: a local folder (by default the one holding this folder) or a URI
        self.storage_path = storage_path if storage_path is not None else str(self.path.parent)

    @classmethod
    def of(cls, search) -> SweepFolder:
        """The folder of a sweep's settings (`SearchSettings`): storage_path/name."""
        storage = search.storage_path
        base = Path(storage) if "://" not in storage else LOCAL_FOR_URI_STORAGE
        return cls(base / search.name, storage)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def remote(self) -> bool:
        """Whether Tune's state and checkpoints live on URI storage (s3://, gs://)."""
        return "://" in self.storage_path

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

    def load_sweep(self):
        """The sweep saved in this folder, its storage re-pointed to where the folder is now when
        a local folder was moved since it started (it must keep its name)."""
        from sft_tune.runconfig import parse_config
        from sft_tune.space import Param, SearchSettings, Sweep

        saved = json.loads(self.file(self.SNAPSHOT).read_text())
        search = SearchSettings.model_validate(saved["search"])
        if "://" not in search.storage_path and SweepFolder.of(search).path != self.path:
            if self.name != search.name:
                raise fail(
                    "--resume",
                    str(self.path),
                    f"a sweep folder must keep its search.name ({search.name!r}): the Optuna study and Ray Tune state inside are named after it",
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
    """Append-only `events.jsonl` in the sweep folder: trial starts (retries, resumes) and folds.

    Written by rank 0 where the sweep folder is reachable (a local or shared file system).
    """

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
            "pid": os.getpid(),
            **fields,
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The records of an `events.jsonl` (empty when absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
