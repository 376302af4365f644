"""`sft-tune submit` against a real local Ray head with token authentication (marked `ray`), and
its local checks (no Ray)."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_config_dict, write_space
from jobs import RAY, SECRET_DECOYS, free_port, job_env, make_project, running_head, short_temp_dir

from sft_tune.cli import main
from sft_tune.errors import InputError
from sft_tune.submit import check_command, parse_env, submit
from sft_tune.upload import is_secret

TINY_SPACE = "search_spaces/tiny.yaml"  # tracked, passes the local check (its data are not read)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head started with `ray start --block`, token auth on, dashboard on loopback, its own
    temp dir; stopped through its process group (never `ray stop`)."""
    folder = tmp_path_factory.mktemp("head")
    token = secrets.token_hex(32)
    (folder / "token").write_text(token)
    temp_dir = short_temp_dir()
    port, dashboard = free_port(), free_port()
    start = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    env = job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        with running_head(start, env, folder / "head.log"):
            yield {
                "address": f"http://127.0.0.1:{dashboard}",
                "token": token,
                "token_file": folder / "token",
                "temp_dir": temp_dir,
            }
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def token_env(ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head["token"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _unpacked(ray_head, job_id: str) -> Path:
    """The job's working directory as the head unpacked it (from the package Ray received)."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(
        ray_head["address"], headers={"Authorization": f"Bearer {ray_head['token']}"}
    ).get_job_info(job_id)
    package = info.runtime_env["working_dir"].rsplit("/", 1)[-1].removesuffix(".zip")
    (folder,) = ray_head["temp_dir"].glob(
        f"session_2*/runtime_resources/working_dir_files/{package}"
    )
    return folder


@pytest.mark.ray
def test_submitted_search_uploads_tracked_and_needed_files_never_secrets(
    ray_head, token_env, tiny_bert, tmp_path, capsys
):
    project = tmp_path / "project"
    data = make_project(project)  # data untracked (git-ignored), read through relative paths
    write_space(project, tiny_bert, data, "submitted", num_trials=1, scheduler="none")
    code = submit(
        ray_head["address"],
        ["search", "--space", "submitted.yaml"],
        follow=True,
        working_dir=project,
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "submitted job" in out.out and "SUCCEEDED" in out.out
    assert ray_head["token"] not in out.out + out.err  # the token is never printed
    expected = {
        "notes.md",
        "vocab/tokenizer.json",
        "submitted.yaml",
        *(p.as_posix() for p in data.values()),
    }
    size = sum((project / name).stat().st_size for name in expected)
    assert f"uploading {len(expected)} files ({size / 1024:.1f} KiB)" in out.out
    largest = max(expected, key=lambda name: (project / name).stat().st_size)
    assert f"largest: {largest} (" in out.out and "scratch.txt" in out.out
    assert "names that look like secrets: .env" in out.out  # tracked, and still left out
    job_id = out.out.split("submitted job ")[1].split(":")[0]
    unpacked = {
        p.relative_to(folder).as_posix()
        for folder in [_unpacked(ray_head, job_id)]
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert expected <= unpacked  # the job read its data from there and succeeded
    assert not set(SECRET_DECOYS) & unpacked and not any(is_secret(name) for name in unpacked)
    assert "scratch.txt" not in unpacked  # untracked and not read by the command
    folder = project / "sweeps" / "submitted"
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["COMPLETE"]
    assert (folder / "best_model" / "config.json").is_file() and (
        folder / "best_model" / "best.json"
    ).is_file()
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


@pytest.mark.ray
def test_a_failing_job_exits_non_zero_with_its_log_tail(
    ray_head, token_env, tiny_bert, tmp_path, capsys
):
    project = tmp_path / "project"
    data = make_project(project)
    raw = run_config_dict(tiny_bert, {**data, "train": Path("missing.csv")}, tmp_path / "out")
    (project / "cfg.yaml").write_text(yaml.safe_dump(raw))
    code = submit(
        ray_head["address"], ["train", "--config=cfg.yaml"], follow=True, working_dir=project
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "log lines of job" in err and "missing.csv" in err


@pytest.mark.ray
def test_wrong_or_missing_token_is_refused_clearly(ray_head, tmp_path, monkeypatch, capsys):
    (tmp_path / "wrong").write_text("not-the-token")
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    command = ["--", "search", "--space", TINY_SPACE]
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
    out = capsys.readouterr()
    assert "refused the token" in out.err and "submitted job" not in out.out
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    assert main(["submit", "--address", ray_head["address"], *command]) == 2
    out = capsys.readouterr()
    assert "RAY_AUTH_TOKEN" in out.err and "--token-file" in out.err
    assert "submitted job" not in out.out  # nothing was sent


@pytest.mark.ray
def test_secrets_are_not_sent_with_a_job(ray_head, token_env, capsys):
    command = ["--", "search", "--space", TINY_SPACE]
    env = ["--env", "WANDB_API_KEY=abc123"]
    assert main(["submit", "--address", ray_head["address"], *env, *command]) == 2
    err = capsys.readouterr().err
    assert "secrets are not sent" in err and "abc123" not in err


@pytest.mark.parametrize(
    "name",
    [
        "WANDB_API_KEY",
        "wandb_api_key",
        "DB_PASSWORD",
        "WANDB_PASSWORD",
        "NETRC",
        "MY_APIKEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "HF_TOKEN",
        "RAY_AUTH_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SMTP_PASSWD",
        "basic_auth",
    ],
)
def test_secret_environment_variables_are_refused(name):
    with pytest.raises(InputError) as err:
        parse_env([f"{name}=s3cr3t"])
    message = str(err.value)
    assert "--env" in message and f"{name}=(hidden)" in message and "s3cr3t" not in message
    assert "secrets are not sent" in message and f"set {name} on the cluster nodes" in message


@pytest.mark.parametrize(
    "name",
    [
        "WANDB_MODE",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "TOKENIZERS_PARALLELISM",
        "OMP_NUM_THREADS",
    ],
)
def test_plain_environment_variables_are_forwarded(name):
    assert parse_env([f"{name}=1"])[name] == "1"


def _paths_project(root: Path, tiny_bert: Path) -> None:
    """A project with a valid config and space under configs/, a bad one of each, and a
    subfolder."""
    data = make_project(root)
    raw = run_config_dict(tiny_bert, {k: Path("..") / p for k, p in data.items()}, root / "out")
    (root / "configs").mkdir()
    (root / "configs" / "run.yaml").write_text(yaml.safe_dump(raw))
    (root / "configs" / "bad.yaml").write_text("model: {}\n")
    write_space(root / "configs", tiny_bert, {k: Path("..") / p for k, p in data.items()}, "space")
    (root / "configs" / "badspace.yaml").write_text("params: {}\n")
    (root / "sub").mkdir()


@pytest.mark.parametrize(
    "option, good, bad",
    [("--config", "run.yaml", "bad.yaml"), ("--space", "space.yaml", "badspace.yaml")],
)
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_check_command_reads_paths_as_the_job_does_in_both_forms(
    tmp_path, tiny_bert, monkeypatch, option, good, bad, form
):
    root = tmp_path / "project"
    _paths_project(root, tiny_bert)
    command = "train" if option == "--config" else "search"

    def check(path: str) -> list[Path]:
        argument = [option, path] if form == "separate" else [f"{option}={path}"]
        return check_command([command, *argument], root)

    monkeypatch.chdir(root / "sub")  # the job runs from the project root, not from here
    reads = check(f"configs/{good}")
    assert reads[0] == (root / "configs" / good).resolve()
    assert (root / "data" / "train.csv").resolve() in reads  # its data, resolved for the upload
    with pytest.raises(InputError, match="invalid"):  # checked, in both forms
        check(f"configs/{bad}")
    monkeypatch.chdir(root / "configs")
    with pytest.raises(InputError) as err:  # fine from here, but not where the job runs
        check(good)
    assert f"got '{good}'" in str(err.value) and f"pass {option} configs/{good}" in str(err.value)
    for outside in (str(tmp_path / "elsewhere.yaml"), "../../elsewhere.yaml"):
        (tmp_path / "elsewhere.yaml").write_text((root / "configs" / good).read_text())
        with pytest.raises(InputError) as err:
            check(outside)
        assert option in str(err.value) and "move or copy the file into" in str(err.value)
    with pytest.raises(InputError) as err:  # an absolute path inside the project
        check(str(root / "configs" / good))
    assert f"pass {option} configs/{good}" in str(err.value)


def test_submit_exits_2_on_a_path_the_job_would_not_find(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no token: the check must come first anyway
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(ROOT / "search_spaces")  # the project is ROOT, named with --working-dir
    address = f"http://127.0.0.1:{free_port()}"
    project = ["--working-dir", str(ROOT)]
    for argument in (["--space", "tiny.yaml"], ["--space=tiny.yaml"]):
        assert main(["submit", "--address", address, *project, "--", "search", *argument]) == 2
        err = capsys.readouterr().err
        assert "--space: got 'tiny.yaml'" in err and f"pass --space {TINY_SPACE}" in err
    assert (
        main(["submit", "--address", address, *project, "--", "train", "--config=no/such.yaml"])
        == 2
    )
    assert re.search(
        r"--config: got 'no/such\.yaml'; must name a file in the project folder",
        capsys.readouterr().err,
    )


def test_bad_space_is_caught_before_submitting(tmp_path):
    make_project(tmp_path / "project")
    (tmp_path / "project" / "bad.yaml").write_text("params: {}\n")
    with pytest.raises(InputError) as caught:
        submit(
            "http://127.0.0.1:9",
            ["search", "--space", "bad.yaml"],
            working_dir=tmp_path / "project",
        )
    # The space's problem and the address's, in one message (nothing was sent).
    assert [p.where for p in caught.value.problems] == ["base / config", "--address"]


WHEEL_VERSION = "0.1.0+wheeltest"  # a version the head's own (editable) sft-tune does not have


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A venv where sft-tune is installed from a wheel (built from a copy of this source with its
    own version), not editable: a user's `pip install sft-tune`. Its other packages come from the
    test venv's site-packages (a path entry, so the test venv's editable sft-tune is not seen)."""
    import sysconfig
    import venv

    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(
        ROOT / "sft_tune", source / "sft_tune", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "README.md", source / "README.md")
    pyproject = (
        (ROOT / "pyproject.toml")
        .read_text()
        .replace('version = "0.1.0"', f'version = "{WHEEL_VERSION}"', 1)
    )
    (source / "pyproject.toml").write_text(pyproject)
    init = source / "sft_tune" / "__init__.py"
    init.write_text(init.read_text().replace('"0.1.0"', f'"{WHEEL_VERSION}"'))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(folder / "dist"), str(source)], check=True, capture_output=True
    )
    (wheel,) = (folder / "dist").glob("sft_tune-*.whl")
    env_dir = folder / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    return python


