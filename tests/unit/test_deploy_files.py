"""The deployment files agree with Grafana's, systemd's and the daemon's expectations.

The external linters (systemd-analyze, hadolint, the Compose-spec validator) run in
deploy/check.sh; these tests check what those tools cannot: that the dashboards are
well-formed Grafana JSON generated from deploy/grafana/build_dashboards.py, that every
SEQAE_* setting the deploy files set is one the daemon accepts, and that the pieces
(units, images, compose stack, Grafana provisioning) point at each other correctly.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from daemon.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*/*.json"))
LANGUAGE_OF_DIR = {"influxql": "influxdb", "flux": "influxdb", "prometheus": "prometheus"}


def _build_module() -> ModuleType:
    path = DEPLOY / "grafana" / "build_dashboards.py"
    spec = importlib.util.spec_from_file_location("build_dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_dashboards"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


# --- Grafana dashboards -----------------------------------------------------------------------


def test_dashboard_set_is_complete() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in DASHBOARD_FILES}
    for uid in ("seqae-asset", "seqae-alerts", "seqae-fleet"):
        assert {f"influxql/{uid}", f"flux/{uid}"} <= names
    assert "prometheus/seqae-daemon-health" in names


def test_dashboards_are_generated_and_fresh() -> None:
    build = _build_module()
    assert build.main(["--check"]) == 0, "run python deploy/grafana/build_dashboards.py"


def test_dashboard_uids_are_unique() -> None:
    uids = [_load(p)["uid"] for p in DASHBOARD_FILES]
    assert len(uids) == len(set(uids)), uids
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids), uids


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    doc = _load(path)
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    assert doc["title"] and doc["uid"]
    assert doc["time"]["from"].startswith("now-")
    panels = doc["panels"]
    assert panels, f"{path.name} has no panels"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat: {ids}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, (p["title"], g)
        assert g["h"] > 0 and g["y"] >= 0


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dashboard_datasources_are_variables(path: Path) -> None:
    doc = _load(path)
    plugin = LANGUAGE_OF_DIR[path.parent.name]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    ds_vars = {
        n for n, v in variables.items() if v["type"] == "datasource" and v["query"] == plugin
    }
    assert len(ds_vars) == 1, f"{path.name}: want one {plugin} datasource variable, got {ds_vars}"
    (ds_var,) = ds_vars
    expected = {"type": plugin, "uid": f"${{{ds_var}}}"}
    for p in doc["panels"]:
        assert p["datasource"] == expected, (p["title"], p["datasource"])
        for t in p["targets"]:
            assert t["datasource"] == expected, (p["title"], t["refId"])
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == expected, v["name"]
    # Every $variable a query uses is defined (Grafana's globals aside).
    used = set()
    for p in doc["panels"]:
        for t in p["targets"]:
            used |= set(re.findall(r"\$\{?(\w+)", t.get("query") or t.get("expr", "")))
    globals_ = {"timeFilter", "__interval", "__rate_interval"}
    assert used - globals_ <= set(variables), used - globals_ - set(variables)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_target_has_a_query_in_the_datasource_language(path: Path) -> None:
    language = path.parent.name
    doc = _load(path)
    for p in doc["panels"]:
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), (p["title"], refs)
        for t in p["targets"]:
            where = f"{path.name} / {p['title']} / {t['refId']}"
            if language == "influxql":
                assert t["rawQuery"] is True, where
                assert re.match(r"(SELECT|SHOW) ", t["query"]), where
                assert "$timeFilter" in t["query"], f"{where}: ignores the time range"
            elif language == "flux":
                assert re.match(
                    r'(import "[\w/]+"\n+)*from\(bucket: "\$\{bucket\}"\)', t["query"]
                ), where
                assert "v.timeRangeStart" in t["query"], f"{where}: ignores the time range"
                assert "SELECT" not in t["query"], where
            else:
                assert "seqae_" in t["expr"] or "up{" in t["expr"], where
                assert "$job" in t["expr"], where


def test_flux_dashboards_mirror_the_influxql_ones() -> None:
    for path in sorted((DASHBOARDS / "influxql").glob("*.json")):
        influxql, flux = _load(path), _load(DASHBOARDS / "flux" / path.name)
        assert [p["title"] for p in influxql["panels"]] == [p["title"] for p in flux["panels"]]
        for a, b in zip(influxql["panels"], flux["panels"], strict=True):
            assert [t["refId"] for t in a["targets"]] == [t["refId"] for t in b["targets"]]


def test_dashboards_read_the_documented_schema() -> None:
    """Queries name only measurements, tags and fields of the design's InfluxDB schema."""
    score_fields = {"score", "threshold", "anomalous", "state", "gap"}
    alert_fields = {"alert_id", "state", "score", "peak_score", "duration_s", "top_channels"}
    event_fields = {"state"}  # seqae_event: shift events (docs/architecture.md)
    tags = {"asset", "profile", "model_version", "severity", "kind"}
    measurements = {"seqae_score", "seqae_alert", "seqae_event"}
    for path in sorted((DASHBOARDS / "influxql").glob("*.json")):
        for p in _load(path)["panels"]:
            for t in p["targets"]:
                q = t["query"]
                assert set(re.findall(r'FROM "(\w+)"', q)) <= measurements
                names = set(re.findall(r'"(\w+)"', q)) - measurements
                aliases = set(re.findall(r'AS "(\w+)"', q))
                unknown = names - score_fields - alert_fields - event_fields - tags - aliases
                assert not unknown, f"{path.name} / {p['title']}: {unknown}"


