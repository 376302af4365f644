"""Files on a sweep's storage, local or a URI (s3://, gs://, any pyarrow filesystem), through
pyarrow's filesystems (the ones Ray Tune and Ray Train write the sweep's state with).

With URI storage the sweep's home is `STORAGE_URI/NAME`: Ray Tune's state, the fold checkpoints
and the Train runs are written there by Ray; the sweep's own files (`SweepFolder`: the snapshot,
events, study, trial tables, summary, W&B runs, log, report, best model) are written by the
driver in a local folder, its cache, and copied up by `Home.push`. `Home.pull` brings them down
on any machine that reaches the storage, so `select`, `report` and `search --resume` work from
the URI alone. S3-compatible endpoints come from the standard AWS settings (`AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3`, credentials), which libarrow reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sft_tune.errors import fail

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"  # in an uploaded model folder: its files, written last
SMALL_FILE = 64 << 20  # a file up to this size is read whole at once


def is_uri(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path)


def filesystem(where: str):
    """The pyarrow filesystem and the path inside it of a local path or a URI."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    if not is_uri(where):
        return LocalFileSystem(), str(Path(where).resolve())
    return FileSystem.from_uri(where)


def read_text(where: str) -> str | None:
    """A file's text (None when it is not there)."""
    fs, path = filesystem(where)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        return None


def write_text(where: str, text: str) -> None:
    """Write a file whole: a local one through a temporary file and a rename; an object store
    writes an object only when its upload completes."""
    if not is_uri(where):
        path = Path(where)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    fs, path = filesystem(where)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def listing(where: str, recursive: bool = False) -> list[Any]:
    """The pyarrow `FileInfo`s of a folder's entries (empty when it is not there).

    A local folder made while pyarrow lists it raises FileNotFoundError even so: pyarrow lists
    first and looks whether the folder exists only after a failed listing. Tune makes a trial's
    folder as the trial's reused actor starts it, and a trial that read its folder then ended in
    ERROR before its first fold: the folder is listed again."""
    from pyarrow.fs import FileSelector

    fs, path = filesystem(where)
    selector = FileSelector(path, allow_not_found=True, recursive=recursive)
    try:
        return fs.get_file_info(selector)
    except FileNotFoundError:
        return fs.get_file_info(selector)


def join(where: str, *parts: str) -> str:
    return "/".join([str(where).rstrip("/"), *parts])


