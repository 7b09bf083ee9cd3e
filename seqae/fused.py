"""LSTM-AE + PCA fused: one detector whose error features are both models' and the code's T².

PCA's Q (the residual off the principal subspace) and T² (the distance inside it) see linear
structure and slow shifts of the whole window; the autoencoder's per-channel reconstruction
error sees what a nonlinear sequence model learnt of the dynamics, and the distance of its latent
code from the training codes (whitened, as PCA's T² is on its scores) sees windows that the
decoder reconstructs well but that sit where no training window's code was. Calibration fits one
Mahalanobis distance over all of them, so each feature is weighed by how much it varies, and
co-varies with the others, on held-out normal windows.

Error features of a window, in this order (`feature_names`):

    ae:<channel> x C    the autoencoder's RMS scaled residual per channel
    code                sqrt(mean of the squared whitened code), when `code_distance`
    pca:<channel> x C   PCA's Q as an RMS residual per channel, when `use_pca`
    pca:T2              sqrt(T² / k), when `use_pca` (offered as the Scorer's latent feature)

The autoencoder's features (its errors and the code distance) are there when `use_ae`. With
`select="auto"`, training decides `use_ae` from normal data alone (`select_features`): the
autoencoder keeps its place only if, on held-out normal windows that neither model was fitted
on, it reconstructs about as well as the best linear autoencoder with a code of the same size
does (PCA with `latent_size` components, fitted on the same windows): its mean squared scaled
residual at most `select_ratio` times that one's. A network that has not learnt its data (on
SKAB, one trained on a file's first 300 rows) falls well short of it, and its errors would only
dilute PCA's; one trained on a long history matches it. `select_by="explained"` asks instead
that it explain at least `select_explained` of the held-out windows' variation, and drops PCA's
features when it explains at least `select_ae_alone`: a network that models nearly all of the
plant's normal variation has found structure a linear model cannot hold, and PCA's residual off
that structure then varies with the operating point (on a normal day of the synthetic plant,
PCA put 12 % of the windows above its threshold, two thirds of the excess from its residual on
the winding temperature, which rises with the square of the current; the network alone 2.7 %). The decision is part of the saved config, so a loaded detector
scores as the trained one did; a retrain decides again.

The whole detector is one module: its weights (the autoencoder's, PCA's mean and components,
the code statistics) go to one safetensors file and its config to model.json under kind "fused".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seqae.model import ModelConfig, SequenceAutoencoder, channel_errors
from seqae.pca import PCAConfig, PCADetector

CODE_SHRINKAGE = 0.05  # share of the mean code variance added to the diagonal before whitening
Selection = Literal["fixed", "auto"]
SELECTIONS = ("fixed", "auto")
SelectBy = Literal["linear-code", "explained"]
SELECT_BY = ("linear-code", "explained")


@dataclass
class FusedConfig:
    n_channels: int
    window: int
    ae: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields but the two above
    pca: dict[str, Any] = field(default_factory=dict)  # PCAConfig fields but the two above
    code_distance: bool = True  # the code's distance, when the autoencoder's features are used
    use_pca: bool = True
    ae_total: bool = False  # the autoencoder's error as one feature (RMS over channels)
    use_ae: bool = True  # the autoencoder's features; set at training when select is "auto"
    select: Selection = "fixed"  # "auto": keep the autoencoder only if it generalises (above)
    # "auto" with select_by "linear-code" keeps it when its held-out error <= this x the
    # linear code's. Chosen on SKAB's valve2 only: the long history gave 0.99-1.01, networks
    # trained on 236 windows 1.18-2.0.
    select_ratio: float = 1.1
    select_by: SelectBy = "linear-code"
    # select_by "explained" keeps it when it explains at least this share of the held-out
    # windows' variation about the mean training window (R²). Chosen on SKAB's valve2 and the
    # synthetic plant's training history: 0.55 and 0.98 there, at most 0.31 on 236 windows.
    select_explained: float = 0.4
    # ... and scores the autoencoder's errors alone when it explains at least this share.
    # Chosen on the plant's training history (0.97-0.98) and SKAB's anomaly-free history (0.55).
    select_ae_alone: float = 0.9

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"fused config select: {self.select!r} is not one of {SELECTIONS}")
        if not (math.isfinite(self.select_ratio) and self.select_ratio > 0):
            raise ValueError(f"fused config select_ratio: must be > 0, got {self.select_ratio}")
        if self.select_by not in SELECT_BY:
            raise ValueError(
                f"fused config select_by: {self.select_by!r} is not one of {SELECT_BY}"
            )
        if not (math.isfinite(self.select_explained) and self.select_explained < 1):
            raise ValueError(
                f"fused config select_explained: must be below 1, got {self.select_explained}"
            )
        if not (self.select_explained < self.select_ae_alone <= 1):
            raise ValueError(
                "fused config select_ae_alone: must be above select_explained and at most 1, "
                f"got {self.select_ae_alone}"
            )
        if not self.use_pca and not self.use_ae:
            raise ValueError("fused config use_pca: False and use_ae False leave no features")
        for part, d in (("ae", self.ae), ("pca", self.pca)):
            clash = {"n_channels", "window"} & set(d)
            if clash:
                raise ValueError(
                    f"fused config {part}: {sorted(clash)} are set once for the whole detector"
                )
        self.ae_config()  # raises ValueError naming a bad field
        self.pca_config()

    def ae_config(self) -> ModelConfig:
        cfg = ModelConfig.from_dict(
            {"n_channels": self.n_channels, "window": self.window, **self.ae}
        )
        if cfg.variant == "variational":
            raise ValueError("fused config ae.variant='variational': use --kind lstm for the VAE")
        return cfg

    def pca_config(self) -> PCAConfig:
        known = {"n_components", "variance"}
        unknown = set(self.pca) - known
        if unknown:
            raise ValueError(f"fused config pca: unknown keys {sorted(unknown)}")
        return PCAConfig(self.n_channels, self.window, **self.pca)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_channels": self.n_channels,
            "window": self.window,
            "ae": dict(self.ae),
            "pca": dict(self.pca),
            "code_distance": self.code_distance,
            "use_pca": self.use_pca,
            "ae_total": self.ae_total,
            "use_ae": self.use_ae,
            "select": self.select,
            "select_ratio": self.select_ratio,
            "select_by": self.select_by,
            "select_explained": self.select_explained,
            "select_ae_alone": self.select_ae_alone,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusedConfig:
        known = {"n_channels", "window", "ae", "pca", "code_distance", "use_pca", "ae_total"}
        known |= {"use_ae", "select", "select_ratio", "select_by", "select_explained"}
        known |= {"select_ae_alone"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown fused config keys {sorted(unknown)}")
        return cls(**d)


class FusedDetector(nn.Module):
    kind = "fused"
    code_mean: torch.Tensor  # [k] mean of the training codes
    code_whiten: torch.Tensor  # [k, k] (z - mean) @ code_whiten is white on them

    def __init__(self, cfg: FusedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ae = SequenceAutoencoder(cfg.ae_config())
        self.pca = PCADetector(cfg.pca_config())
        k = self.ae.cfg.latent_size
        self.register_buffer("code_mean", torch.zeros(k))
        self.register_buffer("code_whiten", torch.eye(k))

    @property
    def uses_code(self) -> bool:
        return self.cfg.use_ae and self.cfg.code_distance

    def feature_names(self, channels: list[str]) -> list[str]:
        names: list[str] = []
        if self.cfg.use_ae:
            names += ["ae"] if self.cfg.ae_total else [f"ae:{c}" for c in channels]
        if self.uses_code:
            names.append("code")
        if self.cfg.use_pca:
            names += [f"pca:{c}" for c in channels] + ["pca:T2"]
        return names

    # --- fitting (the autoencoder itself is trained by seqae.train.train_network) ----------

    def fit_linear(self, x: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """After the autoencoder is trained: fit PCA and the code statistics on scaled
        training windows [N, W, C] (missing samples zero) and their mask. Returns what was
        fitted."""
        info: dict[str, Any] = {}
        if self.cfg.use_pca:
            self.pca.fit(x)
            self.cfg.pca = {**self.cfg.pca, "n_components": self.pca.cfg.n_components}
            info["n_components"] = self.pca.cfg.n_components
        if self.cfg.code_distance:
            self.fit_code_stats(x, mask)
        return info

    @staticmethod
    @torch.no_grad()
    def held_out_error(model: Any, x: np.ndarray, mask: np.ndarray, batch: int = 4096) -> float:
        """The mean squared residual per observed sample of `model`'s reconstruction of scaled
        windows [N, W, C] (missing samples zero) with their mask, on the model's device."""
        model.eval()
        device = _device_of(model)
        total = 0.0
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(x[i : i + batch], dtype=torch.float32, device=device)
            mb = torch.as_tensor(mask[i : i + batch], dtype=torch.bool, device=device)
            total += float((((model.reconstruct(xb, mb).float() - xb) ** 2) * mb).sum())
        return total / max(float(mask.sum()), 1.0)

    def select_features(self, fit_x: np.ndarray, x: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """Decide `use_ae` once the autoencoder is trained: `fit_x` are the windows it was
        fitted on [N, W, C] (missing samples zero), `x` and `mask` held-out normal windows that
        neither it nor PCA saw. With `select_by` "linear-code" the autoencoder's features stay
        when its mean squared residual on them is at most `select_ratio` times that of a PCA
        with as many components as the autoencoder's code has numbers, fitted on `fit_x` (the
        best linear autoencoder of its size); with "explained", when it explains at least
        `select_explained` of their squared residual off the mean training window, and PCA's
        are dropped when it explains at least `select_ae_alone`. Returns the evidence, for the
        model's metadata. Scoring without PCA needs the class `build_fused` gives for it:
        `as_selected` returns that."""
        if not self.cfg.use_pca:
            raise ValueError("fused select_features: needs use_pca, to fall back on")
        if not len(x):
            raise ValueError("fused select_features: no held-out windows to decide on")
        k = self.ae.cfg.latent_size
        linear = PCADetector(PCAConfig(self.cfg.n_channels, self.cfg.window, n_components=k))
        linear.fit(fit_x)
        ae = self.held_out_error(self.ae, x, mask)
        same_code = self.held_out_error(linear, x, mask)
        ratio = ae / max(same_code, 1e-12)
        # The variation to explain: the residual off the mean training window (missing = 0).
        mean_window = MeanWindow(fit_x.mean(axis=0))
        spread = max(self.held_out_error(mean_window, x, mask), 1e-12)
        explained = 1.0 - ae / spread
        if self.cfg.select_by == "linear-code":
            self.cfg.use_ae = bool(ratio <= self.cfg.select_ratio)
        else:
            self.cfg.use_ae = bool(explained >= self.cfg.select_explained)
            self.cfg.use_pca = bool(explained < self.cfg.select_ae_alone)
        selected = {(True, True): "ae+pca", (False, True): "pca", (True, False): "ae"}
        return {
            "selected": selected[self.cfg.use_ae, self.cfg.use_pca],
            "select_by": self.cfg.select_by,
            "held_out_windows": len(x),
            "ae_held_out_mse": ae,
            "linear_code_held_out_mse": same_code,  # PCA with the code's size
            "pca_held_out_mse": self.held_out_error(self.pca, x, mask),  # the detector's PCA
            "mean_window_held_out_mse": spread,
            "ae_to_linear_code": ratio,
            "ae_explained": explained,
        }

    @torch.no_grad()
    def fit_code_stats(self, x: np.ndarray, mask: np.ndarray, batch: int = 4096) -> None:
        """Mean and whitening of the autoencoder's codes of the windows [N, W, C]."""
        self.ae.eval()
        device = _device_of(self.ae)  # the trainer moves only the autoencoder to its device
        xt = torch.as_tensor(x, dtype=torch.float32)
        mt = torch.as_tensor(mask, dtype=torch.bool)
        codes = []
        for i in range(0, len(xt), batch):
            xb, mb = xt[i : i + batch].to(device), mt[i : i + batch].to(device)
            codes.append(self.ae.encode(xb, mb).double().cpu())
        z = torch.cat(codes).numpy()
        mean = z.mean(axis=0)
        cov = np.cov(z - mean, rowvar=False).reshape(len(mean), len(mean))
        cov += np.eye(len(mean)) * (CODE_SHRINKAGE * np.trace(cov) / len(mean) + 1e-9)
        inv_chol = np.linalg.inv(np.linalg.cholesky(cov))  # cov = L L^T; L^-1 whitens
        self.code_mean = torch.tensor(mean, dtype=torch.float32, device=device)
        # Contiguous, as a reloaded tensor is: the same layout gives bit-identical scores.
        whiten = np.ascontiguousarray(inv_chol.T)
        self.code_whiten = torch.tensor(whiten, dtype=torch.float32, device=device)

    # --- scoring -----------------------------------------------------------------------------

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The autoencoder's reconstruction (what `seqae denoise` and plots show)."""
        return self.ae.reconstruct(x, mask)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The code of each window (`seqae embed`): the autoencoder's, or PCA's scores when
        the autoencoder's features were not kept."""
        return self.ae.encode(x, mask) if self.cfg.use_ae else self.pca.encode(x, mask)

    def code_distance(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """RMS of the whitened code [N]: the code's T² / k, square-rooted (an error's scale)."""
        u = (self.ae.encode(x, mask).float() - self.code_mean) @ self.code_whiten
        return (u**2).mean(dim=1).sqrt()

    def channel_errors(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Error features [N, F] but the last (PCA's T², `latent_distance`)."""
        parts = []
        if self.cfg.use_ae:
            ae = channel_errors(self.ae.reconstruct(x, mask), x, mask)  # [N, C]
            parts.append((ae**2).mean(dim=1, keepdim=True).sqrt() if self.cfg.ae_total else ae)
        if self.uses_code:
            parts.append(self.code_distance(x, mask)[:, None])  # [N, 1]
        if self.cfg.use_pca:
            parts.append(channel_errors(self.pca.reconstruct(x, mask), x, mask))  # [N, C]
        return torch.cat(parts, dim=1)

    def feature_channels(self) -> np.ndarray:
        """The channel of each error feature [F], -1 for a feature of the whole window (the
        code's distance, PCA's T², the autoencoder's total error)."""
        c = np.arange(self.cfg.n_channels)
        parts = [np.zeros(0, np.int64)]
        if self.cfg.use_ae:
            parts.append(np.array([-1]) if self.cfg.ae_total else c)
        if self.uses_code:
            parts.append(np.array([-1]))
        if self.cfg.use_pca:
            parts += [c, np.array([-1])]
        return np.concatenate(parts)

    @property
    def n_features(self) -> int:
        return len(self.feature_channels())

    def fold_contributions(self, contrib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature score contributions [N, F] as (per channel [N, C], whole window [N]):
        a channel's autoencoder and PCA terms added, the window-wide terms added; the two
        parts sum to the score."""
        which = self.feature_channels()
        per_channel = np.zeros((len(contrib), self.cfg.n_channels), contrib.dtype)
        for j, ch in enumerate(which):
            if ch >= 0:
                per_channel[:, ch] += contrib[:, j]
        return per_channel, contrib[:, which < 0].sum(axis=1)

    def compact(self) -> None:
        self.ae.compact()


class FusedWithT2(FusedDetector):
    """The fused detector with PCA: PCA's T² is the Scorer's latent feature (the last one).
    `build_fused` picks this class when `use_pca` is on, since the Scorer looks for the
    method by name."""

    def latent_distance(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pca.latent_distance(x, mask)


def _device_of(model: nn.Module) -> torch.device:
    first: torch.Tensor | None = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


class MeanWindow(nn.Module):
    """Reconstructs every window as one fixed window: the yardstick of `select_features`."""

    window: torch.Tensor  # [W, C]

    def __init__(self, window: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("window", torch.as_tensor(window, dtype=torch.float32))

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.window.expand_as(x)


def build_fused(cfg: FusedConfig) -> FusedDetector:
    return FusedWithT2(cfg) if cfg.use_pca else FusedDetector(cfg)


def as_selected(detector: FusedDetector) -> FusedDetector:
    """`detector` as `build_fused` builds it for its config, weights kept: after
    `select_features` dropped PCA, the class without PCA's T² (what a reload gives)."""
    if isinstance(detector, FusedWithT2) == detector.cfg.use_pca:
        return detector
    rebuilt = build_fused(detector.cfg)
    rebuilt.load_state_dict(detector.state_dict())
    return rebuilt.to(_device_of(detector))


def fused_config(n_channels: int, window: int, model_cfg: dict[str, Any] | None) -> FusedConfig:
    """A FusedConfig from `seqae train`-style options: the autoencoder's keys at the top level
    (hidden_size, latent_size, ...), or nested under "ae"; the detector's own keys ("pca",
    "code_distance", "use_pca", "ae_total", "use_ae", "select", "select_ratio", "select_by",
    "select_explained", "select_ae_alone") as in FusedConfig. With select "auto", use_ae and
    use_pca start True: they are what training decides (a retrain decides again)."""
    d = dict(model_cfg or {})
    mine = {"pca", "code_distance", "use_pca", "ae_total", "use_ae", "select", "select_ratio"}
    mine |= {"select_by", "select_explained", "select_ae_alone"}
    own = {k: d.pop(k) for k in mine if k in d}
    if own.get("select") == "auto":
        own.update(use_ae=True, use_pca=True)
    ae = {**d.pop("ae", {}), **d}
    return FusedConfig(n_channels, window, ae=ae, **own)