# --- Grafana provisioning ---------------------------------------------------------------------


def test_provisioned_datasources_are_the_dashboard_defaults() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/seqae.yaml").read_text())
    by_uid = {d["uid"]: d for d in prov["datasources"]}
    for path in DASHBOARD_FILES:
        for v in _load(path)["templating"]["list"]:
            if v["type"] == "datasource":
                uid = v["current"]["value"]
                assert uid in by_uid, f"{path.name}: default datasource {uid} is not provisioned"
                assert by_uid[uid]["type"] == v["query"]
                flux = by_uid[uid].get("jsonData", {}).get("version") == "Flux"
                assert flux == (path.parent.name == "flux"), (path.name, uid)
    # Secrets come from the environment, never from the file.
    text = (DEPLOY / "grafana/provisioning/datasources/seqae.yaml").read_text()
    assert re.findall(r"(?:token|httpHeaderValue1): (.*)", text) == [
        "Token ${INFLUX_TOKEN}",
        "${INFLUX_TOKEN}",
    ]


def test_dashboard_providers_cover_every_dashboard_folder() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/seqae.yaml").read_text())
    paths = {p["options"]["path"] for p in prov["providers"]}
    assert paths == {f"/var/lib/grafana/dashboards/{d.name}" for d in DASHBOARDS.iterdir()}


# --- compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())
    return doc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {k: str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default (no variable set)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


UPSTREAM_IMAGES = {
    "kafka": ("SEQAE_KAFKA_IMAGE", "apache/kafka:"),
    "influxdb": ("SEQAE_INFLUXDB_IMAGE", "influxdb:2."),
    "seqae": ("SEQAE_IMAGE", "seqae:cpu"),
    "prometheus": ("SEQAE_PROMETHEUS_IMAGE", "prom/prometheus:"),
    "grafana": ("SEQAE_GRAFANA_IMAGE", "grafana/grafana-oss:"),
}


@pytest.mark.parametrize("service", sorted(UPSTREAM_IMAGES))
def test_compose_image_is_overridable_and_defaults_to_upstream(
    compose: dict[str, Any], service: str
) -> None:
    """Users keep the upstream images; CI (no registry) swaps in local stand-ins."""
    var, upstream = UPSTREAM_IMAGES[service]
    image = compose["services"][service]["image"]
    assert re.fullmatch(rf"\$\{{{var}:-[^}}]+\}}", image), image
    assert _default(image).startswith(upstream), image


def test_compose_host_ports_are_overridable_on_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\$\{SEQAE_\w+_HOST_PORT:-\d+\}:\d+", port), (
                name,
                port,
            )
    kafka_env = compose["services"]["kafka"]["environment"]
    assert (
        "HOST://localhost:${SEQAE_KAFKA_HOST_PORT:-29092}"
        in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    )


