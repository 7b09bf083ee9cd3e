"""`seqae retrain` end to end against the running daemon, real Kafka and InfluxDB 1.6.

The served PCA profile knows three pumps at one operating point (plant_seed=0); the plant then
runs normally at another one (plant_seed=1), so the served model over-alarms. Retraining from a
Kafka replay of that data, with one recorded alert span left out, yields a candidate that raises
fewer false alerts and catches more injected faults under the alert rule; it is promoted and the
daemon swaps to it without a restart, losing no window.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import InfluxV1, Query, http_request
from test_daemon_service import (
    HOP,
    PERIOD_NS,
    WINDOW,
    DaemonProcess,
    expected_ends,
    free_port,
    interleave,
    make_topic,
    produce,
    score_times,
    wait_for,
    write_config,
)

from daemon.alerts import AlertEvent, alert_point, make_alert_id
from daemon.lineprotocol import encode_batch
from seqae.artifacts import current_version
from seqae.synth import DEFAULT_START_NS, generate_asset
from seqae.train import train_profile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ASSETS = ("pump-1", "pump-2", "pump-3")
SAMPLES, FIRST = 2000, 1500  # shifted-plant samples per pump; the first FIRST before retraining
ALERT = (700, 760)  # samples of pump-2 with a recorded alert (open -> closed)
MARGIN_S = 30


def shifted_stream(asset: str) -> list[bytes]:
    series, _ = generate_asset(asset, SAMPLES, seed=5, plant_seed=1)
    out = []
    for ts, row in zip(series.timestamps, series.values, strict=True):
        values = {c: float(v) for c, v in zip(series.channels, row, strict=True)}
        out.append(
            json.dumps({"asset": asset, "ts": int(ts) // 1_000_000, "values": values}).encode()
        )
    return out


def record_alert(influx_v1: InfluxV1, database: str) -> None:
    """An alert of pump-2 as the daemon writes it: open, then closed."""
    start = DEFAULT_START_NS + ALERT[0] * PERIOD_NS
    end = DEFAULT_START_NS + ALERT[1] * PERIOD_NS
    events = [
        AlertEvent(
            "pump-2",
            "pumps",
            state,
            "warning",
            t,
            9.0,
            1.0,
            9.0,
            d,
            ("flow",),
            make_alert_id("pump-2", start),
        )
        for state, t, d in (("open", start, 0.0), ("closed", end, (end - start) / 1e9))
    ]
    body = encode_batch(alert_point(e) for e in events).encode()
    q = urllib.parse.urlencode({"db": database, "precision": "ns"})
    status, text = http_request("POST", f"{influx_v1.url}/write?{q}", body)
    assert status == 204, text


def test_retrain_from_kafka_promotes_and_the_daemon_swaps_without_losing_windows(
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_topic: str,
    influx_v1: InfluxV1,
    database: str,
    query: Query,
) -> None:
    models = tmp_path / "models"
    history = [generate_asset(a, 3000, seed=0, plant_seed=0)[0] for a in ASSETS]
    train_profile(
        history, models_root=models, profile="pumps", window=WINDOW, hop=HOP, kind="pca",
        progress=False, device="cpu",
    )  # fmt: skip
    make_topic(kafka_bootstrap, unique_topic, 2)
    config = write_config(
        tmp_path, "d1", bootstrap=kafka_bootstrap, topic=unique_topic, influx_url=influx_v1.url,
        database=database, models_root=models, group=f"g-{unique_topic}", health_port=free_port(),
    )  # fmt: skip
    # Alerts would stay open for the whole shifted stretch; this test records its own alert span
    # instead, so that exclusion has a known span to remove.
    env = {"SEQAE_ALERTS__ENTER_LEVEL": "1e9", "SEQAE_ALERTS__CRITICAL_LEVEL": "1e9"}
    daemon = DaemonProcess(config, tmp_path / "d1.log", env).start()
    try:
        messages = interleave(*(shifted_stream(a) for a in ASSETS), assets=ASSETS)
        since_ms = int(time.time() * 1000) - 1000
        produce(kafka_bootstrap, unique_topic, messages[: FIRST * len(ASSETS)])
        before = {a: expected_ends(a, FIRST) for a in ASSETS}
        wait_for(
            lambda: all(len(score_times(query, a)) >= len(before[a]) for a in ASSETS),
            60,
            "scores of the shifted stretch",
            daemon,
        )
        record_alert(influx_v1, database)

        # the operator's command, as the systemd unit runs it; it judges both models under the
        # configured alert rule, not the daemon's silencing override above
        run = subprocess.run(
            [
                sys.executable, "-m", "daemon.cli", "retrain", "--config", str(config),
                "--profile", "pumps", "--from-kafka", "--since", str(since_ms),
                "--margin", f"{MARGIN_S}s", "--no-progress",
            ],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        print(run.stdout)
        report = json.loads((models / "pumps" / "v0002" / "retrain_report.json").read_text())
        served, candidate = report["gate"]["served"], report["gate"]["candidate"]
        assert candidate["false_alerts_per_day"] < served["false_alerts_per_day"]
        assert candidate["recall"] > served["recall"] and candidate["injected"] == 60
        assert report["held_out"]["served"]["windows"] == served["windows"] > 0
        assert report["decision"]["promoted"] is True
        assert current_version(models, "pumps") == "v0002"
        assert report["source"]["messages"] == FIRST * len(ASSETS)
        assert report["history"]["rows"] == FIRST * len(ASSETS)
        assert report["history"]["alert_spans"] == 1
        span_rows = ALERT[1] - ALERT[0] + 1 + 2 * MARGIN_S
        assert report["history"]["rows_excluded"] >= span_rows
        assert "false alerts/day" in run.stdout and "injected recall" in run.stdout
        assert "promoted" in run.stdout

        time.sleep(3)  # reload_poll_s is 1 s
        produce(kafka_bootstrap, unique_topic, messages[FIRST * len(ASSETS) :])
        want = {a: expected_ends(a, SAMPLES) for a in ASSETS}
        wait_for(
            lambda: all(len(score_times(query, a)) >= len(want[a]) for a in ASSETS),
            60,
            "scores after the swap",
            daemon,
        )
        assert daemon.proc is not None and daemon.proc.poll() is None  # never restarted
        assert daemon.signal(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.stop()
    for asset in ASSETS:
        assert score_times(query, asset) == want[asset], asset  # none lost, none doubled
        rows = query(f"SELECT score, model_version FROM seqae_score WHERE asset = '{asset}'")
        versions = [r[2] for r in rows[0]["values"]]
        swap = versions.index("v0002")
        assert set(versions[:swap]) == {"v0001"} and set(versions[swap:]) == {"v0002"}
        assert swap >= len(before[asset])  # the shifted stretch was scored by the old model
    served_after = query(
        "SELECT count(score) FROM seqae_score WHERE model_version = 'v0002' AND anomalous = true"
    )
    served_before = query(
        "SELECT count(score) FROM seqae_score WHERE model_version = 'v0001' AND anomalous = true"
    )
    n_after = served_after[0]["values"][0][1] if served_after else 0
    n_before = served_before[0]["values"][0][1] if served_before else 0
    print(f"anomalous windows: {n_before} under v0001, {n_after} under v0002")


def test_history_from_a_raw_readings_measurement_in_influxdb_1x(
    tmp_path: Path, influx_v1: InfluxV1, database: str
) -> None:
    """The historian's measurement (tag asset, one field per channel) read back as Series."""
    from daemon.lineprotocol import Point
    from daemon.retrain import history_from_influx
    from daemon.settings import load_settings

    series = {a: generate_asset(a, 50, seed=1, plant_seed=0)[0] for a in ("pump-1", "boiler-1")}
    points = [
        Point(
            "plant_raw", {"asset": a}, dict(zip(s.channels, map(float, row), strict=True)), int(t)
        )
        for a, s in series.items()
        for t, row in zip(s.timestamps, s.values, strict=True)
    ]
    q = urllib.parse.urlencode({"db": database, "precision": "ns"})
    status, text = http_request("POST", f"{influx_v1.url}/write?{q}", encode_batch(points).encode())
    assert status == 204, text
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[influx]\napi = "v1"\nurl = "{influx_v1.url}"\ndatabase = "{database}"\n'
        '[profiles]\nroutes = [{ pattern = "pump-*", profile = "pumps" }]\n'
    )
    channels = series["pump-1"].channels[::-1]  # the model's order, not the measurement's
    got = history_from_influx(
        load_settings(config), "pumps", channels, "plant_raw", DEFAULT_START_NS
    )
    assert [s.asset for s in got] == ["pump-1"]  # other profiles' assets are left out
    want = series["pump-1"].select(channels)
    assert got[0].timestamps.tolist() == want.timestamps.tolist()
    np.testing.assert_allclose(got[0].values, want.values, rtol=1e-6)
