import urllib.error
import urllib.request

from daemon import health


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_metrics_and_recalibrate_command() -> None:
    state = health.HealthState(stale_after_s=60)
    asked: list[str] = []
    server = health.HealthServer("127.0.0.1", 0, state, asked.append)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert fetch(f"{base}/healthz") == (200, "ok\n")
        status, body = fetch(f"{base}/readyz")
        assert status == 503 and "starting" in body
        state.set_ready(True)
        assert fetch(f"{base}/readyz")[0] == 200
        state.set_ready(False, "InfluxDB writes failing")
        assert fetch(f"{base}/readyz") == (503, "not ready: InfluxDB writes failing\n")
        health.bad_messages.labels(reason="not_json").inc()
        status, text = fetch(f"{base}/metrics")
        assert status == 200 and 'seqae_bad_messages_total{reason="not_json"}' in text
        assert "seqae_write_latency_seconds_bucket" in text
        assert fetch(f"{base}/recalibrate?asset=pump-7", "POST")[0] == 202 and asked == ["pump-7"]
        assert fetch(f"{base}/recalibrate", "POST")[0] == 400
        assert fetch(f"{base}/nothing")[0] == 404
    finally:
        server.close()


def test_liveness_goes_stale_without_heartbeats() -> None:
    state = health.HealthState(stale_after_s=0.0)
    assert not state.alive
    state.stale_after_s = 60
    state.beat()
    assert state.alive
