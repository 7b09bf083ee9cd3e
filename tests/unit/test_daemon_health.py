import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from daemon import health
from daemon.settings import ConfigError, load_settings
from daemon.source import PartitionLag, PartitionOffsets, lag_figures

TOKEN = "s3cr3t-control-token"


def fetch(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Recalibrations:
    """The daemon's side: which assets it knows and what it was asked, with the source."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked: list[tuple[str, str]] = []

    def __call__(self, asset: str, source: str) -> bool:
        if asset not in self.known:
            return False
        self.asked.append((asset, source))
        return True


def serve(token: SecretStr | None, calls: Recalibrations) -> tuple[health.HealthServer, str]:
    server = health.HealthServer(
        "127.0.0.1", 0, health.HealthState(stale_after_s=60), calls, control_token=token
    )
    server.start()
    return server, f"http://127.0.0.1:{server.port}"


@pytest.fixture
def controlled() -> Iterator[tuple[str, Recalibrations]]:
    calls = Recalibrations({"pump-7"})
    server, base = serve(SecretStr(TOKEN), calls)
    yield base, calls
    server.close()


def test_probes_and_metrics_are_open() -> None:
    state = health.HealthState(stale_after_s=60)
    server = health.HealthServer("127.0.0.1", 0, state)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert fetch(f"{base}/healthz") == (200, "ok\n")
        status, body = fetch(f"{base}/readyz")
        assert status == 503 and "starting" in body
        state.set_ready(True)
        assert fetch(f"{base}/readyz")[0] == 200
        state.set_ready(False, "Kafka unreachable since 2026-12-01T07:35:28Z")
        assert fetch(f"{base}/readyz") == (
            503,
            "not ready: Kafka unreachable since 2026-12-01T07:35:28Z\n",
        )
        health.bad_messages.labels(reason="not_json").inc()
        status, text = fetch(f"{base}/metrics")
        assert status == 200 and 'seqae_bad_messages_total{reason="not_json"}' in text
        assert "seqae_write_latency_seconds_bucket" in text
        assert fetch(f"{base}/nothing")[0] == 404
        assert fetch(f"{base}/recalibrate?asset=pump-7", "POST")[0] == 404  # no callback
    finally:
        server.close()


def test_control_is_off_without_a_token() -> None:
    calls = Recalibrations({"pump-7"})
    server, base = serve(None, calls)
    try:
        status, body = fetch(f"{base}/recalibrate?asset=pump-7", "POST", token="anything")
        assert status == 403 and "health.control_token_file" in body
        assert calls.asked == []
        assert fetch(f"{base}/healthz")[0] == 200
    finally:
        server.close()


@pytest.mark.parametrize(
    "token", [None, "", "guess-123", TOKEN[:-1], TOKEN + "x", f"{TOKEN} extra"]
)
def test_missing_or_wrong_token_is_refused_and_changes_nothing(
    controlled: tuple[str, Recalibrations],
    token: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, calls = controlled
    with caplog.at_level(logging.DEBUG, logger="daemon.health"):
        status, body = fetch(f"{base}/recalibrate?asset=pump-7", "POST", token=token)
    assert status == 401 and body == "unauthorized\n"
    assert calls.asked == []
    assert "refused control request /recalibrate from 127.0.0.1" in caplog.text
    assert TOKEN not in caplog.text and (not token or token not in caplog.text)


def test_other_schemes_are_refused(controlled: tuple[str, Recalibrations]) -> None:
    base, calls = controlled
    req = urllib.request.Request(f"{base}/recalibrate?asset=pump-7", method="POST", data=b"")
    req.add_header("Authorization", f"Basic {TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401 and info.value.headers["WWW-Authenticate"] == "Bearer"
    assert calls.asked == []


def test_accepted_request_is_logged_and_handed_over_with_its_source(
    controlled: tuple[str, Recalibrations], caplog: pytest.LogCaptureFixture
) -> None:
    base, calls = controlled
    with caplog.at_level(logging.DEBUG, logger="daemon.health"):
        status, body = fetch(f"{base}/recalibrate?asset=pump-7", "POST", token=TOKEN)
    assert status == 202 and "pump-7" in body
    assert calls.asked == [("pump-7", "127.0.0.1")]
    assert "control request from 127.0.0.1: recalibrate asset 'pump-7': accepted" in caplog.text
    assert TOKEN not in caplog.text


def test_unknown_asset_and_missing_asset(controlled: tuple[str, Recalibrations]) -> None:
    base, calls = controlled
    status, body = fetch(f"{base}/recalibrate?asset=boiler-1", "POST", token=TOKEN)
    assert status == 404 and "unknown asset 'boiler-1'" in body
    assert fetch(f"{base}/recalibrate", "POST", token=TOKEN)[0] == 400
    assert fetch(f"{base}/recalibrate?asset=" + "a" * 300, "POST", token=TOKEN)[0] == 400
    assert calls.asked == []


def test_control_token_from_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "control").write_text(TOKEN + "\n")
    monkeypatch.setenv("SEQAE_HEALTH__CONTROL_TOKEN_FILE", str(tmp_path / "control"))
    s = load_settings()
    assert s.health.control_token is not None
    assert s.health.control_token.get_secret_value() == TOKEN
    assert TOKEN not in str(s.masked()) and TOKEN not in repr(s)
    monkeypatch.setenv("SEQAE_HEALTH__CONTROL_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="control_token_file: cannot read"):
        load_settings()


def test_repeated_log_lines_are_rate_limited_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = health.RateLimitedLog(logging.getLogger("t"), every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        assert limited.log(logging.ERROR, "k", "CURRENT of %s unreadable", "pumps")
        for _ in range(5):
            assert not limited.log(logging.ERROR, "k", "CURRENT of %s unreadable", "pumps")
        assert limited.log(logging.ERROR, "other", "another problem")
        now[0] = 61.0
        assert limited.log(logging.ERROR, "k", "CURRENT of %s unreadable", "pumps")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "CURRENT of pumps unreadable",
        "another problem",
        "CURRENT of pumps unreadable (5 more like it in the last 61 s)",
    ]


def test_liveness_goes_stale_without_heartbeats() -> None:
    state = health.HealthState(stale_after_s=0.0)
    assert not state.alive
    state.stale_after_s = 60
    state.beat()
    assert state.alive


def test_lag_figures_separate_what_is_read_from_what_is_committed() -> None:
    a, b, c, d = ("t", 0), ("t", 1), ("t", 2), ("t", 3)
    offsets = {
        # read up to 90 of 100; committed 60; the next commit may send 75
        a: PartitionOffsets(end=100, position=90, committed=60),
        # caught up and committed up to what windows need: 8 read but held back
        b: PartitionOffsets(end=50, position=50, committed=42),
        # never committed: the whole log is committed lag
        c: PartitionOffsets(end=30, position=30, committed=None),
        # committable behind the committed offset (nothing new to commit): held from committed
        d: PartitionOffsets(end=10, position=10, committed=10),
    }
    figures = lag_figures(offsets, {a: 75, c: 25, d: 7})
    assert figures[a] == PartitionLag(consumed=10, committed=40, held=15)
    assert figures[b] == PartitionLag(consumed=0, committed=8, held=8)
    assert figures[c] == PartitionLag(consumed=0, committed=30, held=5)
    assert figures[d] == PartitionLag(consumed=0, committed=0, held=0)
    for tp in (b, d):  # a commit caught up: committed lag is what is unread plus what is held
        assert figures[tp].committed == figures[tp].consumed + figures[tp].held


def test_lag_export_sets_gauges_and_drops_partitions_no_longer_assigned() -> None:
    export = health.LagExport()
    export.update({("lag-topic", 0): (1, 5, 4), ("lag-topic", 1): (0, 2, 2)})
    assert (
        REGISTRY.get_sample_value("seqae_committed_lag", {"topic": "lag-topic", "partition": "0"})
        == 5
    )
    assert (
        REGISTRY.get_sample_value("seqae_held_offsets", {"topic": "lag-topic", "partition": "1"})
        == 2
    )
    export.update({("lag-topic", 1): (0, 0, 0)})
    text = generate_latest().decode()
    assert 'seqae_committed_lag{partition="0",topic="lag-topic"}' not in text
    assert 'seqae_held_offsets{partition="1",topic="lag-topic"} 0.0' in text
    assert 'seqae_consumer_lag{partition="0",topic="lag-topic"}' not in text


def test_garbage_collections_are_timed_and_exported_off_the_callback() -> None:
    import gc

    def full_collections() -> float:
        value = REGISTRY.get_sample_value("seqae_gc_pause_seconds_count", {"generation": "2"})
        return value or 0.0

    ticks = iter([10.0, 10.25, 20.0, 20.5])
    pauses = health.GcPauses(clock=lambda: next(ticks))
    before = full_collections()
    pauses("start", {"generation": 2})
    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert full_collections() == before  # nothing observed inside the collection itself
    pauses.export()
    assert full_collections() == before + 1
    total = REGISTRY.get_sample_value("seqae_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total >= 0.25

    def collected() -> float:
        value = REGISTRY.get_sample_value("seqae_gc_collected_objects_total", {"generation": "2"})
        return value or 0.0

    real = health.GcPauses()
    freed_before = collected()
    gc.callbacks.append(real)
    try:
        cycle: list[object] = []
        cycle.append(cycle)  # garbage only a collection frees
        del cycle
        gc.collect()
    finally:
        gc.callbacks.remove(real)
    real.export()
    assert full_collections() == before + 2
    assert collected() >= freed_before + 1
