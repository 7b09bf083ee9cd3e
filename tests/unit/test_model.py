"""seqae.model: shapes, masked loss, per-channel errors, variants, and that training learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqae.data import make_windows
from seqae.model import ModelConfig, SequenceAutoencoder, channel_errors, masked_mse
from seqae.train import TrainConfig, train_network


def _batch(n: int = 4, w: int = 10, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, w, c, generator=g)
    mask = torch.rand(n, w, c, generator=g) > 0.2
    return x * mask, mask


def test_output_shape() -> None:
    torch.manual_seed(0)
    model = SequenceAutoencoder(ModelConfig(n_channels=3, window=10, hidden_size=8, latent_size=4))
    x, mask = _batch()
    assert model(x, mask).shape == (4, 10, 3)
    assert model.encode(x, mask).shape == (4, 4)


@pytest.mark.parametrize("variant", [{"bidirectional": True}, {"num_layers": 2, "dropout": 0.1}])
def test_variants_run(variant: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = SequenceAutoencoder(ModelConfig(3, 10, hidden_size=8, latent_size=4, **variant))  # type: ignore[arg-type]
    x, mask = _batch()
    loss = model.loss(x, mask)
    loss.backward()
    assert model(x, mask).shape == (4, 10, 3)
    assert torch.isfinite(loss)


def test_masked_loss_ignores_masked_samples() -> None:
    recon = torch.zeros(2, 5, 2)
    x = torch.ones(2, 5, 2)
    mask = torch.ones(2, 5, 2, dtype=torch.bool)
    mask[0, 1, 0] = False
    base = masked_mse(recon, x, mask)
    x2 = x.clone()
    x2[0, 1, 0] = 1000.0
    assert masked_mse(recon, x2, mask) == base
    assert masked_mse(recon, x2, torch.ones_like(mask)) > base


def test_model_loss_ignores_masked_values() -> None:
    # The encoder sees x * mask, so a masked sample's value cannot reach the loss at all.
    torch.manual_seed(0)
    model = SequenceAutoencoder(ModelConfig(3, 10, hidden_size=8, latent_size=4)).eval()
    x, mask = _batch()
    x2 = x.clone()
    x2[~mask] = 1e4
    assert torch.equal(model.loss(x, mask), model.loss(x2, mask))


def test_channel_errors_hand_example() -> None:
    x = torch.zeros(1, 4, 2)
    recon = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.0, 0.0], [5.0, 1.0]]])
    mask = torch.ones(1, 4, 2, dtype=torch.bool)
    mask[0, 3, 0] = False  # the 5.0 residual is not observed
    err = channel_errors(recon, x, mask)
    # channel 0: sqrt((1 + 9 + 0) / 3); channel 1: sqrt((4 + 0 + 0 + 1) / 4)
    expected = torch.tensor([[np.sqrt(10 / 3), np.sqrt(5 / 4)]], dtype=torch.float32)
    torch.testing.assert_close(err, expected)


def test_channel_errors_of_fully_masked_channel_is_zero() -> None:
    x = torch.zeros(1, 3, 2)
    recon = torch.ones(1, 3, 2)
    mask = torch.ones(1, 3, 2, dtype=torch.bool)
    mask[0, :, 1] = False
    assert channel_errors(recon, x, mask).tolist() == [[1.0, 0.0]]


def test_config_round_trip_and_unknown_key() -> None:
    cfg = ModelConfig(3, 10, hidden_size=8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown model config keys \['heads'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "heads": 4})


def test_training_reduces_loss_on_periodic_signal() -> None:
    t = np.arange(900, dtype=np.float32)
    values = np.stack([np.sin(2 * np.pi * t / 25), np.cos(2 * np.pi * t / 40)], axis=1)
    x, _ = make_windows(values, window=12, hop=3)
    torch.manual_seed(0)
    model = SequenceAutoencoder(ModelConfig(2, 12, hidden_size=16, latent_size=8))
    xt, mt = torch.from_numpy(x), torch.ones(x.shape, dtype=torch.bool)
    with torch.no_grad():
        before = float(model.loss(xt, mt))
    info = train_network(
        model,
        x[:240],
        x[240:],
        TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu"),
        progress=False,
    )
    with torch.no_grad():
        after = float(model.loss(xt, mt))
    assert info["epochs_run"] == 3
    assert after < 0.5 * before
    assert info["best_val_loss"] < before
