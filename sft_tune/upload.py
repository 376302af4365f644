"""What a job submitted by `sft-tune submit` uploads as its working directory.

In a git checkout: the files git tracks (minus what the top `.rayignore` leaves out) plus the files
the command reads inside the project (its config or space file and their data, even when untracked
or ignored). Outside one: the folder minus what its `.gitignore`/`.rayignore` files leave out, as
Ray itself would upload it. Either way, files whose names look like secrets (`.env*`, `*token*`,
`*credential*`, `*.pem`, `.netrc`, `.ray-token/`, ...) are never uploaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from sft_tune.errors import fail

# File or folder names never uploaded (matched case-insensitively on every part of a path), after
# removing the harmless "token" of Hugging Face tokenizer files (tokenizer.json,
# special_tokens_map).
SECRET_FILES = (
    ".env*",
    "*token*",
    "*credential*",
    "*secret*",
    "*.pem",
    "*.key",
    ".netrc",
    "_netrc",
    ".pypirc",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
)
HARMLESS_TOKEN = re.compile(r"tokeniz|special_tokens_map|added_tokens")
RAY_SKIPS = (".git", ".venv", "venv", "__pycache__")  # Ray's own working_dir excludes
IGNORE_FILES = (".gitignore", ".rayignore")
LARGEST_SHOWN = 5


@dataclass
class Package:
    """What `submit` uploads as the job's working directory (paths relative to `root`)."""

    root: Path
    files: list[str]
    git: bool  # listed from `git ls-files`, else from the folder minus its ignore files
    needed: list[str] = field(default_factory=list)  # read by the command, not tracked by git
    secrets: list[str] = field(default_factory=list)  # left out: names that look like secrets
    untracked: list[str] = field(default_factory=list)  # left out: not tracked by git, not needed
    elsewhere: list[Path] = field(default_factory=list)  # read outside the project: not uploaded

    def size(self) -> int:
        return sum((self.root / name).stat().st_size for name in self.files)

    def summary(self) -> str:
        """What is uploaded (count, size, largest files) and what is left out, for the terminal."""
        source = (
            f"the files git tracks in {self.root}"
            if self.git
            else f"{self.root} minus .gitignore/.rayignore (not a git checkout)"
        )
        extra = f" + {len(self.needed)} the command reads" if self.needed else ""
        sizes = sorted(((self.root / n).stat().st_size, n) for n in self.files)[::-1]
        lines = [f"uploading {len(self.files)} files ({_size(self.size())}): {source}{extra}"]
        if sizes:
            shown = ", ".join(f"{n} ({_size(s)})" for s, n in sizes[:LARGEST_SHOWN])
            lines.append(f"  largest: {shown}")
        for what, names in (
            ("left out, names that look like secrets", self.secrets),
            ("left out, not tracked by git (git add them to upload them)", self.untracked),
            ("not uploaded, outside the project (read there on the cluster)", self.elsewhere),
        ):
            if names:
                more = f" and {len(names) - 10} more" if len(names) > 10 else ""
                lines.append(f"  {what}: {', '.join(map(str, names[:10]))}{more}")
        return "\n".join(lines)

    def copy_to(self, folder: Path) -> None:
        for name in self.files:
            target = Path(folder) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.root / name, target)


def is_secret(name: str) -> bool:
    """Whether a path (relative, `/`-separated) has a part whose name looks like a secret file."""
    for part in PurePosixPath(name).parts:
        bare = HARMLESS_TOKEN.sub("", part.lower())
        if any(fnmatchcase(bare, pattern) for pattern in SECRET_FILES):
            return True
    return False


def build_package(root: Path, reads: list[Path]) -> Package:
    """List the job's working directory: git-tracked files plus `reads` inside `root`, no
    secrets."""
    root = Path(root).resolve()
    tracked = _git_files(root, "--cached")
    listed = _rayignore_keeps(root, tracked) if tracked is not None else _folder_files(root)
    known = set(listed)
    needed, elsewhere = [], []
    for path in (Path(p).resolve() for p in reads):
        if not path.is_relative_to(root):
            elsewhere.append(path)
            continue
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            name = file.relative_to(root).as_posix()
            if is_secret(name):
                raise fail(
                    "file the command reads",
                    name,
                    f"its name looks like a secret file ({', '.join(SECRET_FILES)}), and such "
                    "files "
                    "are never uploaded",
                    "rename it (or keep it on storage the cluster reads and point the config "
                    "there)",
                )
            if file.is_file() and name not in known:
                known.add(name)
                needed.append(name)
    files, secrets = [], []
    for name in listed + needed:
        parts = PurePosixPath(name).parts
        if is_secret(name):
            secrets.append(name)
        elif parts[-1] in IGNORE_FILES or any(p in RAY_SKIPS for p in parts):
            continue  # ignore files would make Ray drop needed files again; Ray skips the others
        elif (root / name).is_file() and (root / name).resolve().is_relative_to(root):
            files.append(name)  # (a link to a file outside the project is left out)
    untracked = [
        name
        for name in (_git_files(root, "--others", "--exclude-standard") or [])
        if name not in known and not is_secret(name)
    ]
    return Package(root, files, tracked is not None, needed, secrets, untracked, elsewhere)


def _git_files(root: Path, *which: str) -> list[str] | None:
    """`git ls-files` under `root` (relative to it), or None when `root` is not in a git
    checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", *which],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [name for name in done.stdout.split("\0") if name]


def _rayignore_keeps(root: Path, names: list[str]) -> list[str]:
    """`names` minus what `root/.rayignore` leaves out."""
    if not (root / ".rayignore").is_file():
        return names
    spec = _ignore_spec(root / ".rayignore")
    return [name for name in names if not spec.match_file(name)]


def _folder_files(root: Path) -> list[str]:
    """Every file under `root` that its `.gitignore`/`.rayignore` files (at any level) keep."""
    names: list[str] = []

    def walk(folder: Path, rules: list[tuple[Path, Any]]) -> None:
        rules = rules + [
            (folder, _ignore_spec(folder / name))
            for name in IGNORE_FILES
            if (folder / name).is_file()
        ]
        for entry in sorted(folder.iterdir()):
            is_dir = entry.is_dir() and not entry.is_symlink()
            if entry.name in RAY_SKIPS or any(
                spec.match_file(entry.relative_to(base).as_posix() + ("/" if is_dir else ""))
                for base, spec in rules
            ):
                continue
            if is_dir:
                walk(entry, rules)
            elif entry.is_file():
                names.append(entry.relative_to(root).as_posix())

    walk(root, [])
    return names


def _ignore_spec(path: Path):
    from ray._private.thirdparty.pathspec import PathSpec  # the matcher of Ray's own upload

    return PathSpec.from_lines("gitwildmatch", path.read_text().splitlines())


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
