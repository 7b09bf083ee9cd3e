"""The product end to end on the local Kafka and InfluxDB (`make demo`).

1. synthesise the normal history of a small pump plant and train a profile on it;
2. start the daemon against the servers of deploy/local/devstack.py;
3. replay a later stretch of the same plant, with labelled faults, into Kafka;
4. print alerts as the daemon opens and closes them, read back from InfluxDB;
5. save a PNG of scores, thresholds and alerts per pump, also read back from InfluxDB.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd

from daemon.settings import WindowSettings
from daemon.windows import is_window_end, window_phase
from seqae.synth import generate_plant, write_plant
from seqae.train import train_profile

REPO = Path(__file__).resolve().parents[1]
DEVSTACK = REPO / "deploy" / "local" / "devstack.py"
EXAMPLE_CONFIG = REPO / "configs" / "daemon.example.toml"
HISTORY_START = "2026-01-01T00:00:00Z"
LIVE_START = "2026-01-01T06:00:00Z"


@dataclass
class Endpoints:
    kafka: str
    influx_url: str


def endpoints() -> Endpoints:
    proc = subprocess.run(
        [sys.executable, str(DEVSTACK), "up"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise click.ClickException(f"the local services did not start:\n{proc.stderr[-3000:]}")
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Endpoints(env["SEQAE_TEST_KAFKA"], env["SEQAE_TEST_INFLUX_V1"])


def influx_query(url: str, database: str, q: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=10) as resp:
        body = json.load(resp)
    rows: list[dict[str, Any]] = []
    for result in body.get("results", []):
        for series in result.get("series", []) or []:
            tags = series.get("tags", {})
            for values in series["values"]:
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
    return rows


def influx_command(url: str, q: str) -> None:
    data = urllib.parse.urlencode({"q": q}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as resp:
        resp.read()


def shipped_sections(names: tuple[str, ...]) -> str:
    """The text of these sections of the shipped example config, as written there."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    parts, keep = [], False
    for line in text.splitlines():
        if line.startswith("["):
            keep = line.strip("[] ") in names
        if keep:
            parts.append(line)
    return "\n".join(parts) + "\n"


def write_config(path: Path, ep: Endpoints, topic: str, database: str, out: Path) -> None:
    """Where the demo's servers, topic and folders are; every detection setting (windows,
    baselines, alerts) is copied from configs/daemon.example.toml as shipped."""
    detection = shipped_sections(("windows", "baselines", "alerts"))
    path.write_text(
        f"""state_dir = "{out / "state"}"
log_level = "WARNING"

[kafka]
bootstrap_servers = ["{ep.kafka}"]
topics = ["{topic}"]
group_id = "{topic}"
dead_letter_topic = "{topic}-dead"

[profiles]
models_root = "{out / "models"}"
routes = [{{ pattern = "pump-*", profile = "pumps" }}]

[influx]
api = "v1"
url = "{ep.influx_url}"
database = "{database}"

[health]
port = 19108
"""
        + "\n"
        + detection
    )


def report_alerts(rows: list[dict[str, Any]], seen: set[tuple[Any, ...]]) -> None:
    for row in sorted(rows, key=lambda r: r["time"]):
        key = (row["asset"], row["time"], row["state"])
        if key in seen or row["state"] == "update":
            continue
        seen.add(key)
        when = pd.Timestamp(row["time"], unit="ns", tz="UTC").strftime("%H:%M:%S")
        if row["state"] == "open":
            click.secho(
                f"  ALERT OPEN   {row['asset']} at {when}  severity {row['severity']}  "
                f"score {row['score']:.1f}  top channels: {row['top_channels']}",
                fg="red",
            )
        else:
            click.secho(
                f"  ALERT CLOSED {row['asset']} at {when}  after {row['duration_s']:.0f}s  "
                f"peak score {row['peak_score']:.1f}",
                fg="green",
            )


