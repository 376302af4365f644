"""`sft-tune submit` and `sft-tune jobs`: run a command of this tool on a Ray cluster as a Ray Job.

The job runs from an uploaded copy of the user's project folder (the current folder, or
`--working-dir`; what goes into it: `sft_tune.upload`), so the command is checked locally as the
job will run it: its files relative to the project folder, and inside it. The local sft-tune
package goes with the job (Ray's `py_modules`) unless the cluster image has it
(`--cluster-sft-tune`); the job checks that it runs the submitted version (`sft_tune.jobenv`).
The Ray token comes from `--token-file`, `$RAY_AUTH_TOKEN`, `$RAY_AUTH_TOKEN_PATH` or
`~/.ray/auth_token`, travels only in the request's Authorization header, and is never printed,
logged or put into the job's runtime environment or metadata. Secret-like
environment variables (W&B keys included) are never forwarded either: configure them on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sft_tune.addresses import probe_address
from sft_tune.arguments import FORWARDED_ENV, SECRET_ENV_PARTS, build_parser
from sft_tune.errors import InputError, Problem, fail
from sft_tune.upload import build_package

PACKAGE_DIR = Path(__file__).resolve().parent  # the sft_tune package a job gets shipped
AGENT_WAIT_S = 60.0  # a fresh head refuses jobs ("No available agent") until its agent is up
LOG_TAIL_LINES = 40
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def read_token(token_file: Path | None = None) -> str:
    """The Ray token, from the first source that has one; `InputError` when none does."""
    if token_file is not None:
        if not Path(token_file).is_file():
            raise fail(
                "--token-file",
                str(token_file),
                "must be a readable file holding the cluster's Ray token",
                "pass the token file of the cluster (e.g. copied from the head's "
                "~/.ray/auth_token)",
            )
        return Path(token_file).read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip()
    raise fail(
        "Ray token",
        "(none found)",
        "the cluster uses token authentication (RAY_AUTH_MODE=token)",
        "set RAY_AUTH_TOKEN, or pass --token-file FILE",
    )


def client(address: str, token_file: Path | None = None):
    """A Job Submission client that authenticates with the token (and says so clearly when refused);
    the address and the token are checked before Ray is imported."""
    return connect(address, check_cluster(address, token_file))


def check_cluster(address: str, token_file: Path | None = None) -> str:
    """The token, once the address answers as a Ray dashboard; both problems at once."""
    problems, token = [], None
    try:
        probe_address("--address", address, http=True)
    except InputError as err:
        problems += err.problems
    try:
        token = read_token(token_file)
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(problems)
    return token


def connect(address: str, token: str):
    """The Job Submission client of a checked address and token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    except AuthenticationError:
        raise _refused(address) from None
    except ConnectionError as err:
        raise fail(
            "--address",
            address,
            f"must be a reachable Ray dashboard ({str(err).splitlines()[0][:200]})",
            "check the head's dashboard address (http://HEAD:8265) and that the cluster is up",
        ) from None


