"""The LSTM sequence autoencoder (EncDec-AD style), readable top to bottom.

An encoder LSTM reads the window, its last hidden state becomes a latent code, and a decoder
LSTM unrolls the code back into the window. The input carries the observation mask beside the
values, so missing samples are known to be missing and never mistaken for zeros; the loss and
the per-channel errors count observed samples only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass
class ModelConfig:
    n_channels: int
    window: int
    hidden_size: int = 64
    latent_size: int = 16
    num_layers: int = 1  # per side; >1 is the "deep" variant
    bidirectional: bool = False  # encoder only
    dropout: float = 0.0  # between stacked LSTM layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=2 * cfg.n_channels,  # values and mask
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        directions = 2 if cfg.bidirectional else 1
        self.to_latent = nn.Linear(directions * cfg.hidden_size, cfg.latent_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x * mask, mask.to(x.dtype)], dim=-1)  # [N, W, 2C]
        _, (h, _) = self.lstm(inp)  # h: [layers * directions, N, H]
        last = h[-2:] if self.lstm.bidirectional else h[-1:]
        return self.to_latent(torch.cat(list(last), dim=-1))  # [N, latent]


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window = cfg.window
        self.lstm = nn.LSTM(
            input_size=cfg.latent_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.to_output = nn.Linear(cfg.hidden_size, cfg.n_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        steps = z.unsqueeze(1).expand(-1, self.window, -1)  # [N, W, latent]
        out, _ = self.lstm(steps)  # [N, W, H]
        return self.to_output(out)  # [N, W, C]


class SequenceAutoencoder(nn.Module):
    kind = "lstm"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, mask))

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward(x, mask)

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(self.forward(x, mask), x, mask)

    def compact(self) -> None:
        """Keep LSTM weights in one contiguous block (call after any dtype or device change)."""
        for module in self.modules():
            if isinstance(module, nn.LSTM):
                module.flatten_parameters()


def masked_mse(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(recon.dtype)
    return ((recon - x) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def channel_errors(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Root-mean-square residual per channel over the observed steps of each window: [N, C]."""
    m = mask.to(torch.float32)
    sq = (recon.float() - x.float()) ** 2 * m
    return (sq.sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).sqrt()
