"""Every launch file loads, passes its schema (Ray's cluster-config schema for the cluster launcher,
KubeRay's RayJob CRD for the RayJob, with unknown fields refused as `kubectl apply
--validate=strict` does), and keeps token authentication on; the cluster launcher's head commands
start a token-auth head from a clean machine (run here against a real `ray start --head`, marked
`ray`)."""

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from jobs import RAY, free_port, job_env, running_head, short_temp_dir

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = sorted((ROOT / "launch").rglob("*.y*ml"))
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
# KubeRay's RayJob CRD (v1), vendored: tests/schemas/refresh_kuberay.py says from where and how.
RAYJOB_SCHEMA = ROOT / "tests" / "schemas" / "kuberay-rayjob-v1.schema.json.gz"


def _strict(schema):
    """The CRD's schema with unknown fields refused: the API server prunes fields that a
    structural schema does not name (or refuses them with strict field validation), where JSON
    Schema would let them pass. Objects that keep unknown fields say so."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def _validate_rayjob(config):
    schema = _strict(json.loads(gzip.decompress(RAYJOB_SCHEMA.read_bytes())))
    jsonschema.validate(config, schema)


def _load(path):
    return yaml.safe_load(path.read_text())


def test_launch_folder_has_a_cluster_launcher_config_and_a_rayjob():
    kinds = {("cluster" if "provider" in _load(p) else _load(p).get("kind")) for p in LAUNCH}
    assert {"cluster", "RayJob"} <= kinds


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_every_launch_file_is_valid_and_uses_token_auth(path):
    config = _load(path)
    assert isinstance(config, dict)
    text = path.read_text()
    if "provider" in config:  # Ray cluster launcher
        jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
        # Every node type reaches S3 through an instance profile (the launcher gives workers none).
        for node in config["available_node_types"].values():
            assert node["node_config"]["IamInstanceProfile"]
        assert not any("pip install -e" in c for c in config["setup_commands"])
        assert f'"sft-tune=={VERSION}"' in " ".join(config["setup_commands"])
        starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        ray_starts = [c for c in starts if "ray start" in c]
        assert ray_starts and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
        assert all("--dashboard-host=0.0.0.0" not in c for c in starts)
    elif config.get("kind") == "RayJob":
        assert config["apiVersion"] == "ray.io/v1"
        _validate_rayjob(config)
        spec = config["spec"]
        assert spec["entrypoint"].startswith("sft-tune search --space ")
        assert (ROOT / spec["entrypoint"].split("--space ")[1].split()[0]).is_file()
        cluster = spec["rayClusterSpec"]
        pods = (
            [cluster["headGroupSpec"]["template"]]
            + [g["template"] for g in cluster["workerGroupSpecs"]]
            + [spec["submitterPodTemplate"]]
        )
        for pod in pods:
            for container in pod["spec"]["containers"]:
                env = {e["name"]: e for e in container["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token"
                assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # never inline
        assert any(
            "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
            for g in cluster["workerGroupSpecs"]
        )
        # Workers scale (KubeRay's autoscaler), reach S3 (a Secret or the service account's
        # role), and have a memory-backed /dev/shm; the image is the Dockerfile's.
        assert cluster["enableInTreeAutoscaling"] is True
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for pod in pods[:-1]:
            volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
            (container,) = pod["spec"]["containers"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            env = {e["name"]: e for e in container["env"]}
            s3 = env.get("AWS_SECRET_ACCESS_KEY", {}).get("valueFrom", {}).get("secretKeyRef")
            assert s3 or pod["spec"].get("serviceAccountName")
            assert container["image"] == DOCKER_IMAGE
        assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"] == DOCKER_IMAGE
    else:
        pytest.fail(f"{path} is neither a cluster launcher config nor a RayJob")
    assert "WANDB_API_KEY=" not in text and "auth_token:" not in text


# slow: a JSON-schema check of the whole CRD, ~6 s a case
@pytest.mark.slow
@pytest.mark.parametrize(
    "where, field",
    [
        (("spec", "rayClusterSpec"), "enableInTreeAutoscalling"),  # a typo, pruned silently
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "maxReplica"),
        (("spec", "submitterPodTemplate", "spec", "containers", 0), "workDir"),
    ],
)
def test_the_rayjob_schema_check_refuses_fields_kuberay_does_not_know(where, field):
    """The schema check is strict: a misspelt field (which Kubernetes would drop without a word)
    fails it, while the launch file as written passes."""
    config = _load(ROOT / "launch" / "kuberay-rayjob.yaml")
    _validate_rayjob(config)
    node = config
    for key in where:
        node = node[key]
    node[field] = True
    with pytest.raises(jsonschema.ValidationError, match=re.escape(field)):
        _validate_rayjob(config)


VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
DOCKERFILE = ROOT / "launch" / "Dockerfile"
DOCKER_IMAGE = f"ghcr.io/example/sft-tune:{VERSION}"


def test_the_dockerfile_builds_the_rayjobs_image_with_this_sft_tune_and_no_secrets():
    """The image the RayJob names is the one the Dockerfile's comment builds: Ray's image at the
    RayJob's Ray version, sft-tune at this version, the project under /app (the RayJob's working
    directory), and a Dockerfile-specific ignore file keeps secrets and local results out."""
    text = DOCKERFILE.read_text()
    rayjob = _load(ROOT / "launch" / "kuberay-rayjob.yaml")
    ray_version = rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py3\d+-gpu$", text, re.M)
    assert re.search(rf"^ARG SFT_TUNE_VERSION={re.escape(VERSION)}$", text, re.M)
    assert 'pip install --no-cache-dir "sft-tune==${SFT_TUNE_VERSION}"' in text
    assert re.search(r"^WORKDIR /app$", text, re.M) and re.search(r"^COPY .* /app$", text, re.M)
    assert f"-t {DOCKER_IMAGE} ." in text
    ignored = (ROOT / "launch" / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".env", ".ray-token/", "**/*.pem", "**/*token*", "!**/tokenizer*", "runs/"):
        assert pattern in ignored


def _sandboxed(command: str, port: int, dashboard: int, temp_dir: Path) -> str:
    """A head start command of the launch config, adapted to this machine: a free port, the
    dashboard on a free port, a private temp dir, no autoscaler (it would call AWS), and `--block`
    so that the test owns the head's processes."""
    assert "--port=6379" in command and "--autoscaling-config=" in command, command
    command = command.replace("--port=6379", f"--port={port}")
    command = re.sub(r"--autoscaling-config=\S+", "", command)
    return f"{command} --dashboard-port={dashboard} --temp-dir={temp_dir} --num-cpus=1 --block"