def plot(
    out_png: Path, scores: pd.DataFrame, alerts: pd.DataFrame, faults: list[dict[str, Any]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assets = sorted(scores["asset"].unique())
    fig, axes = plt.subplots(
        len(assets), 1, figsize=(13, 2.6 * len(assets)), sharex=True, squeeze=False
    )
    for ax, asset in zip(axes[:, 0], assets, strict=True):
        s = scores[scores["asset"] == asset]
        t = pd.to_datetime(s["time"], unit="ns")
        ax.semilogy(t, s["score"].clip(lower=1e-3), lw=0.8, label="score")
        ax.semilogy(t, s["threshold"], "--", lw=1, color="tab:orange", label="threshold")
        for f in faults:
            if f["asset"] == asset:
                ax.axvspan(
                    pd.Timestamp(f["start_ns"], unit="ns"),
                    pd.Timestamp(f["end_ns"], unit="ns"),
                    color="tab:red",
                    alpha=0.12,
                    label=f"fault: {f['kind']}",
                )
        a = alerts[alerts["asset"] == asset] if len(alerts) else alerts
        for _, row in a.iterrows():
            color = "tab:red" if row["state"] == "open" else "tab:green"
            if row["state"] in ("open", "closed"):
                ax.axvline(pd.Timestamp(row["time"], unit="ns"), color=color, lw=1.2)
        ax.set_ylabel(asset)
        ax.legend(loc="upper left", fontsize=7, ncol=4)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(
        "seqae demo: scores (log) and alerts read back from InfluxDB; red = open, green = closed"
    )
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


@click.command()
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo")
)
@click.option("--assets", default=4, show_default=True)
@click.option("--history-hours", default=6.0, show_default=True)
@click.option("--live-minutes", default=60.0, show_default=True)
@click.option("--epochs", default=10, show_default=True)
@click.option("--rate", default=0.0, help="Replay messages/s (0: as fast as possible).")
def main(
    out_dir: Path, assets: int, history_hours: float, live_minutes: float, epochs: int, rate: float
) -> None:
    """Run the seqae demo end to end."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    click.secho("1/5 local Kafka and InfluxDB", bold=True)
    ep = endpoints()
    click.echo(f"  Kafka {ep.kafka}, InfluxDB {ep.influx_url}")

    click.secho("2/5 train on the normal history of the plant", bold=True)
    history = generate_plant(
        assets,
        int(history_hours * 3600),
        seed=0,
        with_faults=False,
        start_ns=pd.Timestamp(HISTORY_START).value,
    )
    version = train_profile(
        [s for s, _ in history.values()],
        models_root=out_dir / "models",
        profile="pumps",
        window=30,
        hop=5,
        kind="auto",  # what `seqae train` trains by default
        epochs=epochs,
        device="auto",
    )
    click.echo(f"  trained pumps/{version} on {assets} pumps x {history_hours:g} h")

    live = generate_plant(
        assets,
        int(live_minutes * 60),
        seed=1,
        with_faults=True,
        start_ns=pd.Timestamp(LIVE_START).value,
    )
    write_plant(out_dir / "live", live)
    faults = json.loads((out_dir / "live" / "faults.json").read_text())
    fault_list = faults["events"]
    for asset, (_, events) in live.items():
        kinds = ", ".join(f"{e.kind} at +{e.start // 60} min" for e in events) or "healthy"
        click.echo(f"  live stream {asset}: {kinds}")

    run_id = time.strftime("%Y%m%d%H%M%S")
    topic, database = f"seqae-demo-{run_id}", f"seqae_demo_{run_id}"
    influx_command(ep.influx_url, f'CREATE DATABASE "{database}"')
    config = out_dir / "daemon.toml"
    write_config(config, ep, topic, database, out_dir)

    click.secho("3/5 start the daemon", bold=True)
    log = (out_dir / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "daemon", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        click.secho("4/5 replay the live stream into Kafka; alerts as they happen:", bold=True)
        from daemon.replay import replay_file

        sent = replay_file(
            out_dir / "live" / "plant.csv", topic, [ep.kafka], rate=rate or None, progress=True
        )
        n_live = int(live_minutes * 60)
        # A window is scored once a reading more than max_lateness_s (1 s slots) after its last
        # slot arrives, so the stream's final windows stay open.
        lateness = math.ceil(WindowSettings().max_lateness_s)
        first = pd.Timestamp(LIVE_START).value // 1_000_000_000
        open_from = first + n_live - 1 - lateness  # slots from here on are not final yet
        expected = sum(
            is_window_end(end, window_phase(asset, 5), 5)
            for asset in live
            for end in range(first + 30 - 1, open_from)
        )
        seen: set[tuple[Any, ...]] = set()
        deadline = time.monotonic() + 600
        scored = 0
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise click.ClickException(
                    f"the daemon stopped (exit {daemon.returncode}); see {out_dir / 'daemon.log'}"
                )
            report_alerts(influx_query(ep.influx_url, database, "SELECT * FROM seqae_alert"), seen)
            rows = influx_query(ep.influx_url, database, "SELECT count(score) FROM seqae_score")
            scored = int(rows[0]["count"]) if rows else 0
            if scored >= expected:
                break
            time.sleep(1.0)
        report_alerts(influx_query(ep.influx_url, database, "SELECT * FROM seqae_alert"), seen)
        click.echo(f"  {sent} messages in, {scored} of {expected} windows scored and written")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()

    click.secho("5/5 read back scores and alerts from InfluxDB and plot them", bold=True)
    scores = pd.DataFrame(
        influx_query(ep.influx_url, database, "SELECT score, threshold, asset FROM seqae_score")
    )
    alerts = pd.DataFrame(influx_query(ep.influx_url, database, "SELECT * FROM seqae_alert"))
    png = out_dir / "scores.png"
    plot(png, scores, alerts, fault_list)
    end_ns = pd.Timestamp(LIVE_START).value + int(live_minutes * 60e9)
    detected = summarise(alerts, fault_list, end_ns)
    click.echo(f"  {detected}")
    click.echo(f"  saved {png}; daemon log {out_dir / 'daemon.log'}")


def alert_episodes(alerts: pd.DataFrame, end_ns: int) -> list[tuple[str, int, int]]:
    """(asset, opened, closed) per alert; one still open lasts until `end_ns`."""
    episodes: list[tuple[str, int, int]] = []
    if not len(alerts):
        return episodes
    for asset, rows in alerts.sort_values("time").groupby("asset"):
        opened: int | None = None
        for _, row in rows.iterrows():
            if row["state"] == "open":
                opened = int(row["time"])
            elif row["state"] == "closed" and opened is not None:
                episodes.append((str(asset), opened, int(row["time"])))
                opened = None
        if opened is not None:
            episodes.append((str(asset), opened, end_ns))
    return episodes


def summarise(alerts: pd.DataFrame, faults: list[dict[str, Any]], end_ns: int) -> str:
    """Faults overlapped by an alert, and alerts that overlap no fault."""
    episodes = alert_episodes(alerts, end_ns)

    def overlaps(e: tuple[str, int, int], f: dict[str, Any]) -> bool:
        return e[0] == f["asset"] and e[1] <= f["end_ns"] and e[2] >= f["start_ns"]

    detected = [f for f in faults if any(overlaps(e, f) for e in episodes)]
    missed = [f"{f['asset']} {f['kind']}" for f in faults if f not in detected]
    false = [e for e in episodes if not any(overlaps(e, f) for f in faults)]
    text = f"faults detected: {len(detected)} of {len(faults)}"
    if missed:
        text += f" (missed: {', '.join(missed)})"
    return text + f"; alerts matching no fault: {len(false)}"


if __name__ == "__main__":
    main()