@pytest.mark.ray
def test_a_wheel_installed_sft_tune_submits_the_users_project_with_itself(
    ray_head, token_env, wheel_venv, tiny_bert, tmp_path
):
    """From a user's project folder (not a clone of sft-tune), the wheel-installed sft-tune submits
    `train`: the job runs that project's config and data with the shipped sft-tune, not the
    head's own. With --cluster-sft-tune the job uses the head's, whose version differs: it stops
    before training, saying so."""
    where = subprocess.run(
        [str(wheel_venv), "-c", "import sft_tune; print(sft_tune.__version__, sft_tune.__file__)"],
        cwd=tmp_path,  # (from the source folder, `python -c` would import its sft_tune)
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(WHEEL_VERSION) and str(wheel_venv.parents[1]) in where
    project = tmp_path / "my-project"
    data = make_project(project)
    raw = run_config_dict(tiny_bert, data, Path("out"))
    (project / "cfg.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RAY_AUTH_TOKEN": ray_head["token"]}
    submit_train = [
        str(wheel_venv),
        "-m",
        "sft_tune",
        "submit",
        "--address",
        ray_head["address"],
        "--follow",
    ]
    done = subprocess.run(
        [*submit_train, "--", "train", "--config", "cfg.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        f"sft-tune {WHEEL_VERSION}, shipped with the job (the cluster image has sft-tune 0.1.0)"
        in done.stdout
    )
    assert "/out/model)" in done.stdout  # the project's own config trained and exported its model

    refused = subprocess.run(
        [*submit_train, "--cluster-sft-tune", "--", "train", "--config", "cfg.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 1
    said = refused.stdout + refused.stderr
    assert f"submitted with sft-tune {WHEEL_VERSION}, and the cluster runs sft-tune 0.1.0" in said
    assert "/out/model)" not in said  # nothing trained