class Home:
    """A sweep's home on URI storage (`STORAGE_URI/NAME`) and its local cache folder. `push`
    copies the cache's files up (only those changed since the last push), `pull` brings them
    down; a model folder goes up whole with a manifest written last (`push_model`)."""

    def __init__(self, uri: str, cache: Path) -> None:
        self.uri, self.cache = uri.rstrip("/"), Path(cache)
        self._fs = None
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) pushed
        self._dirs: set[str] = set()  # folders made on the storage
        self._lock = threading.RLock()  # one push at a time: the background one or a strict one
        self._wake = threading.Condition()
        self._pending: set[str] = set()  # names `push_soon` was given, not pushed yet
        self._busy = False
        self._worker: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "cache": str(self.cache)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], Path(state["cache"]))

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = filesystem(self.uri)
        return self._fs

    def _remote(self, relative: str) -> str:
        self.fs  # noqa: B018 (opens the filesystem)
        return f"{self._root}/{relative}"

    def _local_files(self, name: str) -> list[Path]:
        path = self.cache / name
        if path.is_file():
            return [path]
        if path.is_dir():
            return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return []

    def push(self, names: list[str]) -> int:
        """Copy the named files and folders of the cache up (what changed since the last push);
        returns the bytes written."""
        written = 0
        with self._lock:
            for name in names:
                for local in self._local_files(name):
                    relative = local.relative_to(self.cache).as_posix()
                    stat = local.stat()
                    if self._pushed.get(relative) == (stat.st_size, stat.st_mtime_ns):
                        continue
                    written += self._upload(local, relative)
                    self._pushed[relative] = (stat.st_size, stat.st_mtime_ns)
        return written

    def push_soon(self, names: list[str]) -> None:
        """`push` on a background thread, so that the caller (Tune's event loop) never waits
        for the storage; names given while a push runs are pushed together after it. A failed
        push is a warning; `flush` waits for what is queued."""
        with self._wake:
            self._pending.update(names)
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="sweep-home", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    def flush(self) -> None:
        """Wait until every `push_soon` so far has been pushed (or has failed)."""
        with self._wake:
            while self._pending or self._busy:
                self._wake.wait()

    def _drain(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                names, self._busy = sorted(self._pending), True
                self._pending.clear()
            try:
                self.push(names)
            except OSError as err:
                log.warning(
                    "could not copy %s to %s (%s); retried at the next copy", names, self.uri, err
                )
                for name in names:  # nothing of theirs counts as pushed: the next copy retries
                    with self._lock:
                        self._pushed = {
                            k: v for k, v in self._pushed.items() if not k.startswith(name)
                        }
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _upload(self, local: Path, relative: str) -> int:
        remote = self._remote(relative)
        parent = remote.rsplit("/", 1)[0]
        if parent not in self._dirs:
            self.fs.create_dir(parent, recursive=True)
            self._dirs.add(parent)
        size = 0
        with open(local, "rb") as source, self.fs.open_output_stream(remote) as target:
            # A small file is read whole at once, so one the driver appends to (events.jsonl)
            # goes up in whole lines; a large one (model weights) in chunks.
            while chunk := source.read(SMALL_FILE if size == 0 else 1 << 22):
                target.write(chunk)
                size += len(chunk)
        return size

    def pull(self, names: list[str]) -> list[str]:
        """Bring the named files and folders down into the cache (replacing the cache's copies);
        returns the relative paths brought down."""
        from pyarrow.fs import FileSelector, FileType

        got = []
        for name in names:
            info = self.fs.get_file_info(self._remote(name))
            if info.type == FileType.File:
                found = [info]
            elif info.type == FileType.Directory:
                found = [
                    i
                    for i in self.fs.get_file_info(FileSelector(info.path, recursive=True))
                    if i.type == FileType.File
                ]
            else:
                continue
            for item in found:
                relative = item.path[len(self._root) + 1 :]
                self._download(item.path, self.cache / relative)
                got.append(relative)
        return got

    def _download(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        with self.fs.open_input_stream(remote) as source, open(tmp, "wb") as target:
            while chunk := source.read(1 << 22):
                target.write(chunk)
        os.replace(tmp, local)
        stat = local.stat()
        self._pushed[local.relative_to(self.cache).as_posix()] = (stat.st_size, stat.st_mtime_ns)

    def exists(self, name: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._remote(name)).type != FileType.NotFound

    # -- a model folder, whole or not at all ---------------------------------------------------

    def push_model(self, name: str) -> int:
        """Upload the cache's model folder `name` so that a reader never takes half of it: the old
        manifest goes first, then every file, then the new manifest (each file's size and
        SHA-256), which readers require (`pull_model`)."""
        from pyarrow.fs import FileType

        manifest = self._remote(f"{name}/{MANIFEST}")
        if self.fs.get_file_info(manifest).type != FileType.NotFound:
            self.fs.delete_file(manifest)
        stale = self.fs.get_file_info(self._remote(name))
        if stale.type == FileType.Directory:  # files of an older model that this one lacks
            self.fs.delete_dir_contents(stale.path)
        files = {}
        for local in self._local_files(name):
            relative = local.relative_to(self.cache / name).as_posix()
            self._upload(local, f"{name}/{relative}")
            files[relative] = {"bytes": local.stat().st_size, "sha256": _sha256(local)}
        text = json.dumps({"files": files}, indent=2)
        with self.fs.open_output_stream(manifest) as stream:
            stream.write(text.encode())
        written = sum(f["bytes"] for f in files.values()) + len(text)
        return written

    def pull_model(self, name: str, only: list[str] | None = None) -> list[str]:
        """The files of an uploaded model folder (or `only` those of them) brought down into the
        cache, checked against its manifest; nothing when no complete upload is there."""
        text = read_text(f"{self.uri}/{name}/{MANIFEST}")
        if text is None:
            return []
        files = json.loads(text)["files"]
        got = []
        for relative, facts in files.items():
            if only is not None and relative not in only:
                continue
            local = self.cache / name / relative
            self._download(self._remote(f"{name}/{relative}"), local)
            if local.stat().st_size != facts["bytes"] or _sha256(local) != facts["sha256"]:
                raise OSError(f"{self.uri}/{name}/{relative} does not match its manifest")
            got.append(relative)
        return got


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def storage_problem(option: str, uri: str, err: Exception):
    """The input error of storage that cannot be read (no such bucket, no credentials, no
    endpoint)."""
    return fail(
        option,
        uri,
        f"must be readable storage: {type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}",
        "check the URI and the storage's settings in the environment (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION for S3)",
    )
