"""Rebuild `kuberay-rayjob-v1.schema.json.gz` from KubeRay's RayJob CRD.

    git clone https://github.com/ray-project/kuberay
    python tests/schemas/refresh_kuberay.py kuberay/ray-operator/config/crd/bases/ray.io_rayjobs.yaml

The file keeps the CRD's `v1` OpenAPI schema as the API server sees it, without the
`description` texts (1.4 MB of YAML becomes 30 KB gzipped); the tests read it offline.
Vendored from kuberay commit feeaf72facab4881ba2b179248bb67315634e229 (2026-08-19)."""

import gzip
import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("kuberay-rayjob-v1.schema.json.gz")


def _without_descriptions(node):
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def main(crd_path: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _without_descriptions(v1["schema"]["openAPIV3Schema"])
    text = json.dumps(schema, indent=1, sort_keys=True).encode()
    OUT.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(f"{OUT}: {len(text)} bytes of schema")


if __name__ == "__main__":
    main(sys.argv[1])