@pytest.mark.ray
def test_aws_head_commands_start_a_token_auth_head_on_a_clean_machine(tmp_path):
    """The head's start commands, run as written (but `ray stop`) under an empty HOME: they must
    create the token, start a token-auth head, and hand the workers a token file that works."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    config = _load(ROOT / "launch" / "aws-gpu-cluster.yaml")
    home = tmp_path / "home"
    home.mkdir()
    env = job_env(HOME=str(home))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)  # a clean machine: no token anywhere but what the commands make
    port, dashboard = free_port(), free_port()
    # `ray stop` ends every Ray process on the machine (other people's too): never run it here.
    commands = [c for c in config["head_start_ray_commands"] if c.strip() != "ray stop"]
    (start,) = [i for i, c in enumerate(commands) if "ray start" in c]
    for command in commands[:start]:
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.strip()) == 0  # the token is never printed into `ray up`'s log
    token_file = home / ".ray" / "auth_token"
    assert token_file.is_file() and oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = token_file.read_text().strip()
    temp_dir = short_temp_dir()
    sandboxed = _sandboxed(commands[start], port, dashboard, temp_dir)
    try:
        with running_head(sandboxed, env, tmp_path / "head.log"):
            for command in commands[start + 1 :]:
                done = subprocess.run(["bash", "-c", command], env=env, capture_output=True)
                assert done.returncode == 0, done.stderr
            address = f"http://127.0.0.1:{dashboard}"
            headers = {"Authorization": f"Bearer {token}"}
            assert JobSubmissionClient(address, headers=headers).list_jobs() == []
            with pytest.raises(AuthenticationError):  # a client without the token is refused
                JobSubmissionClient(address).list_jobs()
            # A worker's view: a home holding only the synced ~/sft-tune, and the worker start
            # command's RAY_AUTH_* settings.
            worker_home = tmp_path / "worker-home"
            shutil.copytree(home / "sft-tune", worker_home / "sft-tune")
            (worker,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
            worker_env = dict(re.findall(r"(RAY_AUTH_\w+)=(\S+)", worker))
            worker_env = {k: v.replace("~", str(worker_home), 1) for k, v in worker_env.items()}
            assert Path(worker_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip() == token
            status = [RAY, "status", f"--address=127.0.0.1:{port}"]
            worker_env = {**env, "HOME": str(worker_home), **worker_env}
            done = subprocess.run(status, env=worker_env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)}
            done = subprocess.run(status, env=wrong, capture_output=True, text=True)
            assert done.returncode != 0 and "InvalidAuthToken" in done.stdout + done.stderr
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
