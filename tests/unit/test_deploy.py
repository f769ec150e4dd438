"""deploy/ stays in step with the app: we cannot run Docker in CI, so read the files instead.

Env var names are taken from the pydantic settings classes themselves, so a compose file or
Dockerfile that sets a variable the app does not read (a typo, a renamed setting) fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from stream_app.core.config import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
APP_PREFIXES = ("KAFKA_", "REDIS_", "WINDOW_", "BATCH_", "MODEL_", "WORKER_", "PRIVACY_")
# Read with os.environ directly (not settings) by the app or its libraries, on purpose.
NON_SETTINGS_VARS = {"INTENT_STREAM_CACHE"}
WORKERS = ("worker", "worker-gpu")
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def settings_env_vars(keep: Callable[[FieldInfo], bool] = lambda field: True) -> set[str]:
    """The environment variable of every setting (of those ``keep`` selects)."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        section = field.annotation
        assert isinstance(section, type)
        assert issubclass(section, BaseSettings)
        prefix = section.model_config.get("env_prefix", "")
        names |= {f"{prefix}{name}".upper() for name, f in section.model_fields.items()
                  if keep(f)}  # fmt: skip
    return names


def _dotenv_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in _lines(DEPLOY / ".env.example") if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` against ``env``."""

    def replace(match: re.Match[str]) -> str:
        value = env.get(match["name"], "")
        if value or match["op"] is None:
            return value
        if match["op"].endswith("?"):
            raise AssertionError(f"compose needs {match['name']}: {match['arg']}")
        return match["arg"]

    return _INTERPOLATION.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    """Like compose: parse the YAML first, then interpolate every string value."""
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(value, env) for value in node]
    return _interpolate(node, env) if isinstance(node, str) else node


def _load_compose(env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text("utf-8"))
    loaded = _interpolate_tree(raw, env)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose(_dotenv_example())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


def test_stack_has_the_production_services(services: dict[str, Any]) -> None:
    expected = {"kafka", "topic-init", "redis", "worker", "worker-gpu", "prometheus", "grafana"}
    assert expected <= services.keys()


def test_settings_env_vars_are_discovered() -> None:
    names = settings_env_vars()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MODEL_BACKEND", "BATCH_MAX_SIZE"} <= names


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_env_vars_are_read_by_the_app(services: dict[str, Any], worker: str) -> None:
    env = _env(services[worker])
    unknown = {name for name in env if name not in settings_env_vars() | NON_SETTINGS_VARS}
    assert not unknown, f"{worker} sets variables the app never reads: {sorted(unknown)}"


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_env_values_pass_validation(
    services: dict[str, Any], worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in settings_env_vars():
        monkeypatch.delenv(name, raising=False)
    for name, value in _env(services[worker]).items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert not settings.kafka.embedded
    assert not settings.redis.embedded
    assert settings.redis.password.get_secret_value()
    assert settings.worker.web_host == "0.0.0.0"  # scraped from other containers


def test_workers_depend_on_healthy_servers_and_created_topics(services: dict[str, Any]) -> None:
    for worker in WORKERS:
        depends = services[worker]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["topic-init"]["condition"] == "service_completed_successfully"
    assert services["topic-init"]["restart"] == "no"


def test_topic_init_creates_the_topics_the_workers_use(services: dict[str, Any]) -> None:
    init = services["topic-init"]
    script = "\n".join(init["entrypoint"])
    worker_env = _env(services["worker"])
    for variable in ("KAFKA_EVENTS_TOPIC", "KAFKA_SCORES_TOPIC", "KAFKA_DLQ_TOPIC"):
        assert f"create {worker_env[variable]} " in script
    assert "create intent-triggers " in script  # the trigger worker's output topic
    assert "--if-not-exists" in script
    assert _env(init)["EVENTS_PARTITIONS"] == worker_env["KAFKA_PARTITIONS"]
    replicas = services["worker"]["deploy"]["replicas"]
    assert 2 <= replicas <= int(worker_env["KAFKA_PARTITIONS"]), "idle workers past partitions"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name != "topic-init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_healthcheck_hits_the_readiness_page(services: dict[str, Any], worker: str) -> None:
    check = " ".join(services[worker]["healthcheck"]["test"])
    port = _env(services[worker])["WORKER_WEB_PORT"]
    assert f"127.0.0.1:{port}/readyz" in check


def test_gpu_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    env = _env(gpu)
    assert env["MODEL_BACKEND"] in {"tensorrt", "torch"}
    assert env["MODEL_DEVICE"].startswith("cuda")
    assert "profiles" not in services["worker"], "CPU workers run without a profile"


def test_kafka_is_kraft_and_advertises_what_workers_bootstrap_from(
    services: dict[str, Any],
) -> None:
    kafka = _env(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["CLUSTER_ID"]
    bootstrap = _env(services["worker"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_redis_requires_a_password_and_persists(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server", "keeps the image entrypoint's privilege drop"
    password = _env(services["worker"])["REDIS_PASSWORD"]
    assert command[command.index("--requirepass") + 1] == password
    assert command[command.index("--appendonly") + 1] == "yes"
    assert _env(redis)["REDISCLI_AUTH"] == password  # the health check authenticates
    assert "/data" in " ".join(redis["volumes"])


def test_compose_refuses_to_start_without_a_redis_password() -> None:
    with pytest.raises(AssertionError, match="REDIS_PASSWORD"):
        _load_compose({})


def test_prometheus_scrapes_every_worker_service(services: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text("utf-8"))
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted
    targets = {
        (name, sd["port"], job["metrics_path"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    for worker in WORKERS:
        port = int(_env(services[worker])["WORKER_WEB_PORT"])
        assert (worker, port, "/metrics") in targets


def test_prometheus_loads_the_alert_rules(services: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text("utf-8"))
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml" in mounted


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/intent-stream.json").read_text("utf-8"))
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def test_grafana_dashboard_shows_what_operators_need() -> None:
    joined = {title: " ".join(exprs) for title, exprs in _dashboard_exprs().items()}
    wanted = {
        "throughput": "intent_events_in_total",
        "lag": "kafka_consumergroup_lag",
        "batch": "intent_score_batch_size_bucket",
        "latency": "histogram_quantile(0.99, sum by (le) (rate(intent_e2e_latency_seconds",
        "dead letters": "sum by (reason) (rate(intent_dlq_total",
        "pending": "intent_pending_sessions",
        "model": "intent_inference_seconds_bucket",
    }
    for topic, needle in wanted.items():
        assert any(needle in expr for expr in joined.values()), f"no panel for {topic}"


def test_dashboard_and_alert_metrics_exist() -> None:
    from stream_app.core import metrics

    exported = {
        name
        for family in metrics.REGISTRY.collect()
        for name in (family.name, f"{family.name}_total", f"{family.name}_bucket")
    }
    # From the Kafka lag exporter, and the model circuit breaker of the failure policy.
    external = {"kafka_consumergroup_lag", "intent_model_breaker_open"}
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text("utf-8"))
    rules = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    for exprs in [*_dashboard_exprs().values(), rules]:
        for name in re.findall(r"\b(?:intent|kafka)_[a-z0-9_]+", " ".join(exprs)):
            assert name in exported | external, name


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    mounts = " ".join(grafana["volumes"])
    assert "./grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/intent-stream.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# --------------------------------------------------------------------------- Dockerfiles


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (DEPLOY / dockerfile).read_text("utf-8")
    joined = re.sub(r"\\\n\s*", " ", "\n".join(_lines_no_comments(text)))
    pairs = (line.strip().split(None, 1) for line in joined.splitlines() if line.strip())
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in pairs]


def _lines_no_comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def _last(instructions: list[tuple[str, str]], name: str) -> str:
    values = [args for instruction, args in instructions if instruction == name]
    assert values, f"no {name} instruction"
    return values[-1]


def _env_names(instructions: list[tuple[str, str]]) -> set[str]:
    env_args = " ".join(args for instruction, args in instructions if instruction == "ENV")
    return set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", env_args))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_runs_the_worker_as_non_root_with_a_healthcheck(dockerfile: str) -> None:
    instructions = _instructions(dockerfile)
    assert _last(instructions, "CMD") == '["intent-stream", "worker"]'
    healthcheck = _last(instructions, "HEALTHCHECK")
    assert "/readyz" in healthcheck
    assert "WORKER_WEB_PORT" in healthcheck
    assert _last(instructions, "USER") not in {"root", "0"}
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "intent-stream build-model" in runs


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_env_vars_are_read_by_the_app(dockerfile: str) -> None:
    names = {n for n in _env_names(_instructions(dockerfile)) if n.startswith(APP_PREFIXES)}
    assert names, "the image should configure the worker (MODEL_DIR, WORKER_WEB_HOST, ...)"
    assert names <= settings_env_vars(), sorted(names - settings_env_vars())


def test_cpu_image_is_slim_python_with_cpu_torch() -> None:
    instructions = _instructions("Dockerfile")
    args = " ".join(a for i, a in instructions if i in {"ARG", "FROM"})
    assert "python:3.11-slim" in args
    assert "download.pytorch.org/whl/cpu" in args


def _stages(dockerfile: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in _instructions(dockerfile):
        if instruction == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        current.append((instruction, args))
    return stages


def test_cpu_runtime_stage_installs_only_the_runtime_dependencies_and_the_api() -> None:
    stages = _stages("Dockerfile")
    runtime = " ".join(a for i, a in stages["runtime"] if i == "RUN")
    assert 'pip install ".[api]" ' in runtime + " "  # one image: worker, triggers, api
    assert "torch" not in runtime
    installed = runtime.split("pip install", 1)[1].split("&&")[0].split()
    assert installed[0] == '".[api]"', "no other extras at runtime"
    model = " ".join(a for i, a in stages["model"] if i == "RUN")
    assert "download.pytorch.org/whl/cpu" in " ".join(a for i, a in stages["model"])
    assert '".[train]"' in model


def test_gpu_compose_worker_builds_engines_then_serves_them(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    script = " ".join(gpu["entrypoint"])
    assert "intent-stream build-engines --model-dir /opt/intent-stream/model" in script
    out = script.split("--out", 1)[1].split()[0]
    assert script.rstrip().endswith("exec intent-stream worker")
    assert _env(gpu)["MODEL_DIR"] == f"{out}/current"
    assert any(volume.endswith(f":{out}") for volume in gpu["volumes"])


def test_gpu_image_installs_the_gpu_extra() -> None:
    runs = " ".join(a for i, a in _instructions("Dockerfile.gpu") if i == "RUN")
    assert 'pip install ".[gpu]"' in runs


def test_images_ignore_everything_but_the_package() -> None:
    for name in ("Dockerfile.dockerignore", "Dockerfile.gpu.dockerignore"):
        lines = _lines(DEPLOY / name)
        assert lines[0] == "**"
        assert {"!pyproject.toml", "!stream_app/", "!model_export/"} <= set(lines)
