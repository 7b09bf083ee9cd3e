"""The LSTM sequence autoencoder (EncDec-AD style) and its variants, readable top to bottom.

An encoder LSTM reads the window, its last hidden state becomes a latent code, and a decoder
LSTM unrolls the code back into the window. The input carries the observation mask beside the
values, so missing samples are known to be missing and never mistaken for zeros; the loss and
the per-channel errors count observed samples only.

One config selects the variant; each differs from the plain model by one idea:

- plain:        reconstruct the window.
- deep:         the same with `num_layers` >= 2 stacked LSTM layers on each side.
- denoising:    the input is corrupted (Gaussian noise, randomly masked samples); the target is
                the clean window, masked samples included, so the model learns to impute.
- sparse:       an L1 penalty on the latent code, or a KL penalty pulling the mean activation
                of a sigmoid code towards a small target rate (Ng's sparse autoencoder).
- contractive:  a penalty on ||dz/dx||_F², estimated with random projections (see
                `jacobian_frobenius_sq`).
- variational:  an LSTM-VAE: the encoder gives a Gaussian posterior (mean, log-variance), the
                decoder a Gaussian likelihood with a learned per-channel variance; the KL term
                is annealed in over `kl_anneal_epochs`. Scoring uses the expected error over a
                fixed set of latent samples, so it is deterministic.

`loss()` in training mode is the variant's objective; in eval mode it is the objective used for
early stopping: the clean, deterministic reconstruction error (plus the full-weight KL for the
VAE, whose annealed training loss is not comparable across epochs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import torch
from torch import nn

Variant = Literal["plain", "deep", "denoising", "sparse", "contractive", "variational"]
VARIANTS: tuple[str, ...] = get_args(Variant)
SparsityKind = Literal["l1", "kl"]
LOG_VAR_MIN, LOG_VAR_MAX = -9.0, 5.0  # keeps exp(log_var) finite for perfectly fitted channels


@dataclass
class ModelConfig:
    n_channels: int
    window: int
    hidden_size: int = 64
    latent_size: int = 16
    num_layers: int = 1  # per side; >= 2 for "deep"
    bidirectional: bool = False  # encoder only
    dropout: float = 0.0  # between stacked LSTM layers
    variant: Variant = "plain"
    # denoising
    noise_std: float = 0.1  # Gaussian noise on the scaled input
    mask_prob: float = 0.1  # share of observed samples hidden from the encoder
    # sparse
    sparsity: SparsityKind = "l1"
    sparsity_weight: float = 1e-2
    sparsity_target: float = 0.05  # "kl": target mean activation of the sigmoid code
    # contractive
    contractive_weight: float = 1e-2
    contractive_projections: int = 1  # random projections per step in the ||J||_F² estimate
    # variational
    kl_weight: float = 1.0  # beta; 1 is the evidence lower bound
    kl_anneal_epochs: int = 10  # linear warm-up of beta from 0
    vae_samples: int = 8  # latent samples for the expected error at scoring time

    def __post_init__(self) -> None:
        checks = [
            ("variant", self.variant in VARIANTS, f"must be one of {list(VARIANTS)}"),
            ("n_channels", self.n_channels >= 1, "must be >= 1"),
            ("window", self.window >= 2, "must be >= 2"),
            ("hidden_size", self.hidden_size >= 1, "must be >= 1"),
            ("latent_size", self.latent_size >= 1, "must be >= 1"),
            ("num_layers", self.num_layers >= 1, "must be >= 1"),
            (
                "num_layers",
                self.variant != "deep" or self.num_layers >= 2,
                "the 'deep' variant needs num_layers >= 2",
            ),
            ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
            ("noise_std", self.noise_std >= 0.0, "must be >= 0"),
            ("mask_prob", 0.0 <= self.mask_prob < 1.0, "must be in [0, 1)"),
            ("sparsity", self.sparsity in get_args(SparsityKind), "must be 'l1' or 'kl'"),
            ("sparsity_weight", self.sparsity_weight >= 0.0, "must be >= 0"),
            ("sparsity_target", 0.0 < self.sparsity_target < 1.0, "must be in (0, 1)"),
            ("contractive_weight", self.contractive_weight >= 0.0, "must be >= 0"),
            ("contractive_projections", self.contractive_projections >= 1, "must be >= 1"),
            ("kl_weight", self.kl_weight >= 0.0, "must be >= 0"),
            ("kl_anneal_epochs", self.kl_anneal_epochs >= 0, "must be >= 0"),
            ("vae_samples", self.vae_samples >= 1, "must be >= 1"),
        ]
        for name, ok, reason in checks:
            if not ok:
                raise ValueError(f"model config {name}={getattr(self, name)!r}: {reason}")

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
        # KL sparsity acts on activation rates, so that code is a sigmoid layer.
        self.sigmoid_code = cfg.variant == "sparse" and cfg.sparsity == "kl"
        # The VAE's posterior log-variance; absent (no weights) for the other variants.
        self.to_log_var = (
            nn.Linear(directions * cfg.hidden_size, cfg.latent_size)
            if cfg.variant == "variational"
            else None
        )

    def summary(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x * mask, mask.to(x.dtype)], dim=-1)  # [N, W, 2C]
        _, (h, _) = self.lstm(inp)  # h: [layers * directions, N, H]
        last = h[-2:] if self.lstm.bidirectional else h[-1:]
        return torch.cat(list(last), dim=-1)  # [N, directions * H]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The latent code [N, latent] (the posterior mean for the VAE)."""
        code = self.to_latent(self.summary(x, mask))
        return torch.sigmoid(code) if self.sigmoid_code else code

    def posterior(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.to_log_var is None:
            raise ValueError("only the 'variational' variant has a posterior")
        h = self.summary(x, mask)
        log_var = self.to_log_var(h).clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        return self.to_latent(h), log_var  # [N, latent] each


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
    score_eps: torch.Tensor  # variational only

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.epoch = 0  # set by the training loop; drives KL annealing
        if cfg.variant == "variational":
            # log sigma² of the Gaussian likelihood per channel, learned ("calibrated decoder").
            self.out_log_var = nn.Parameter(torch.zeros(cfg.n_channels))
            # Fixed, antithetic latent noise for scoring: every window sees the same samples,
            # so a window's score does not depend on the batch it arrives in.
            half = torch.randn(
                (cfg.vae_samples + 1) // 2,
                cfg.latent_size,
                generator=torch.Generator().manual_seed(0),
            )
            eps = torch.cat([half, -half])[: cfg.vae_samples]
            self.register_buffer("score_eps", eps, persistent=False)  # [S, latent]

    @property
    def variational(self) -> bool:
        return self.cfg.variant == "variational"

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def kl_beta(self) -> float:
        """The KL weight this epoch: linear from 0 to `kl_weight` over `kl_anneal_epochs`."""
        ramp = self.cfg.kl_anneal_epochs
        return self.cfg.kl_weight * (1.0 if ramp == 0 else min(1.0, self.epoch / ramp))

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The latent code per window [N, latent]; the posterior mean for the VAE."""
        return self.encoder(x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, mask))

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction [N, W, C] (the VAE decodes its posterior mean)."""
        return self.forward(x, mask)

    def channel_errors(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-channel RMS error [N, C]. For the VAE, the expected squared error over the fixed
        latent samples z = mu + sigma * eps: the Gaussian negative log-likelihood per channel up
        to a per-channel affine map, which the error statistics absorb."""
        if not self.variational:
            return channel_errors(self.reconstruct(x, mask), x, mask)
        mu, log_var = self.encoder.posterior(x, mask)
        eps = self.score_eps.to(mu.dtype)
        s, n = len(eps), len(mu)
        z = mu.unsqueeze(0) + (0.5 * log_var).exp().unsqueeze(0) * eps[:, None, :]  # [S, N, k]
        recon = self.decoder(z.reshape(s * n, -1)).reshape(s, n, *x.shape[1:])
        m = mask.to(torch.float32)
        sq = ((recon.float() - x.float()) ** 2).mean(dim=0) * m  # [N, W, C]
        return (sq.sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).sqrt()

    def reconstruction_nll(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The VAE's negative log-likelihood of each window per time step [N] in nats: the
        Gaussian NLL under N(decoder(z), exp(out_log_var)), expected over the fixed latent
        samples, averaged over each channel's observed steps and summed over channels. The
        score kind "likelihood" computes the same from `channel_errors` and `out_log_var`."""
        if not self.variational:
            raise ValueError("only the 'variational' variant has a reconstruction likelihood")
        err_sq = self.channel_errors(x, mask) ** 2  # [N, C] expected mean squared error
        lv = self.out_log_var.float().clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        return (0.5 * (err_sq / lv.exp() + lv + math.log(2 * math.pi))).sum(dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Windows [N, W, C] (scaled units) from latent codes [N, latent]."""
        return self.decoder(z)

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if self.variational:
            return self.vae_loss(x, mask, self.kl_beta() if self.training else cfg.kl_weight)
        if not self.training:
            return masked_mse(self.forward(x, mask), x, mask)
        x_in, mask_in = x, mask
        if cfg.variant == "denoising":
            x_in, mask_in = corrupt(x, mask, cfg.noise_std, cfg.mask_prob)
        if cfg.variant == "contractive":
            x_in = x_in.detach().requires_grad_(True)
            with cudnn_double_backward():
                z = self.encoder(x_in, mask_in)
        else:
            z = self.encoder(x_in, mask_in)
        # The target is always the clean window over every observed sample.
        loss = masked_mse(self.decoder(z), x, mask)
        if cfg.variant == "sparse":
            loss = loss + cfg.sparsity_weight * sparsity_penalty(
                z, cfg.sparsity, cfg.sparsity_target
            )
        if cfg.variant == "contractive":
            j2 = jacobian_frobenius_sq(z, x_in, cfg.contractive_projections, create_graph=True)
            loss = loss + cfg.contractive_weight * j2.mean()
        return loss

    def vae_loss(self, x: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
        """Negative ELBO per observed sample: Gaussian NLL + beta * KL / observed samples.
        In eval mode z is the posterior mean (deterministic early stopping)."""
        mu, log_var = self.encoder.posterior(x, mask)
        z = reparameterize(mu, log_var) if self.training else mu
        nll = gaussian_nll(self.decoder(z), x, mask, self.out_log_var)
        kl = gaussian_kl(mu.float(), log_var.float()).sum()
        return nll + beta * kl / mask.sum().clamp_min(1)

    def compact(self) -> None:
        """Keep LSTM weights in one contiguous block (call after any dtype or device change)."""
        for module in self.modules():
            if isinstance(module, nn.LSTM):
                module.flatten_parameters()


# Loss terms ------------------------------------------------------------------------------------


def masked_mse(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(recon.dtype)
    return ((recon - x) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def channel_errors(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Root-mean-square residual per channel over the observed steps of each window: [N, C]."""
    m = mask.to(torch.float32)
    sq = (recon.float() - x.float()) ** 2 * m
    return (sq.sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).sqrt()


def corrupt(
    x: torch.Tensor, mask: torch.Tensor, noise_std: float, mask_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising input: Gaussian noise on every value, and a random share of the observed
    samples hidden (masked) from the encoder."""
    noisy = x + noise_std * torch.randn_like(x)
    keep = torch.rand_like(x) >= mask_prob
    return noisy, mask & keep


def sparsity_penalty(z: torch.Tensor, kind: SparsityKind, target: float) -> torch.Tensor:
    """ "l1": mean |z|. "kl": KL(target || mean activation) summed over the units of the sigmoid
    code z, the classic sparse-autoencoder penalty."""
    if kind == "l1":
        return z.abs().mean()
    rho_hat = z.float().mean(dim=0).clamp(1e-6, 1 - 1e-6)  # [latent]
    rho = target
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


def jacobian_frobenius_sq(
    z: torch.Tensor, x: torch.Tensor, projections: int | None, create_graph: bool = False
) -> torch.Tensor:
    """||dz_i/dx_i||_F² per window [N], with z [N, k] computed from x [N, W, C].

    Hutchinson's random-projection estimate: for v ~ N(0, I_k), E[||vᵀJ||²] = tr(J Jᵀ) =
    ||J||_F². Each projection is one vector-Jacobian product (one backward pass through the
    encoder) instead of k of them for the exact norm, so the cost does not grow with the latent
    size or the W·C input size. Windows are independent, so one backward pass of sum(z · v)
    gives every window's vᵀJ_i at once. `projections=None` computes the exact norm with the k
    unit vectors (for measurement, not training).
    """
    n, k = z.shape
    if projections is None:
        vs = [
            torch.zeros_like(z).index_fill_(1, torch.tensor([j], device=z.device), 1.0)
            for j in range(k)
        ]
    else:
        vs = [torch.randn_like(z) for _ in range(projections)]
    total = torch.zeros(n, device=z.device, dtype=torch.float32)
    for v in vs:
        (g,) = torch.autograd.grad((z * v).sum(), x, create_graph=create_graph, retain_graph=True)
        total = total + g.float().pow(2).flatten(1).sum(dim=1)
    return total if projections is None else total / len(vs)


def encoder_jacobian_norm(
    model: SequenceAutoencoder, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Exact ||dz/dx||_F per window [N] of the encoder's code (posterior mean for the VAE)."""
    with torch.enable_grad(), cudnn_double_backward():
        x = x.detach().requires_grad_(True)
        z = model.encode(x, mask)
        return jacobian_frobenius_sq(z, x, None).sqrt().detach()


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return mu + (0.5 * log_var).exp() * torch.randn_like(mu)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, I)) per window [N], in nats."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)


def gaussian_nll(
    recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood of the observed samples under N(recon, exp(log_var[c]))."""
    lv = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX).to(recon.dtype)
    m = mask.to(recon.dtype)
    nll = 0.5 * ((recon - x) ** 2 / lv.exp() + lv + math.log(2 * math.pi))
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def cudnn_double_backward() -> Any:
    """cuDNN's LSTM has no double backward (and no backward in eval mode); the contractive
    penalty needs both, so its encoder pass runs on the native kernels."""
    return torch.backends.cudnn.flags(enabled=False)
