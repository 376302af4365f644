"""Atomic export of a trained task model as a plain Hugging Face folder.

Everything is written to a new folder beside the target, flushed to disk, and swapped with the
target in one system call (Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`), so
whenever a process dies the target is a complete model, the previous one or the new one, and stays
a plain folder (no symlink) for transformers, `cp -r` and `shutil.copytree`. Where the filesystem
cannot exchange (NFS, other systems) the previous folder is renamed aside first: a process killed
between the two renames leaves no target until the next export of it (or `recover_export`) puts
the previous version back. Each export first deletes what killed exports of the same target left.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import json
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"

log = logging.getLogger(__name__)


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries that decide how a model trains and loads (plus `extra` ones);
    packages that are not installed are left out."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "sft-tune",
        "torch",
        "transformers",
        "datasets",
        "ray",
        "optuna",
        "wandb",
        "scikit-learn",
        "peft",
        *extra,
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(folder)` on a new folder beside `target`, then swap it into place in one step, so
    `target` is always a complete folder, the previous one or the new one (see the module docstring
    for the fallback). What killed exports of `target` left is recovered and cleaned first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_export(target)
    new = _new_folder(target)
    try:
        write(new)
        _settle(new)
    except BaseException:
        _remove(new)
        raise
    _fault_point("written")
    replaced = _swap(new, target)
    _sync(target.parent)
    _fault_point("swapped")
    for path in replaced:
        _remove(path)
    return target


def recover_export(target: Path) -> None:
    """Undo what killed exports of `target` left: put the previous version back if one died between
    the two renames of the fallback swap, and delete the folders of exports that no longer run (a
    running export's folders are kept)."""
    target = Path(target)
    stale = _stale_leftovers(target)
    previous = [path for path, kind in stale.items() if kind == "old"]
    if previous and not os.path.lexists(target):
        newest = max(previous, key=lambda path: path.lstat().st_mtime)
        try:
            os.rename(newest, target)
            del stale[newest]
            log.warning("%s: restored the previous version after an interrupted export", target)
        except OSError:
            pass  # a running export put a folder there meanwhile
    for path in stale:
        _remove(path)


def _fault_point(step: str) -> None:
    """Called between the steps of an export ("written", "moved_aside", "swapped"); tests replace it
    to kill the process exactly there."""


# -- the swap -------------------------------------------------------------------------------------


def _swap(new: Path, target: Path) -> list[Path]:
    """Put the folder `new` at `target`; return where the replaced versions are now (to delete)."""
    replaced: list[Path] = []
    for _ in range(100):  # another export may move `target` between two steps: look again
        if not os.path.lexists(target):
            try:
                os.rename(new, target)
                return replaced
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
        try:
            if _exchange(new, target):
                return [*replaced, new]  # `new` names the previous version now
        except FileNotFoundError:
            continue
        # No atomic exchange here: two renames; `recover_export` restores the previous version if
        # the process dies between them.
        aside = _leftover_name(target, "old")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            continue
        replaced.append(aside)
        _fault_point("moved_aside")
    raise OSError(errno.EBUSY, "other exports keep replacing the folder", str(target))


def _exchange_function() -> Callable[[bytes, bytes], int] | None:
    """The C call that swaps two paths atomically: Linux renameat2(RENAME_EXCHANGE) (glibc 2.28+),
    macOS renamex_np(RENAME_SWAP); None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        renameat2 = libc.renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        renameat2.argtypes += [ctypes.c_uint]
        return lambda a, b: renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        renamex_np = libc.renamex_np
        renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: renamex_np(a, b, rename_swap)
    return None


_EXCHANGE = _exchange_function()
# EPERM too: a seccomp filter may refuse the call (a real permission error fails the renames too).
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries `a` and `b` in one step; False where the system or the filesystem (NFS,
    some FUSE and network filesystems) cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


# -- the folders an export leaves beside its target -----------------------------------------------

# `.NAME.tmp-HOST-PID-TAG`: a new version being written (or, after the swap, the previous version
# being deleted); `.NAME.old-HOST-PID-TAG`: the previous version during the fallback swap. Earlier
# versions wrote `.NAME.tmp-XXXXXXXX` (no owner) and `.NAME.old-PID`.
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
_LEFTOVER = (
    r"\.(?P<kind>tmp|old)-(?:(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}|(?P<old_pid>\d+)|[a-z0-9_]{8})"
)
# A leftover whose process cannot be checked (another host's, or an older version's temporary
# folder) counts as stale once untouched this long: no export writes for a day.
STALE_AFTER_S = 24 * 3600


def _leftover_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _new_folder(target: Path) -> Path:
    """A new empty folder for the next version, with the permissions of a plain `mkdir` (0777 less
    the umask: 0755 with the usual 022; `mkdtemp` would give 0700)."""
    while True:
        path = _leftover_name(target, "tmp")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _stale_leftovers(target: Path) -> dict[Path, str]:
    """The folders that exports of `target` no longer running left beside it, with their kind."""
    pattern = re.compile(rf"\.{re.escape(target.name)}{_LEFTOVER}")
    try:
        names = sorted(os.listdir(target.parent))
    except FileNotFoundError:
        return {}
    stale = {}
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        host, pid = match["host"], match["pid"] or match["old_pid"]
        if match["old_pid"]:
            host = _HOST  # earlier versions' `.NAME.old-PID`: this host's, as far as we can tell
        path = target.parent / name
        if not _running(path, host, int(pid) if pid else None):
            stale[path] = match["kind"]
    return stale


def _running(path: Path, host: str | None, pid: int | None) -> bool:
    """Whether the export that left `path` may still be running: its process is alive, or (where
    that cannot be checked) `path` changed in the last `STALE_AFTER_S`."""
    if host == _HOST and pid is not None and os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        return True
    try:
        return time.time() - path.lstat().st_mtime < STALE_AFTER_S
    except FileNotFoundError:
        return True  # gone already


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("could not delete %s (%s); the next export tries again", path, error)


def _settle(folder: Path) -> None:
    """Give the new version's files the permissions of a plain `open` (0666 less the umask, read
    off `folder`, made by a plain `mkdir`; safetensors writes 0600 through a temporary file), and
    flush them to disk before the swap, so a power cut after it cannot leave empty files."""
    folder_mode = folder.stat().st_mode & 0o777
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, folder_mode & 0o666)
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync(Path(root))


def _sync(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot sync a folder
    finally:
        os.close(descriptor)


def export_model(
    task_model,
    tokenizer,
    target: Path,
    info: dict[str, Any],
    history: list[dict] | None = None,
    extra_files: dict[str, dict] | None = None,
) -> Path:
    """Save model (safetensors; a PEFT model: its adapter folder), tokenizer, `run.json` (config,
    metrics, versions), the step log, and `extra_files` (name -> JSON content) to `target`,
    swapped in at once (`write_atomically`)."""

    # A PEFT model (adapter-only export) saves its adapters and head: nothing to de-quantize.
    model = task_model if hasattr(task_model, "peft_config") else plain_model(task_model)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        payload = {**info, "versions": library_versions()}
        (folder / RUN_FILE).write_text(json.dumps(payload, indent=2, default=str))
        for name, content in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(content, indent=2, default=str))
        if history is not None:
            with open(folder / "history.jsonl", "w") as handle:
                for record in history:
                    handle.write(json.dumps(record) + "\n")

    return write_atomically(target, write)


def plain_model(model):
    """The model itself, or for one loaded from a quantized checkpoint (GGUF) the same weights in a
    plain model of its class: transformers refuses to save a GGUF-loaded model as such."""
    if (
        getattr(model, "hf_quantizer", None) is None
        and getattr(model.config, "quantization_config", None) is None
    ):
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain.to(next(model.parameters()).dtype)
