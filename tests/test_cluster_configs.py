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


def _python_tag() -> str:
    """"py311" for pyproject's `requires-python = ">=3.11"`."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
    return f"py{major}{minor}"


def test_aws_nodes_get_the_python_the_project_needs():
    """Every node runs Ray's image for the pinned Ray and pyproject's Python (the host AMI
    only runs Docker and the GPU driver): no `latest_dlami`, which Ray 2.60 resolves to a
    Deep Learning AMI on Ubuntu 18.04 without Python 3.11, where `pip install -e .` fails."""
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    docker = config["docker"]
    tag = f"{_ray_pin()}-{_python_tag()}"
    assert docker["image"] == f"rayproject/ray:{tag}-gpu"  # the workers: CUDA
    assert docker["head_image"] == f"rayproject/ray:{tag}"
    for name, node in config["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        assert image.lower() not in ("", "latest_dlami"), name
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-"), name
        assert "ubuntu-22.04" in image, name
    # The project is synced into the containers and installed with the container's pip.
    (mount,) = config["file_mounts"]
    assert config["file_mounts"][mount] == "." and mount.startswith("/home/ray/")
    assert any(f"pip install -q -e {mount}" in cmd for cmd in config["setup_commands"])
    # The dashboard stays on the head's loopback: `ray dashboard` forwards it through SSH.
    assert not any("dashboard-host" in cmd for cmd in config["head_start_ray_commands"])


def test_cluster_readme_says_how_to_reach_the_dashboard_and_build_the_image():
    readme = (CLUSTER / "README.md").read_text()
    assert "ray dashboard cluster/aws-gpu.yaml" in readme
    assert "ray job submit --address http://127.0.0.1:8265" in readme
    assert "docker build -f cluster/Dockerfile -t" in readme and "docker push" in readme
    assert "kubectl apply -f cluster/kuberay-rayjob.yaml" in readme
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"-{_python_tag()}-" in dockerfile.split("FROM ", 1)[1].split()[0]
