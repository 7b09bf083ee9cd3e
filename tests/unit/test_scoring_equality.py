"""The batched bookkeeping (score lines made per batch, the alert rule's early return) writes
exactly the `seqae_score` and `seqae_alert` lines of the simple path: each window's point
encoded field by field, the alert rule run window by window with its channels ranked at every
window.

Both runs score the same batches: a forward pass over a batch of 256 and one over a batch of 1
differ in the last bits of some errors (BLAS blocking), before and after the change alike, so
text equality is only defined for the same batches."""

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from daemon.alerts import alert_point
from daemon.backtest import readings
from daemon.codec import Reading
from daemon.core import StreamCore
from daemon.engine import ProfileRegistry, ScoredWindow
from daemon.lineprotocol import Point, encode
from daemon.settings import DaemonSettings
from seqae.alerting import AlertEvent, AlertRule, AlertTracker, _top_channels
from seqae.synth import generate_asset
from seqae.train import train_profile

TP = ("sensors", 0)
PUMPS = 10  # more than score._STACK_FROM distinct baselines in a batch
FAULTY = {"pump-2": ("bearing_wear", 450, 700), "pump-5": ("cavitation", 500, 650)}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    history = [generate_asset(f"pump-{i}", 1500, seed=0, plant_seed=0)[0] for i in (1, 2)]
    train_profile(
        history,
        models_root=root,
        profile="pumps",
        window=20,
        hop=5,
        kind="pca",
        progress=False,
        device="cpu",
    )
    return root


def settings(models_root: Path, state_dir: Path, max_batch: int) -> DaemonSettings:
    return DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models_root),
                "routes": [{"pattern": "pump-*", "profile": "pumps"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": 30},
            "alerts": {"min_duration_s": 10, "clear_duration_s": 10, "update_every_s": 20},
            "engine": {"device": "cpu", "max_batch": max_batch, "max_wait_ms": 0},
        }
    )


def stream() -> list[Reading]:
    """Ten pumps in time order, two with faults."""
    series = []
    for i in range(1, PUMPS + 1):
        asset = f"pump-{i}"
        fault = FAULTY.get(asset)
        one, _ = generate_asset(asset, 900, seed=i, plant_seed=0, faults=[fault] if fault else [])
        series.append(one)
    return list(readings(series))


class ReferenceTracker(AlertTracker):
    """The alert rule as it ran before the early return: channels ranked at every window."""

    def observe(
        self,
        settings: AlertRule,
        time_ns: int,
        score: float,
        threshold: float,
        contributions: np.ndarray,
        channels: Sequence[str],
    ) -> list[AlertEvent]:
        if time_ns <= self.last_ts_ns:
            return []
        self.last_ts_ns = time_ns
        ratio = float(score) / float(threshold) if threshold > 0 else float("inf")
        if math.isnan(ratio):
            return []
        top = _top_channels(contributions, channels, settings.top_channels)
        if self.phase == "open":
            return self._observe_open(settings, time_ns, ratio, score, threshold, top)
        return self._observe_closed(settings, time_ns, ratio, score, threshold, top)


def field_by_field(point: Point) -> str:
    """The generic encoder's text of a point, ignoring any line made in bulk."""
    return encode(dataclasses.replace(point, line=None))


def run(
    models_root: Path, state_dir: Path, reference: bool
) -> tuple[list[str], list[ScoredWindow]]:
    """Replay the stream through a core, scoring every 700 readings: the lines the core's
    points encode to, or with `reference` the lines of the simple path."""
    s = settings(models_root, state_dir, 256)
    core = StreamCore(s, load(models_root))
    trackers: dict[str, ReferenceTracker] = {}
    lines: list[str] = []
    scored: list[ScoredWindow] = []

    def take() -> None:
        for out in core.score(everything=True, wait=True):
            scored.extend(out.scored)
            if not reference:
                lines.extend(encode(p) for p in out.points)
                continue
            for w in out.scored:
                lines.append(field_by_field(w.to_point()))
                if w.state == "calibrating":
                    continue
                tracker = trackers.setdefault(w.asset, ReferenceTracker(w.asset, w.profile))
                events = tracker.observe(
                    s.alerts, w.end_ns, w.score, w.threshold, w.contributions, w.channels
                )
                lines.extend(field_by_field(alert_point(e)) for e in events)

    for offset, reading in enumerate(stream()):
        core.add(reading, TP, offset)
        if offset % 700 == 699:  # several batches, each with many assets' windows
            take()
    take()
    core.close()
    return lines, scored


def load(models_root: Path) -> ProfileRegistry:
    return ProfileRegistry(models_root, ["pumps"], "cpu", "never")


def test_batched_bookkeeping_writes_the_lines_of_the_simple_path(
    models_root: Path, tmp_path: Path
) -> None:
    batched, scored = run(models_root, tmp_path / "batched", reference=False)
    reference, _ = run(models_root, tmp_path / "reference", reference=True)

    # the replay exercised what is to be compared: stacked baselines, states, alerts
    assert len(scored) > 1000
    assert {w.state for w in scored} == {"calibrating", "ok", "shifted"}
    opened = [line for line in batched if line.startswith("seqae_alert") and 'state="open"' in line]
    assert {line.split("asset=")[1].split(",")[0] for line in opened} >= set(FAULTY)
    assert all(w.line is not None for w in scored)

    def measured(lines: list[str], name: str) -> list[str]:
        return sorted(line for line in lines if line.startswith(name + ","))

    for name in ("seqae_score", "seqae_alert"):
        assert measured(batched, name) == measured(reference, name), name


def test_a_bulk_line_is_the_generic_encoding_of_its_point(
    models_root: Path, tmp_path: Path
) -> None:
    _, scored = run(models_root, tmp_path, reference=False)
    points = [w.to_point() for w in scored]
    with_line = [p for p in points if p.line is not None]
    assert len(with_line) > 1000
    assert [p.line for p in with_line] == [field_by_field(p) for p in with_line]


def test_a_late_count_and_odd_names_encode_like_the_generic_path(
    models_root: Path, tmp_path: Path
) -> None:
    from daemon.engine import ScoreLines

    lines = ScoreLines.of("pumps x", "v=1", ["a b", "c,d"])
    assert lines is not None
    w = ScoredWindow(
        asset="pump 7,=x",
        profile="pumps x",
        version="v=1",
        channels=("a b", "c,d"),
        end_ns=1_795_723_200_000_000_000,
        score=1e-7,
        threshold=12345678.25,
        anomalous=False,
        state="shifted",
        gap=True,
        errors=np.array([0.1, 3e20], np.float32),
        contributions=np.zeros(2, np.float32),
        late=3,
    )
    errors = w.errors.tolist()
    w.line = lines.line(
        w.asset, w.end_ns, w.score, w.threshold, w.anomalous, w.state, w.gap, w.late, errors
    )
    assert w.line == field_by_field(w.to_point())
    assert ScoreLines.of("pumps", "", ["a"]) is None  # an empty tag: encoded point by point
