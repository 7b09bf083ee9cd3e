"""seqae.artifacts: save/load, CURRENT and history, and every way a model file can be bad."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from seqae.artifacts import (
    ArtifactError,
    ModelMeta,
    current_version,
    list_profiles,
    list_versions,
    load_baseline,
    load_profile,
    promote,
    rollback,
    save_baseline,
    save_model,
)
from seqae.calibrate import Baseline, fit_error_stats
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.pca import PCAConfig, PCADetector
from seqae.score import Scorer

CHANNELS = ["pressure", "flow", "temp"]
WINDOW = 10


def _baseline(seed: int = 0) -> Baseline:
    rng = np.random.default_rng(seed)
    mean, sq, precision = fit_error_stats(np.abs(rng.normal(1, 0.2, (200, 3))))
    return Baseline(
        center=rng.normal(0, 1, 3).astype(np.float32),
        scale=np.ones(3, np.float32),
        err_mean=mean,
        err_sq_mean=sq,
        precision=precision,
        threshold=3.0,
        range_low=np.full(3, -5.0, np.float32),
        range_high=np.full(3, 5.0, np.float32),
    )


def _meta(kind: str = "lstm") -> ModelMeta:
    return ModelMeta("pumps", kind, {}, list(CHANNELS), 1.0, WINDOW, 2, {"rows": 1}, {})


def _model(seed: int = 0) -> SequenceAutoencoder:
    torch.manual_seed(seed)
    return SequenceAutoencoder(ModelConfig(3, WINDOW, hidden_size=8, latent_size=4))


def _windows(n: int = 16) -> np.ndarray:
    x = np.random.default_rng(1).normal(0, 1, (n, WINDOW, 3)).astype(np.float32)
    x[0, 2, 1] = np.nan
    return x


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    """A models root with pumps/v0001; returns (root, version folder)."""
    save_model(tmp_path, "pumps", _model(), _baseline(), _meta())
    return tmp_path, tmp_path / "pumps" / "v0001"


def _rewrite_checksum(version_dir: Path) -> None:
    meta_path = version_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(
        (version_dir / "weights.safetensors").read_bytes()
    ).hexdigest()
    meta_path.write_text(json.dumps(meta))


def test_round_trip_gives_identical_scores(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    lp = load_profile(root, "pumps", expect_channels=CHANNELS)
    assert (lp.version, lp.meta.channels, lp.meta.window) == ("v0001", CHANNELS, WINDOW)
    assert lp.meta.config["hidden_size"] == 8 and len(lp.meta.weights_sha256) == 64
    windows = _windows()
    original = Scorer(_model(), device="cpu").score(windows, _baseline())
    loaded = Scorer(lp, device="cpu").score(windows, lp.baseline)
    np.testing.assert_array_equal(loaded.score, original.score)
    np.testing.assert_array_equal(loaded.errors, original.errors)
    assert lp.baseline.threshold == 3.0


def test_pca_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    detector = PCADetector(PCAConfig(3, WINDOW)).fit(
        rng.normal(0, 1, (100, WINDOW, 3)).astype(np.float32)
    )
    version = save_model(tmp_path, "pca", detector, _baseline(), _meta("pca"))
    lp = load_profile(tmp_path, "pca", version)
    assert lp.detector.cfg.n_components == detector.cfg.n_components
    x = torch.from_numpy(_windows()).nan_to_num(0.0)
    m = torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(lp.detector.reconstruct(x, m), detector.reconstruct(x, m))


def test_current_is_replaced_atomically_and_history_rolls_back(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    assert current_version(root, "pumps") == "v0001"
    v2 = save_model(root, "pumps", _model(1), _baseline(1), _meta())
    v3 = save_model(root, "pumps", _model(2), _baseline(2), _meta(), promote_now=False)
    assert (v2, v3) == ("v0002", "v0003")
    assert list_versions(root, "pumps") == ["v0001", "v0002", "v0003"]
    assert list_profiles(root) == ["pumps"]
    assert current_version(root, "pumps") == "v0002"  # v3 saved but not served
    promote(root, "pumps", v3)
    assert current_version(root, "pumps") == "v0003"
    assert (root / "pumps" / "HISTORY").read_text().split() == ["v0001", "v0002", "v0003"]
    assert rollback(root, "pumps") == "v0002"
    assert rollback(root, "pumps") == "v0001"
    assert current_version(root, "pumps") == "v0001"
    with pytest.raises(ArtifactError, match="no earlier promoted version"):
        rollback(root, "pumps")
    leftovers = [p.name for p in (root / "pumps").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp files or staging folders left behind
    with pytest.raises(ArtifactError, match="has no version 'v0009'"):
        promote(root, "pumps", "v0009")


def test_promote_refuses_a_version_that_cannot_be_loaded(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    save_model(root, "pumps", _model(1), _baseline(), _meta(), promote_now=False)
    (root / "pumps" / "v0002" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="checksum"):
        promote(root, "pumps", "v0002")
    assert current_version(root, "pumps") == "v0001"


def test_missing_weights(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    (vdir / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"v0001/weights\.safetensors: missing"):
        load_profile(root, "pumps")


def test_missing_model_json(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    (vdir / "model.json").unlink()
    with pytest.raises(ArtifactError, match=r"v0001/model\.json: missing"):
        load_profile(root, "pumps")


def test_model_json_not_json(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    (vdir / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"model\.json: not valid JSON"):
        load_profile(root, "pumps")


def test_wrong_format_field(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    meta = json.loads((vdir / "model.json").read_text())
    meta["format"] = "other-model/9"
    (vdir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.json: not a seqae-model/1 file"):
        load_profile(root, "pumps")


def test_malformed_model_json_field(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    meta = json.loads((vdir / "model.json").read_text())
    del meta["baseline"]["threshold"]
    (vdir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.json: malformed.*threshold"):
        load_profile(root, "pumps")


def test_checksum_mismatch_on_flipped_byte(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    weights = vdir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: checksum does not match"):
        load_profile(root, "pumps")


def test_truncated_weights(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    weights = vdir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _rewrite_checksum(vdir)  # so the file reaches the safetensors parser
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: not a valid safetensors file"):
        load_profile(root, "pumps")


class _Trap:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickle_weights_are_refused_without_being_unpickled(
    saved: tuple[Path, Path], tmp_path: Path
) -> None:
    root, vdir = saved
    marker = tmp_path / "unpickled.marker"
    payload = pickle.dumps({"encoder.lstm.weight_ih_l0": _Trap(marker)})
    # The trap works: unpickling the payload elsewhere would touch the marker.
    assert b"touch" in payload and not marker.exists()
    (vdir / "weights.safetensors").write_bytes(payload)
    _rewrite_checksum(vdir)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: not a valid safetensors file"):
        load_profile(root, "pumps")
    assert not marker.exists()


def test_tensors_of_the_wrong_shape(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    bigger = SequenceAutoencoder(ModelConfig(3, WINDOW, hidden_size=16, latent_size=4))
    save_file(
        {k: v.contiguous() for k, v in bigger.state_dict().items()},
        str(vdir / "weights.safetensors"),
    )
    _rewrite_checksum(vdir)
    with pytest.raises(
        ArtifactError, match=r"weights\.safetensors: tensors do not fit the architecture"
    ):
        load_profile(root, "pumps")


def test_missing_tensor(saved: tuple[Path, Path]) -> None:
    root, vdir = saved
    state = {k: v.contiguous() for k, v in _model().state_dict().items() if "decoder" not in k}
    save_file(state, str(vdir / "weights.safetensors"))
    _rewrite_checksum(vdir)
    with pytest.raises(ArtifactError, match=r"tensors do not fit.*decoder\.lstm") as info:
        load_profile(root, "pumps")
    assert "\n" not in str(info.value)


def test_expect_channels_mismatch(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    with pytest.raises(
        ArtifactError, match=r"model channels \['pressure', 'flow', 'temp'\] do not match"
    ):
        load_profile(root, "pumps", expect_channels=["pressure", "flow"])


def test_no_current_version_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no CURRENT version"):
        load_profile(tmp_path, "pumps")
    with pytest.raises(ArtifactError, match="invalid profile name"):
        load_profile(tmp_path, "../etc")
    with pytest.raises(ArtifactError, match="invalid version"):
        load_profile(tmp_path, "pumps", "latest")


def test_per_asset_baselines(saved: tuple[Path, Path]) -> None:
    root, _ = saved
    assert load_baseline(root, "pumps", "pump/7") is None
    own = _baseline(5)
    path = save_baseline(root, "pumps", "pump/7", own, "v0001")
    assert path.parent.name == "baselines" and "/" not in path.name
    back = load_baseline(root, "pumps", "pump/7", "v0001")
    assert back is not None
    np.testing.assert_array_equal(back.center, own.center)
    assert load_baseline(root, "pumps", "pump/7") is not None
    assert load_baseline(root, "pumps", "pump/7", "v0002") is None  # fitted for another model
    path.write_text("{broken")
    with pytest.raises(ArtifactError, match=r"pump_7\.json: unreadable baseline"):
        load_baseline(root, "pumps", "pump/7")
