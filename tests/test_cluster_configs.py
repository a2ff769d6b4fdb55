"""The cluster configs in cluster/: valid for Ray's and KubeRay's formats, and consistent
with each other and with the project (same Ray everywhere, nothing local synced to nodes,
an image recipe that holds what the RayJob runs)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def _ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    match = re.search(r"==([0-9.]+)$", ray_dep)
    assert match, f"Ray must be pinned exactly in pyproject.toml: {ray_dep}"
    return match.group(1)


def test_pyproject_pins_the_installed_ray():
    assert _ray_pin() == ray.__version__


def test_aws_config_is_valid_for_ray_up_and_pins_ray():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert any(f"=={_ray_pin()}" in cmd for cmd in config["setup_commands"])
    for local in (".venv", "runs", "out", ".git"):
        assert local in config["rsync_exclude"], f"{local} would be synced to every node"


def test_dockerfile_builds_what_the_rayjob_runs():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([0-9.]+)-", dockerfile, re.M)
    assert base and base.group(1) == _ray_pin()
    for needed in ("jobs/", "configs/", "caeadmm/", "coding/", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}", dockerfile, re.M), needed
    assert "WORKDIR /app" in dockerfile


def test_rayjob_matches_kuberay_v1_and_the_image():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/train.py")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/app"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _ray_pin()
    pods = [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        (container,) = pod["spec"]["containers"]
        assert container["workingDir"] == "/app"
        assert container["envFrom"][0]["secretRef"]["name"]  # s3 credentials
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # The entrypoint's config must exist in the image (configs/ is copied to /app).
    config = re.search(r"--config (\S+)", spec["entrypoint"]).group(1)
    assert (ROOT / config).is_file()
