"""Every launch file loads, passes Ray's own cluster-config schema where Ray ships one, and keeps
token authentication on."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = sorted((ROOT / "launch").rglob("*.y*ml"))
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


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
        starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        ray_starts = [c for c in starts if "ray start" in c]
        assert ray_starts and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
        assert all("--dashboard-host=0.0.0.0" not in c for c in starts)
    elif config.get("kind") == "RayJob":
        assert config["apiVersion"] == "ray.io/v1"
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
    else:
        pytest.fail(f"{path} is neither a cluster launcher config nor a RayJob")
    assert "WANDB_API_KEY=" not in text and "auth_token:" not in text
