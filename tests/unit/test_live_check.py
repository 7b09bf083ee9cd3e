"""deploy/live_check.py's own logic, and its stand-in images' scripts, without an engine.

The checks themselves run for real in `.ci/run` (`live_check.py all`); `live_check.py
self-test` shows each of them fail on a broken file. Here: the pieces those checks decide with.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import daemon.health  # noqa: F401  (registers the daemon's metrics)

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "deploy/compose/standins"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


live_check = load(REPO / "deploy/live_check.py", "live_check")
kafka_run = load(STANDINS / "kafka/run.py", "kafka_standin_run")
influx_run = load(STANDINS / "influxdb/run.py", "influxdb_standin_run")


def daemon_series() -> set[str]:
    """What the compose check knows from the daemon's exposition (a fresh one: no samples)."""
    return live_check.declared_series(generate_latest().decode()) | live_check.PROMETHEUS_SERIES


def test_declared_series_match_what_the_exposition_exports() -> None:
    """Every sample name the daemon's exposition has is among the series it declares."""
    declared = live_check.declared_series(generate_latest().decode())
    samples = {
        s.name
        for family in text_string_to_metric_families(generate_latest().decode())
        for s in family.samples
    }
    assert samples <= declared
    assert {"seqae_windows_scored_total", "seqae_write_latency_seconds_bucket"} <= declared


def test_the_dashboards_query_only_metrics_the_daemon_declares() -> None:
    expressions = live_check.dashboard_promql(live_check.DASHBOARDS)
    assert len(expressions) >= 10
    assert any(e.startswith("label_values(") for e in expressions)  # variables are included
    assert live_check.missing_metrics(expressions, daemon_series()) == {}


def test_the_dashboard_check_flags_a_query_on_a_metric_that_does_not_exist(
    tmp_path: Path,
) -> None:
    broken = live_check.dashboard_promql(live_check.broken_dashboards(tmp_path))
    missing = live_check.missing_metrics(broken, daemon_series())
    assert missing == {
        live_check.BROKEN_PANEL["targets"][0]["expr"]: ["seqae_e2e_latency_seconds_bucket"]
    }


def test_promql_metric_names() -> None:
    names = live_check.promql_metric_names
    assert names('sum(rate(a_total{job=~"$job"}[1m])) / b{x="1"}') == {"a_total", "b"}
    assert names("label_values(seqae_windows_scored_total, job)") == {"seqae_windows_scored_total"}
    assert names("sum by (le) (x)") == set()  # a bare name is not how our panels write one


def test_the_broken_compose_file_differs_only_in_the_health_command(tmp_path: Path) -> None:
    good = (live_check.COMPOSE_DIR / "compose.yaml").read_text().splitlines()
    bad = live_check.broken_compose_health(tmp_path).read_text().splitlines()
    changed = [(g, b) for g, b in zip(good, bad, strict=True) if g != b]
    assert len(changed) == 1
    assert "no-such-wget" in changed[0][1] and "localhost:9090" in changed[0][0]


def test_cuda_recipe_digest_follows_the_build_recipe_not_the_package_source(
    tmp_path: Path,
) -> None:
    for rel in [*live_check.CUDA_RECIPE, "seqae/__init__.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    before = live_check.cuda_recipe_digest(tmp_path)
    (tmp_path / "seqae/__init__.py").write_text("# changed\n")
    assert live_check.cuda_recipe_digest(tmp_path) == before
    for rel in live_check.CUDA_RECIPE:
        path = tmp_path / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert live_check.cuda_recipe_digest(tmp_path) != before, rel
        path.write_bytes(original)
    assert live_check.cuda_recipe_digest(tmp_path) == before


def test_tree_digest_sees_bytes_names_and_exec_bits_not_times(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("echo\n")
    first = live_check.tree_digest(tmp_path, "base-id")
    assert live_check.tree_digest(tmp_path, "other-base") != first
    (tmp_path / "run.sh").touch()
    assert live_check.tree_digest(tmp_path, "base-id") == first
    (tmp_path / "run.sh").chmod(0o755)
    assert live_check.tree_digest(tmp_path, "base-id") != first
    (tmp_path / "run.sh").chmod(0o644)
    (tmp_path / "run.sh").rename(tmp_path / "start.sh")
    assert live_check.tree_digest(tmp_path, "base-id") != first


@pytest.mark.parametrize(
    ("variable", "prop"),
    [
        ("KAFKA_LOG_DIRS", "log.dirs"),
        ("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "listener.security.protocol.map"),
        ("KAFKA_CONFLUENT__LICENSE", "confluent_license"),
        ("KAFKA_SOME___THING", "some-thing"),
    ],
)
def test_kafka_standin_names_properties_as_apache_kafka_does(variable: str, prop: str) -> None:
    assert kafka_run.property_name(variable) == prop


def test_influxdb_standin_reads_upstream_retention_durations() -> None:
    assert influx_run.retention_s("90d") == 90 * 86400
    assert influx_run.retention_s("1w2d3h") == 9 * 86400 + 3 * 3600
    assert influx_run.retention_s("0") == 0
    with pytest.raises(SystemExit, match="RETENTION='90 days' is no duration"):
        influx_run.retention_s("90 days")


def test_every_compose_image_and_port_can_be_moved_for_the_check() -> None:
    """The check replaces images and host ports through variables; each one must exist."""
    text = (live_check.COMPOSE_DIR / "compose.yaml").read_text()
    for var in (*live_check.COMPOSE_PORTS, "SEQAE_KAFKA_IMAGE", "SEQAE_INFLUXDB_IMAGE",
                "SEQAE_PROMETHEUS_IMAGE", "SEQAE_IMAGE"):  # fmt: skip
        assert f"${{{var}:-" in text, var
    assert set(live_check.COMPOSE_SERVICES) | {"grafana"} == set(yaml.safe_load(text)["services"])
