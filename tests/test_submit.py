"""`sft-tune submit` against a real local Ray head with token authentication (marked `ray`)."""

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_toy_files, run_config_dict, write_space

from sft_tune.cli import main

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head started with `ray start`, token auth on, dashboard on loopback; stopped by `ray stop`."""
    folder = tmp_path_factory.mktemp("head")
    token = secrets.token_hex(32)
    (folder / "token").write_text(token)
    # Job drivers run `python` from the head's PATH: this interpreter's (the test venv's) first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    start = [
        RAY,
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--disable-usage-stats",
    ]
    try:
        done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield {
            "address": f"http://127.0.0.1:{dashboard}",
            "token": token,
            "token_file": folder / "token",
            "folder": folder,
        }
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=180)


@pytest.fixture
def token_env(ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head["token"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_submitted_search_succeeds_and_leaves_results_and_best_model(
    ray_head, token_env, tiny_bert, tmp_path, capsys
):
    files = make_toy_files(tmp_path)
    space = write_space(tmp_path, tiny_bert, files, "submitted", num_trials=1, scheduler="none")
    code = main(
        [
            "submit",
            "--address",
            ray_head["address"],
            "--follow",
            "--",
            "search",
            "--space",
            str(space),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "submitted job" in out.out and "SUCCEEDED" in out.out
    assert ray_head["token"] not in out.out + out.err  # the token is never printed
    folder = tmp_path / "sweeps" / "submitted"
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["COMPLETE"]
    assert (folder / "best_model" / "config.json").is_file() and (
        folder / "best_model" / "best.json"
    ).is_file()
    job_id = out.out.split("submitted job ")[1].split(":")[0]
    assert main(["jobs", "status", job_id, "--address", ray_head["address"]]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(
        ray_head["address"], headers={"Authorization": f"Bearer {ray_head['token']}"}
    ).get_job_info(job_id)
    assert ray_head["token"] not in json.dumps(
        {"runtime_env": info.runtime_env, "metadata": info.metadata, "entrypoint": info.entrypoint},
        default=str,
    )
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".csv", ".jsonl"):
            assert ray_head["token"] not in path.read_text(errors="ignore"), path


def test_a_failing_job_exits_non_zero_with_its_log_tail(
    ray_head, token_env, tiny_bert, tmp_path, capsys
):
    files = make_toy_files(tmp_path)
    raw = run_config_dict(tiny_bert, {**files, "train": tmp_path / "missing.csv"}, tmp_path / "out")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    code = main(
        [
            "submit",
            "--address",
            ray_head["address"],
            "--follow",
            "--",
            "train",
            "--config",
            str(tmp_path / "cfg.yaml"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "log lines of job" in err and "missing.csv" in err


def test_wrong_or_missing_token_is_refused_clearly(
    ray_head, tmp_path, monkeypatch, capsys, tiny_bert
):
    space = write_space(tmp_path, tiny_bert, make_toy_files(tmp_path), "refused")
    (tmp_path / "wrong").write_text("not-the-token")
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    command = ["--", "search", "--space", str(space)]
    assert (
        main(
            [
                "submit",
                "--address",
                ray_head["address"],
                "--token-file",
                str(tmp_path / "wrong"),
                *command,
            ]
        )
        == 2
    )
    assert "refused the token" in capsys.readouterr().err
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    assert main(["submit", "--address", ray_head["address"], *command]) == 2
    err = capsys.readouterr().err
    assert "RAY_AUTH_TOKEN" in err and "--token-file" in err
    assert not (tmp_path / "sweeps").exists()  # nothing ran


def test_secrets_are_not_sent_with_a_job(ray_head, token_env, tmp_path, capsys, tiny_bert):
    space = write_space(tmp_path, tiny_bert, make_toy_files(tmp_path), "secret")
    assert (
        main(
            [
                "submit",
                "--address",
                ray_head["address"],
                "--env",
                "WANDB_API_KEY=abc123",
                "--",
                "search",
                "--space",
                str(space),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "secrets are not sent" in err and "abc123" not in err


def test_bad_space_is_caught_before_submitting(ray_head, token_env, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("params: {}\n")
    assert (
        main(["submit", "--address", ray_head["address"], "--", "search", "--space", str(path)])
        == 2
    )
    assert "invalid search space" in capsys.readouterr().err
