"""Training: a plain loop with a time-ordered split, early stopping and progress.

Each normal series is split in time: the first part trains the network (its tail decides early
stopping), the last part is held out for calibration, never seen by the optimiser.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from seqae.artifacts import ModelMeta, save_model
from seqae.calibrate import (
    MIN_CALIBRATION_WINDOWS,
    Baseline,
    ScoreKind,
    ThresholdPolicy,
    fit_baseline,
    input_range,
)
from seqae.data import (
    DataError,
    RobustScaler,
    Series,
    make_windows,
    missing_share,
    nan_to_mask,
    regularize,
)
from seqae.fused import as_selected, build_fused, fused_config
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.pca import PCAConfig, PCADetector
from seqae.score import Scorer, pick_device

if TYPE_CHECKING:
    from seqae.alerting import AlertRule

DetectorKind = Literal["auto", "lstm", "pca", "fused"]
# `--kind auto`, the default of `seqae train`: the fused detector whose training decides from
# normal data which features it scores (FusedConfig: the autoencoder's errors, PCA's, or both),
# without the code's distance. benchmarks/RESULTS.md, "Session 8", has the evidence.
AUTO_DETECTOR: dict[str, Any] = {"select": "auto", "select_by": "explained", "code_distance": False}
MAX_MISSING_SHARE = 0.5  # training refuses a series with more of its grid samples missing


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without validation improvement before stopping
    val_fraction: float = 0.15  # tail of the training span used for early stopping
    calib_fraction: float = 0.2  # last part of each series, held out for calibration
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    max_fill: int = 3


@dataclass
class PreparedData:
    train: np.ndarray  # scaled windows [N, W, C], NaN = missing
    val: np.ndarray
    calib: np.ndarray  # raw windows, stats part first then threshold part
    calib_split: int
    scaler: RobustScaler
    known_range: tuple[np.ndarray, np.ndarray]  # the normal inputs seen (reported)
    summary: dict[str, Any] = field(default_factory=dict)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(
    series: Sequence[Series], *, window: int, hop: int, period_s: float, cfg: TrainConfig
) -> PreparedData:
    """Regular grid, time-ordered split, scaler fitted on the training span only, windows."""
    if not series:
        raise DataError("no training series given")
    check_geometry(window, hop, cfg)
    channels = series[0].channels
    grids = []
    for s in series:
        if s.channels != channels:
            raise DataError(f"series {s.asset!r} has channels {s.channels}, expected {channels}")
        if s.labels is not None and s.labels.any():
            raise DataError(f"series {s.asset!r} has anomalous labels: train on normal data only")
        grid = regularize(s, period_s, cfg.max_fill).values
        share = missing_share(grid)
        if share > MAX_MISSING_SHARE:
            raise DataError(
                f"series {s.asset!r}: {share:.0%} of its samples on the {period_s:g} s grid are "
                f"missing, so its windows would be mostly masked (at most "
                f"{MAX_MISSING_SHARE:.0%} may be): is the sampling period right?"
            )
        grids.append(grid)
    check_enough_rows(grids, series, window=window, hop=hop, period_s=period_s, cfg=cfg)
    train_raw, val_raw, calib_stats, calib_thr, fit_rows, all_rows = [], [], [], [], [], []
    for grid in grids:
        n_train, n_fit = split_rows(len(grid), cfg)
        fit_rows.append(grid[:n_train])
        all_rows.append(grid)
        train_raw.append(make_windows(grid[:n_train], window, hop)[0])
        val_raw.append(make_windows(grid[n_train:n_fit], window, hop)[0])
        calib = make_windows(grid[n_fit:], window, hop)[0]
        # The threshold part starts a window after the statistics part ends: no shared sample.
        gap = calibration_gap(window, hop)
        half = max((len(calib) - gap) // 2, 0)
        calib_stats.append(calib[:half])
        calib_thr.append(calib[half + gap :])
    scaler = RobustScaler.fit(np.concatenate(fit_rows), channels)
    train = np.concatenate(train_raw)
    val = np.concatenate(val_raw)
    stats = np.concatenate(calib_stats)
    summary = {
        "series": len(series),
        "rows": int(sum(len(s) for s in series)),
        "train_windows": len(train),
        "val_windows": len(val),
        "calib_windows": len(stats) + sum(len(c) for c in calib_thr),
        "start": min(int(s.timestamps[0]) for s in series),
        "end": max(int(s.timestamps[-1]) for s in series),
        "assets": [s.asset for s in series],
        # constant, flag-like, mostly or nearly constant channels, and ones on another scale
        "degenerate_channels": [note.to_dict() for note in scaler.notes],
    }
    return PreparedData(
        train=scaler.transform(train),
        val=scaler.transform(val),
        calib=np.concatenate([stats, *calib_thr]),
        calib_split=len(stats),
        known_range=input_range(np.concatenate(all_rows)),
        scaler=scaler,
        summary=summary,
    )


def check_geometry(window: int, hop: int, cfg: TrainConfig) -> None:
    """Refuse a window, hop or split that no amount of data can satisfy, before any row is
    counted (a zero hop or fraction would otherwise fail deep inside, or never finish)."""
    if window < 2 or hop < 1:
        raise DataError(f"window must be >= 2 and hop >= 1, got window={window} hop={hop}")
    for name, value in (("val_fraction", cfg.val_fraction), ("calib_fraction", cfg.calib_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"{name} must be between 0 and 1 (exclusive), got {value}")


def split_rows(n: int, cfg: TrainConfig) -> tuple[int, int]:
    """(end of the training rows, end of the early-stopping rows) of a series of `n` grid rows;
    the rows after the second are held out for calibration."""
    n_fit = int(n * (1.0 - cfg.calib_fraction))
    return int(n_fit * (1.0 - cfg.val_fraction)), n_fit


def calibration_gap(window: int, hop: int) -> int:
    """Windows skipped between the statistics and the threshold parts so they share no sample."""
    return -(-window // hop) - 1


def _windows(rows: int, window: int, hop: int) -> int:
    return (rows - window) // hop + 1 if rows >= window else 0


def calibration_windows(n: int, window: int, hop: int, cfg: TrainConfig) -> tuple[int, int]:
    """(statistics windows, threshold windows) that a series of `n` grid rows holds out."""
    _, n_fit = split_rows(n, cfg)
    held_out = _windows(n - n_fit, window, hop)
    gap = calibration_gap(window, hop)
    half = max((held_out - gap) // 2, 0)
    return half, max(held_out - half - gap, 0)


def rows_needed(window: int, hop: int, cfg: TrainConfig) -> int:
    """The fewest grid rows one series needs to train, stop early and calibrate on its own."""

    def enough(n: int) -> bool:
        n_train, n_fit = split_rows(n, cfg)
        stats, thr = calibration_windows(n, window, hop, cfg)
        least = MIN_CALIBRATION_WINDOWS // 2
        return n_train >= window and n_fit - n_train >= window and min(stats, thr) >= least

    calib_rows = (MIN_CALIBRATION_WINDOWS + calibration_gap(window, hop) - 1) * hop + window
    # A series of n rows holds out fewer than n * fraction + 1 of them: start below the answer.
    n = max(window, int((calib_rows - 1) / max(cfg.calib_fraction, 1e-9)))
    while not enough(n):
        n += 1
    return n


def check_enough_rows(
    grids: Sequence[np.ndarray],
    series: Sequence[Series],
    *,
    window: int,
    hop: int,
    period_s: float,
    cfg: TrainConfig,
) -> None:
    """Refuse, before any training, series too short to train and calibrate on, naming the
    rows they have and the rows needed."""
    need = rows_needed(window, hop, cfg)
    setting = (
        f"window {window}, hop {hop}, calibration fraction {cfg.calib_fraction:g} and "
        f"validation fraction {cfg.val_fraction:g}"
    )
    for grid, s in zip(grids, series, strict=True):
        n_train, n_fit = split_rows(len(grid), cfg)
        if min(n_train, n_fit - n_train, len(grid) - n_fit) < window:
            raise DataError(
                f"series {s.asset!r}: {len(grid)} samples on the {period_s:g} s grid are too few "
                f"to train and calibrate on; with {setting} a series needs at least {need}"
            )
    counts = [calibration_windows(len(g), window, hop, cfg) for g in grids]
    stats, thr = sum(c[0] for c in counts), sum(c[1] for c in counts)
    least = MIN_CALIBRATION_WINDOWS // 2
    if min(stats, thr) < least:
        rows = ", ".join(str(len(g)) for g in grids)
        raise DataError(
            f"the held-out calibration data gives {stats} + {thr} windows, {least} are needed on "
            f"each side of the split: with {setting} a series needs at least {need} samples on "
            f"the {period_s:g} s grid (given: {rows})"
        )


def train_network(
    model: SequenceAutoencoder,
    train: np.ndarray,
    val: np.ndarray,
    cfg: TrainConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """The loop: shuffle, step, validate, keep the best weights, stop when patience runs out."""
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    x_train, m_train = (torch.from_numpy(a) for a in nan_to_mask(train))
    x_val, m_val = (torch.from_numpy(a).to(device) for a in nan_to_mask(val))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    generator = torch.Generator().manual_seed(cfg.seed)
    best_val, best_state, best_epoch, stale = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        model.start_epoch(epoch)  # KL annealing of the variational variant
        started, total, seen = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(x_train), generator=generator).split(cfg.batch_size):
            xb, mb = x_train[idx].to(device), m_train[idx].to(device)
            with autocast(use_amp):
                loss = model.loss(xb, mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        rate = seen / max(time.perf_counter() - started, 1e-9)
        val_loss = evaluate_loss(model, x_val, m_val, use_amp, cfg.batch_size * 8)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss})
        bar.set_postfix(
            loss=f"{total / max(seen, 1):.4f}", val=f"{val_loss:.4f}", win_s=f"{rate:.0f}"
        )
        if val_loss < best_val - 1e-6:
            best_val, best_state, best_epoch, stale = (
                val_loss,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return {
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "epochs_run": len(history),
        "history": history,
    }


def autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_loss(
    model: SequenceAutoencoder, x: torch.Tensor, m: torch.Tensor, use_amp: bool, batch: int
) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        with autocast(use_amp):
            total += float(model.loss(x[i : i + batch], m[i : i + batch])) * len(x[i : i + batch])
        count += len(x[i : i + batch])
    return total / max(count, 1)


@dataclass
class FittedProfile:
    detector: Any
    baseline: Baseline
    meta: ModelMeta


def fit_profile(
    series: Sequence[Series],
    *,
    profile: str,
    window: int,
    hop: int,
    period_s: float,
    kind: DetectorKind = "lstm",
    model_cfg: dict[str, Any] | None = None,
    train_cfg: TrainConfig | None = None,
    score_kind: ScoreKind = "mahalanobis",
    policy: ThresholdPolicy | None = None,
    rule: AlertRule | None = None,
    progress: bool = True,
) -> FittedProfile:
    """Train a detector on normal series and calibrate its default baseline on held-out data.
    Kind "auto" is kind "fused" with AUTO_DETECTOR under `model_cfg`."""
    if kind == "auto":
        kind, model_cfg = "fused", {**AUTO_DETECTOR, **(model_cfg or {})}
    cfg = train_cfg or TrainConfig()
    set_seed(cfg.seed)
    data = prepare(series, window=window, hop=hop, period_s=period_s, cfg=cfg)
    channels = series[0].channels
    started = time.perf_counter()
    detector: Any
    if kind == "pca":
        detector = PCADetector(PCAConfig(len(channels), window, **(model_cfg or {})))
        detector.fit(nan_to_mask(np.concatenate([data.train, data.val]))[0])
        fit_info: dict[str, Any] = {"n_components": detector.cfg.n_components}
    elif kind == "fused":
        detector = build_fused(fused_config(len(channels), window, model_cfg))
        fit_info = train_network(detector.ae, data.train, data.val, cfg, progress)
        fit_x, fit_mask = nan_to_mask(np.concatenate([data.train, data.val]))
        fit_info.update(detector.fit_linear(fit_x, fit_mask))
        if detector.cfg.select == "auto":  # judged on the calibration windows, unseen by both
            held_out = nan_to_mask(data.scaler.transform(data.calib))
            fit_info["selection"] = detector.select_features(fit_x, *held_out)
            detector = as_selected(detector)
    else:
        detector = SequenceAutoencoder(ModelConfig(len(channels), window, **(model_cfg or {})))
        fit_info = train_network(detector, data.train, data.val, cfg, progress)
    train_seconds = time.perf_counter() - started
    scorer = Scorer(detector, device=cfg.device)
    baseline = fit_baseline(
        scorer,
        data.calib,
        hop=hop,
        score_kind=score_kind,
        policy=policy,
        rule=rule,
        scaler=data.scaler,
        period_s=period_s,
        split=data.calib_split,
        known_range=data.known_range,
        # non-overlapping windows: the envelope needs their means only
        envelope=[make_windows(s.values, window, window)[0] for s in series if len(s) >= window],
    )
    meta = ModelMeta(
        profile=profile,
        kind=kind,
        config={},
        channels=list(channels),
        period_s=period_s,
        window=window,
        hop=hop,
        training={
            **data.summary,
            "train_config": asdict(cfg),
            "train_seconds": round(train_seconds, 3),
            **{k: v for k, v in fit_info.items() if k != "history"},
        },
        validation={"calibration": dict(baseline.info)},
    )
    detector.cpu()
    return FittedProfile(detector, baseline, meta)


def train_profile(
    series: list[Series],
    *,
    models_root: Path,
    profile: str,
    window: int,
    hop: int,
    period_s: float = 1.0,
    kind: DetectorKind = "lstm",
    epochs: int = 40,
    seed: int = 0,
    model_cfg: dict[str, Any] | None = None,
    score_kind: ScoreKind = "mahalanobis",
    policy: ThresholdPolicy | None = None,
    rule: AlertRule | None = None,
    device: str = "auto",
    progress: bool = True,
    promote_now: bool = True,
    calibration_fraction: float | None = None,
) -> str:
    """Fit, calibrate and save a profile; returns the new version. `calibration_fraction` is
    the last share of each series held out for calibration (default: TrainConfig's)."""
    cfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    if calibration_fraction is not None:
        if not 0.0 < calibration_fraction < 1.0:
            raise ValueError(
                f"calibration fraction must be between 0 and 1, got {calibration_fraction}"
            )
        cfg.calib_fraction = calibration_fraction
    fitted = fit_profile(
        series,
        profile=profile,
        window=window,
        hop=hop,
        period_s=period_s,
        kind=kind,
        model_cfg=model_cfg,
        train_cfg=cfg,
        score_kind=score_kind,
        policy=policy,
        rule=rule,
        progress=progress,
    )
    return save_model(
        Path(models_root), profile, fitted.detector, fitted.baseline, fitted.meta, promote_now
    )
