"""PCA T²+Q: the strongest cheap baseline, behind the same interface as the autoencoder.

A window is flattened to W·C numbers and projected on the principal components of the training
windows. Q (squared prediction error) is the residual, reported per channel like the
autoencoder's reconstruction error; Hotelling's T² is the distance inside the principal
subspace, offered to calibration as one extra error feature ("latent").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class PCAConfig:
    n_channels: int
    window: int
    n_components: int = 0  # 0: fitted to explain `variance` of the training windows
    variance: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PCAConfig:
        return cls(**d)


class PCADetector(nn.Module):
    kind = "pca"

    def __init__(self, cfg: PCAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_channels * cfg.window
        k = max(cfg.n_components, 1)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(k, d))  # [k, D], orthonormal rows
        self.register_buffer("eigenvalues", torch.ones(k))

    def fit(self, x: np.ndarray) -> PCADetector:
        """Fit on scaled training windows [N, W, C] with missing samples already zero."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        eig = s**2 / max(len(flat) - 1, 1)
        k = self.cfg.n_components
        if k <= 0:
            explained = np.cumsum(eig) / max(eig.sum(), 1e-12)
            k = int(np.searchsorted(explained, self.cfg.variance) + 1)
        k = min(k, len(eig))
        self.cfg.n_components = k
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.components = torch.tensor(vt[:k], dtype=torch.float32)
        # A principal axis with almost no variance (channels that never moved) must not turn
        # noise into T² of 1e9: floor it at a millionth of the total variance.
        floor = max(1e-6 * float(eig.sum()), 1e-9) if eig.sum() > 0 else 1.0
        self.eigenvalues = torch.tensor(np.maximum(eig[:k], floor), dtype=torch.float32)
        return self

    def _project(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        flat = (x * mask).flatten(1) - self.mean
        return flat @ self.components.T  # [N, k]

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = self._project(x, mask)
        return (t @ self.components + self.mean).view_as(x)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._project(x, mask)

    def latent_distance(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sqrt(T² / k): Hotelling's T² on the same scale as an RMS error."""
        t = self._project(x, mask)
        return ((t**2) / self.eigenvalues).mean(dim=1).sqrt()

    def compact(self) -> None:
        pass
