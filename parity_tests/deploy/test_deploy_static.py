"""deploy/ checked statically (no docker, no cluster here): each Kubernetes overlay rendered by
``kubectl kustomize`` and every object validated against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict) and checked by checkov's policies, the Dockerfile linted by hadolint
and checkov, and the wiring between the
files checked: probes on the paths and port tritonserver serves, the HPA's metric the one the
adapter rule makes, the entrypoint's server flags the launcher's. The tools live in
.venv-deploy-tools (scripts/install_deploy_tools.sh, which scripts/test.sh runs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from parity_support import ROOT

from escnet_export.triton_serving.server import DEFAULT_HTTP_PORT, SERVER_FLAGS

DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".venv-deploy-tools" / "bin"
KUBERNETES_VERSION = "1.33.0"  # the oldest release the manifests target
OVERLAYS = ("cpu", "gpu")
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # no schema in Kubernetes'

needs_tools = pytest.mark.skipif(
    not (TOOLS / "kubectl").is_file(),
    reason="deploy tools not installed: run bash scripts/install_deploy_tools.sh (.venv-deploy-tools)",
)


def render(overlay: str) -> list[dict]:
    done = subprocess.run(
        [str(TOOLS / "kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


@needs_tools
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    kinds = sorted(o["kind"] for o in objects)
    print(f"\n[deploy] {overlay}: {kinds}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(kinds)
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_RESOURCES]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    done = subprocess.run(
        [str(TOOLS / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(builtin), done.stdout
    monitor = by_kind(objects, "ServiceMonitor")  # a custom resource: its fields checked here
    ports = {p["name"] for p in by_kind(objects, "Service")["spec"]["ports"]}
    assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


@needs_tools
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_scaling_and_resources_are_wired(overlay: str) -> None:
    objects = render(overlay)
    deployment = by_kind(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == DEFAULT_HTTP_PORT
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert len(env) == len(container["env"]), "an environment variable set twice"
    if overlay == "gpu":
        assert gpus == 1 and env["ESCNET_ACCELERATOR"] == "tensorrt"
    else:
        assert gpus is None and (env["ESCNET_RUNTIME"], env["ESCNET_ACCELERATOR"]) == (
            "onnxruntime_onnx",
            "cpu",
        )
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    adapter = by_kind(objects, "ConfigMap")
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@needs_tools
def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(TOOLS / "hadolint"), str(DEPLOY / "container" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Checks skipped on purpose, each justified where it is skipped (a checkov.io/skip annotation).
CHECKOV_SKIPPED = {"CKV_K8S_43"}  # image by digest: the image is the user's own build


@needs_tools
def test_manifests_and_dockerfile_pass_checkov(tmp_path: Path) -> None:
    """checkov's Kubernetes policies on both rendered overlays, its Dockerfile policies on the image;
    the only skipped checks are the listed ones, each with its reason in the manifest."""
    import json

    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render(overlay)))
    runs = (
        ["-d", str(tmp_path), "--framework", "kubernetes"],
        ["-f", str(DEPLOY / "container" / "Dockerfile"), "--framework", "dockerfile"],
    )
    for args in runs:
        done = subprocess.run(
            [str(TOOLS / "checkov"), *args, "--output", "json", "--skip-download"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        report = json.loads(done.stdout)
        results = report["results"]
        failed = [(c["check_id"], c["resource"]) for c in results.get("failed_checks", [])]
        skipped = {
            c["check_id"]: c["check_result"].get("suppress_comment")
            for c in results.get("skipped_checks", [])
        }
        print(f"\n[deploy] checkov {args[-1]}: {report['summary']}; skipped {skipped}")
        assert done.returncode == 0 and not failed, failed
        assert report["summary"]["passed"] > 0
        assert set(skipped) <= CHECKOV_SKIPPED and all(skipped.values()), skipped


def test_entrypoint_and_compose_match_the_launcher() -> None:
    """The container's tritonserver flags are the launcher's; compose gives the Python backend
    shared memory and publishes the three ports; the entrypoint is valid bash."""
    entrypoint = (DEPLOY / "container" / "entrypoint.sh").read_text()
    for flag in SERVER_FLAGS:
        assert flag.replace("=*", "='*'") in entrypoint, flag
    assert subprocess.run(["bash", "-n", str(DEPLOY / "container" / "entrypoint.sh")]).returncode == 0
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    [service] = compose["services"].values()
    assert service["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
    assert service["shm_size"].endswith("gb") and int(service["shm_size"][:-2]) >= 1
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text()
    assert dockerfile.count("ARG TRITON_TAG=") == 1 and "tritonserver:${TRITON_TAG}-py3" in dockerfile


def test_grafana_dashboard_reads_the_metrics_the_server_publishes() -> None:
    """Every panel queries a metric family that Triton (nv_*) or our steps (escnet_step_*,
    step_models/metrics.py) publish."""
    import json
    import re

    dashboard = json.loads((DEPLOY / "k8s" / "grafana-dashboard.json").read_text())
    steps = (ROOT / "export" / "triton_serving" / "step_models" / "metrics.py").read_text()
    ours = set(re.findall(r'^    "(escnet_\w+)": \(', steps, re.MULTILINE))  # metrics.FAMILIES
    assert len(ours) == 7
    histograms = {f"{f}_{part}" for f in ours for part in ("bucket", "sum", "count")}
    names = {"ESC-Net", "escnet", "catseg"}
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            families = set(re.findall(r"\b((?:nv|escnet)_\w+)\{?", target["expr"]))
            assert families, panel["title"]
            known = ours | histograms
            assert all(f.startswith("nv_") or f in known for f in families), (panel["title"], families)
            queried |= families
    assert {f for f in ours if f in queried or f"{f}_bucket" in queried} == ours, "a family of ours not shown"
    assert {o["value"] for o in dashboard["templating"]["list"][1]["options"]} <= names
