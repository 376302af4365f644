"""What `sft-tune submit` uploads: git-tracked files plus what the command reads, never secrets."""

from pathlib import Path

import pytest
from jobs import SECRET_DECOYS, make_project

from sft_tune.errors import InputError
from sft_tune.upload import build_package, is_secret


def test_package_holds_tracked_and_needed_files_and_never_secrets(tmp_path):
    data = make_project(tmp_path / "project")
    root = tmp_path / "project"
    (root / "run.yaml").write_text("{}\n")  # untracked, but the command reads it
    package = build_package(root, [root / "run.yaml", *(root / p for p in data.values())])
    assert sorted(package.files) == sorted(
        ["notes.md", "vocab/tokenizer.json", "run.yaml", *(p.as_posix() for p in data.values())]
    )
    assert package.git and sorted(package.secrets) == [".env"]  # tracked, and still left out
    assert package.untracked == ["scratch.txt"]  # untracked secrets are not even named
    summary = package.summary()
    assert f"uploading 6 files ({package.size() / 1024:.1f} KiB)" in summary
    largest = max(package.files, key=lambda name: (root / name).stat().st_size)
    assert f"largest: {largest} (" in summary
    assert "git add" in summary and "scratch.txt" in summary


def test_package_outside_git_follows_ignore_files_and_drops_secrets(tmp_path):
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    (root / ".gitignore").write_text("runs/\n*.log\n")
    (root / "sub" / ".rayignore").write_text("big.bin\n")
    for name in ("a.py", "sub/b.py", "sub/big.bin", "run.log", "runs/x.json", *SECRET_DECOYS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    package = build_package(root, [])
    assert not package.git and "not a git checkout" in package.summary()
    assert sorted(package.files) == ["a.py", "sub/b.py"]
    assert sorted(package.secrets) == sorted(SECRET_DECOYS)


@pytest.mark.parametrize(
    "name",
    [
        ".env",
        ".env.local",
        "auth_token",
        ".ray-token/x",
        "HF_TOKEN.txt",
        "Credentials.json",
        "deploy.pem",
        "tls/server.key",
        ".netrc",
        "my-secrets.yaml",
        "id_rsa",
    ],
)
def test_secret_looking_names(name):
    assert is_secret(name)


@pytest.mark.parametrize(
    "name", ["tokenizer.json", "model/special_tokens_map.json", "train.csv", "README.md"]
)
def test_names_that_are_not_secrets(name):
    assert not is_secret(name)


def test_a_file_the_command_reads_with_a_secret_name_is_refused(tmp_path):
    make_project(tmp_path / "project")
    data = tmp_path / "project" / "data" / "hf_token.csv"
    data.write_text("text,label\n")
    with pytest.raises(InputError) as err:
        build_package(tmp_path / "project", [data])
    assert "data/hf_token.csv" in str(err.value) and "rename it" in str(err.value)


def test_files_read_outside_the_project_are_named_not_uploaded(tmp_path):
    make_project(tmp_path / "project")
    outside = tmp_path / "shared.csv"
    outside.write_text("text,label\n")
    package = build_package(tmp_path / "project", [outside])
    assert "shared.csv" not in " ".join(package.files)
    assert package.elsewhere == [outside.resolve()] and str(outside.resolve()) in package.summary()


def test_a_secret_named_folder_is_left_out_whole(tmp_path):
    root = tmp_path / "project"
    make_project(root, tracked={"deploy/.ray-token/auth_token": "t\n"})
    assert "deploy/.ray-token/auth_token" in build_package(root, []).secrets
    assert not any(".ray-token" in name for name in build_package(root, []).files)
    assert Path(root / ".ray-token" / "auth_token").is_file()  # (the decoy exists, untracked)