def test_every_long_running_compose_service_has_a_health_check(compose: dict[str, Any]) -> None:
    """`docker compose up --wait` can say "healthy" only for services with a health check
    (the daemon's is its image's HEALTHCHECK; Grafana has none, and no stand-in here)."""
    for name in ("kafka", "influxdb", "prometheus"):
        assert compose["services"][name]["healthcheck"]["test"][0] == "CMD", name


def test_compose_stack_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"kafka", "influxdb", "grafana", "prometheus", "seqae"}
    kafka = services["kafka"]
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    mounts = services["grafana"]["volumes"]
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "../grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to("/var/lib/grafana/dashboards")).is_file()
    seqae = services["seqae"]
    assert (DEPLOY / "compose" / seqae["build"]["context"] / seqae["build"]["dockerfile"]).is_file()
    assert {"kafka", "influxdb"} <= set(seqae["depends_on"])
    assert any(v.endswith(":/var/lib/seqae/models") for v in seqae["volumes"])


def test_compose_grafana_has_every_datasource_variable(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "grafana/provisioning/datasources/seqae.yaml").read_text()
    wanted = set(re.findall(r"\$\{(\w+)\}", text))
    assert wanted <= set(_env(compose["services"]["grafana"])), wanted


def test_prometheus_scrapes_the_daemon(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "compose/prometheus/prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    port = _env(compose["services"]["seqae"]).get("SEQAE_HEALTH__PORT", "9108")
    assert f"seqae:{port}" in targets


def _image_env(dockerfile: Path) -> dict[str, str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    runtime = text.split("AS runtime", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("SEQAE_")}


@pytest.mark.parametrize("image", ["cpu", "cuda"])
def test_compose_daemon_settings_load(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, image: str
) -> None:
    """daemon.toml plus the image's and compose's SEQAE_* variables is a valid configuration."""
    env = _settings_env(_image_env(DEPLOY / f"container/{image}.Dockerfile"))
    env |= _settings_env(_env(compose["services"]["seqae"]))
    env["SEQAE_INFLUX__TOKEN"] = "not-a-real-token"  # compose interpolates it from its default
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(DEPLOY / "compose/seqae/daemon.toml")
    assert settings.profiles.models_root == Path("/var/lib/seqae/models")
    assert settings.state_dir == Path("/var/lib/seqae/state")
    assert settings.health.host == "0.0.0.0"  # reachable by Prometheus and the healthcheck
    assert settings.kafka.bootstrap_servers == ["kafka:9092"]
    assert settings.influx.url == "http://influxdb:8086"
    assert settings.engine.device == image
    assert settings.profiles.profile_for("pump-7") == "pump"


# --- container images -------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["cpu", "cuda"])
def test_dockerfile_is_multistage_nonroot_with_healthcheck(image: str) -> None:
    path = DEPLOY / f"container/{image}.Dockerfile"
    text = path.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r'^VOLUME \[.*"/var/lib/seqae/models"', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", text, re.M)
    assert (DEPLOY / f"container/{image}.Dockerfile.dockerignore").is_file()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (REPO / item).exists() or item == "README.md", f"{path.name}: COPY {item}"


TORCH_INDEX_DEFAULT = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu124",
}


@pytest.mark.parametrize("image", ["cpu", "cuda"])
def test_dockerfile_builds_offline_and_keeps_torch_below_the_source(image: str) -> None:
    """No frontend image to pull; torch from TORCH_INDEX; a source change keeps the torch layer."""
    text = (DEPLOY / f"container/{image}.Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a syntax line pulls an image"
    assert re.search(rf"^ARG TORCH_INDEX={re.escape(TORCH_INDEX_DEFAULT[image])}$", text, re.M)
    build = text.split("\nFROM ")[1]  # the build stage
    lines = build.replace("\\\n", " ").splitlines()
    torch = next(i for i, line in enumerate(lines) if '--index-url "${TORCH_INDEX}"' in line)
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    assert copies and torch < min(copies), "torch must be installed before anything is copied"
    source = next(i for i, line in enumerate(lines) if re.match(r"COPY (seqae|daemon) ", line))
    deps = next(i for i, line in enumerate(lines) if "requirements.txt" in line and "RUN" in line)
    assert deps < source, "dependencies are installed before the source is copied"
    assert "pip install --no-deps /src" in build


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck(port: int) -> int:
    script = DEPLOY / "container/healthcheck.py"
    env = {"SEQAE_HEALTH__PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True).returncode


def test_container_healthcheck_follows_healthz(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    _Health.status = 200
    assert _healthcheck(port) == 0
    _Health.status = 503
    assert _healthcheck(port) == 1
    health_server.shutdown()
    health_server.server_close()
    assert _healthcheck(port) == 1  # nothing listening


# --- systemd units ----------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd's unit syntax: sections of key=value lines; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, value = line.split("=", 1)
        current.append((key, value))
    return sections


def _values(unit: dict[str, list[tuple[str, str]]], key: str) -> list[str]:
    return [v for k, v in unit["Service"] if k == key]


def _one(unit: dict[str, list[tuple[str, str]]], key: str) -> str:
    values = _values(unit, key)
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


SYSTEMD = DEPLOY / "systemd"


def test_daemon_unit_is_notify_with_watchdog_and_restart() -> None:
    unit = parse_unit(SYSTEMD / "seqae.service")
    assert _one(unit, "Type") == "notify"
    assert re.fullmatch(r"\d+s?", _one(unit, "WatchdogSec"))
    assert _one(unit, "Restart") == "on-failure"
    assert _one(unit, "ExecStart").split()[1:3] == ["daemon", "run"]
    assert _one(unit, "EnvironmentFile") == "/etc/seqae/seqae.env"


@pytest.mark.parametrize("name", ["seqae.service", "seqae-retrain.service"])
def test_units_are_unprivileged_and_hardened(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    assert _one(unit, "User") == "seqae"
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert _one(unit, key) == value, key
    # Writable: the models and state folders, nothing else.
    assert _values(unit, "ReadWritePaths") == []
    assert _one(unit, "StateDirectory").split() == ["seqae/models", "seqae/state"]


@pytest.mark.parametrize("name", ["seqae.service", "seqae-retrain.service"])
def test_unit_settings_point_into_the_writable_folders(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unit = parse_unit(SYSTEMD / name)
    env = dict(pair.split("=", 1) for line in _values(unit, "Environment") for pair in line.split())
    for key, value in _settings_env(env).items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "daemon.toml"
    config.write_text('[[profiles.routes]]\npattern = "*"\nprofile = "pump"\n')
    settings = load_settings(config)
    assert settings.profiles.models_root == Path("/var/lib/seqae/models")
    assert settings.state_dir == Path("/var/lib/seqae/state")


def test_retrain_timer_starts_the_retrain_service() -> None:
    timer = parse_unit(SYSTEMD / "seqae-retrain.timer")
    assert dict(timer["Timer"])["Unit"] == "seqae-retrain.service"
    assert dict(timer["Timer"])["OnCalendar"]
    unit = parse_unit(SYSTEMD / "seqae-retrain.service")
    assert _one(unit, "Type") == "oneshot"
    assert _one(unit, "ExecStart").split()[1] == "retrain"


def test_systemd_readme_records_the_exposure_figure() -> None:
    text = (SYSTEMD / "README.md").read_text()
    figures = [float(x) for x in re.findall(r"exposure level[^\n]*?(\d+\.\d)", text)]
    assert figures and max(figures) <= 2.0, figures


# --- CI runs the deployment for real ----------------------------------------------------------


def test_ci_runs_the_static_and_the_live_deployment_checks() -> None:
    lines = (REPO / ".ci/run").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in lines if not line.startswith("#")]
    assert "deploy/check.sh" in commands
    live = [c for c in commands if "deploy/live_check.py" in c]
    assert live and live[0].split()[-1] == "all", live
    # after the devstack it runs against
    assert commands.index(live[0]) > next(
        i for i, c in enumerate(commands) if "devstack.py up" in c
    )