def _refused(address: str) -> InputError:
    return fail(
        "Ray token",
        "(hidden)",
        f"the cluster at {address} refused the token",
        "use the token of this cluster (RAY_AUTH_TOKEN or --token-file)",
    )


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs for the job; secrets are refused (they would land in job metadata)."""
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    env.setdefault("WANDB_MODE", "offline")
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(
                Problem("--env", pair, "must be KEY=VALUE", "write e.g. --env WANDB_MODE=online")
            )
        elif key not in FORWARDED_ENV and any(part in key.upper() for part in SECRET_ENV_PARTS):
            problems.append(
                Problem(
                    "--env",
                    f"{key}=(hidden)",
                    "secrets are not sent with a job (they would be visible in its runtime "
                    "environment);"
                    f" names containing {', '.join(SECRET_ENV_PARTS)} (any case) count as secrets",
                    f"set {key} on the cluster nodes instead (e.g. a Kubernetes Secret or the "
                    "node environment)",
                )
            )
        else:
            env[key] = value
    if problems:
        raise InputError(problems)
    return env


def check_command(command: list[str], root: Path | None = None) -> list[Path]:
    """Validate the command locally as the job will run it (from the uploaded copy of `root`), so a
    bad path, space or config fails before anything is sent; return the files the command reads."""
    if not command or command[0] not in ("search", "train", "select", "report"):
        raise fail(
            "command",
            command[:1],
            "must be one of: search, train, select, report (after `--`)",
            "e.g. sft-tune submit --address http://HEAD:8265 -- search --space "
            "search_spaces/alpha.yaml",
        )
    root = Path(root or Path.cwd()).resolve()
    args = _parse_command(command)
    if command[0] == "search" and (args.space is None) == (args.resume is None):
        raise fail(
            "--space / --resume",
            shlex.join(command),
            "give exactly one of --space FILE (new sweep) and --resume DIR (continue one)",
            "e.g. sft-tune submit ... -- search --space search_spaces/alpha.yaml",
        )
    if command[0] == "search" and args.space is not None:
        from sft_tune.runconfig import read_yaml
        from sft_tune.sweep.checks import load_space

        space = _job_path("--space", args.space, root)
        sweep = load_space(space)
        base = read_yaml(space, "search-space file").get("base")
        return [space, *([space.parent / base] if base else []), *_reads(sweep.base_config)]
    if command[0] == "train":
        from sft_tune.runconfig import load_config

        config = _job_path("--config", args.config, root)
        return [config, *_reads(load_config(config))]
    return []  # SWEEP_DIR and --resume DIR live on the cluster's storage: not checked here


def _parse_command(command: list[str]):
    """Parse the command with the CLI's own parser (both `--opt FILE` and `--opt=FILE` forms)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            return build_parser().parse_args(command)
    except SystemExit:
        reason = (said.getvalue().strip().splitlines() or ["unparsable"])[-1]
        raise fail(
            "command",
            shlex.join(command),
            f"must be valid arguments of `sft-tune {command[0]}` ({reason})",
            f"see `sft-tune {command[0]} --help`",
        ) from None


def _job_path(option: str, value: Path, root: Path) -> Path:
    """The file the job will read for `option`: the job runs from an uploaded copy of `root`, so a
    path must be relative to `root` (not to the current folder) and stay inside it."""
    job = (root / value).resolve()  # (an absolute `value` stays itself)
    inside = job.is_relative_to(root)
    if value.is_absolute() or not inside:
        raise fail(
            option,
            str(value),
            f"must be a path relative to the project folder {root}, which the job runs from"
            + (" (absolute local paths do not exist there)" if inside else ", and inside it"),
            f"pass {option} {job.relative_to(root)}"
            if inside
            else f"move or copy the file into {root} and pass its path relative to it",
        )
    if job.is_file():
        return job
    here = value.resolve()  # what was probably meant: relative to the current folder
    if here.is_file() and here.is_relative_to(root):
        fix = (
            f"pass {option} {here.relative_to(root)} (relative to the project folder, not to "
            "the current folder)"
        )
    elif here.is_file():
        fix = f"move or copy {here} into {root} and pass its path relative to it"
    else:
        fix = f"check the path: it is read relative to {root}"
    raise fail(
        option,
        str(value),
        f"must name a file in the project folder {root}, which the job runs from ({job} does not "
        "exist)",
        fix,
    )


def _reads(config) -> list[Path]:
    """The local files and folders a run config reads (data, and the model when it is local)."""
    data = config.data
    paths = [data.train, *([data.test] if data.test else []), *data.unlabelled]
    model = Path(config.model.name_or_path)
    return [Path(p) for p in paths] + ([model] if model.is_absolute() and model.exists() else [])


def submit(
    address: str,
    command: list[str],
    follow: bool = False,
    token_file: Path | None = None,
    pip: list[str] | None = None,
    env: list[str] | None = None,
    working_dir: Path | None = None,
    cluster_sft_tune: bool = False,
) -> int:
    """Submit `sft-tune COMMAND` as a Ray Job run from a copy of `working_dir` (default: the
    current folder), with the local sft-tune package (`cluster_sft_tune`: the image's, checked to
    be the same version); with `follow`, stream its logs and return its outcome. The command, the
    environment, the address and the token are checked first, every problem at once, before Ray
    is imported."""
    import sft_tune
    from sft_tune.jobenv import JOB_SOURCE_ENV, JOB_VERSION_ENV

    working_dir = Path(working_dir or Path.cwd()).resolve()
    if not working_dir.is_dir():
        raise fail(
            "--working-dir",
            str(working_dir),
            "must be an existing folder (the project the job runs from)",
            "pass your project folder, or run `sft-tune submit` from it",
        )
    found: dict[str, Any] = {}
    errors: list[InputError] = []
    for name, check in (
        ("reads", lambda: check_command(command, working_dir)),
        ("env", lambda: parse_env(env or [])),
        ("token", lambda: check_cluster(address, token_file)),
    ):
        try:
            found[name] = check()
        except InputError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputError([p for err in errors for p in err.problems])
    package = build_package(working_dir, found["reads"])
    jobs, job_env = connect(address, found["token"]), found["env"]
    print(package.summary())
    version = sft_tune.__version__
    print(
        f"sft-tune {version}: "
        + (
            "the cluster image's (checked in the job)"
            if cluster_sft_tune
            else f"shipped with the job from {PACKAGE_DIR}"
        )
    )
    job_env = {
        **job_env,
        JOB_VERSION_ENV: version,
        JOB_SOURCE_ENV: "cluster" if cluster_sft_tune else "shipped",
    }
    entrypoint = "python -m sft_tune " + shlex.join(command)
    with tempfile.TemporaryDirectory(prefix="sft-tune-job-") as folder:
        package.copy_to(Path(folder))
        runtime_env: dict[str, Any] = {"working_dir": folder, "env_vars": job_env}
        if not cluster_sft_tune:
            runtime_env["py_modules"] = [str(PACKAGE_DIR)]
        if pip:
            runtime_env["pip"] = list(pip)
        job_id = _submit_job(jobs, address, entrypoint, runtime_env, command[0])
    print(f"submitted job {job_id}: {entrypoint}")
    print(f"follow it: sft-tune jobs logs {job_id} --address {address} --follow")
    return follow_job(jobs, job_id) if follow else 0


def _submit_job(jobs, address: str, entrypoint: str, runtime_env: dict, name: str) -> str:
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                metadata={"tool": "sft-tune", "command": name},
            )
        except Exception as err:
            _reraise_refused(err, address)
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)  # the head is still starting its job agent


def follow_job(jobs, job_id: str) -> int:
    """Stream the job's logs until it ends; 0 when it SUCCEEDED, else 1 with its log tail."""

    async def stream() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(stream())
    except Exception as err:  # the log stream can drop; the status below is what counts
        print(f"(log stream ended: {type(err).__name__})", file=sys.stderr)
    return job_outcome(jobs, job_id)


def job_outcome(jobs, job_id: str, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    status = str(jobs.get_job_status(job_id))
    while status.split(".")[-1] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        status = str(jobs.get_job_status(job_id))
    status = status.split(".")[-1]
    print(f"job {job_id}: {status}")
    if status == "SUCCEEDED":
        return 0
    tail = jobs.get_job_logs(job_id).splitlines()[-LOG_TAIL_LINES:]
    print(f"last {len(tail)} log lines of job {job_id}:", *tail, sep="\n", file=sys.stderr)
    return 1


def jobs_command(
    action: str, job_id: str, address: str, token_file: Path | None = None, follow: bool = False
) -> int:
    """`sft-tune jobs status|logs|stop JOB_ID`."""
    jobs = client(address, token_file)
    try:
        if action == "status":
            info = jobs.get_job_info(job_id)
            print(
                f"job {job_id}: {str(info.status).split('.')[-1]}"
                + (f" ({info.message})" if info.message else "")
            )
            return 0
        if action == "logs":
            if follow:
                return follow_job(jobs, job_id)
            print(jobs.get_job_logs(job_id), end="")
            return 0
        stopped = jobs.stop_job(job_id)
        print(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    except RuntimeError as err:
        _reraise_refused(err, address)
        raise fail(
            "JOB_ID",
            job_id,
            f"must be a job of this cluster ({str(err).splitlines()[0][:200]})",
            "list jobs with `ray job list` or check the id printed by `sft-tune submit`",
        ) from None


def _reraise_refused(err: Exception, address: str) -> None:
    from ray.exceptions import AuthenticationError

    if (
        isinstance(err, AuthenticationError)
        or "401" in str(err)
        or "403" in str(err)
        or "Unauthorized" in str(err)
    ):
        raise _refused(address) from None
