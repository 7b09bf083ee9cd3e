"""Model artifacts on disk, as in design.md.

    models/<profile>/<version>/weights.safetensors   tensors only
    models/<profile>/<version>/model.json            everything else, with the weights' sha256
    models/<profile>/CURRENT                         the served version, replaced atomically
    models/<profile>/HISTORY                         versions promoted, oldest first (rollback)
    models/<profile>/baselines/<asset>.json          per-asset baselines

Weights are read with safetensors only: a pickle or any other file is refused, never executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqae import __version__
from seqae.calibrate import Baseline, CalibrationError
from seqae.fused import FusedConfig, build_fused
from seqae.model import ModelConfig, SequenceAutoencoder
from seqae.pca import PCAConfig, PCADetector

FORMAT = "seqae-model/1"
WEIGHTS = "weights.safetensors"
META = "model.json"
VERSION_RE = re.compile(r"^v\d{4,}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArtifactError(Exception):
    """A model file that cannot be served, with the path and the reason."""


@dataclass
class ModelMeta:
    profile: str
    kind: str
    config: dict[str, Any]
    channels: list[str]
    period_s: float
    window: int
    hop: int
    training: dict[str, Any]
    validation: dict[str, Any]
    created_at: str = ""
    package_version: str = __version__
    weights_sha256: str = ""

    def to_dict(self, baseline: Baseline) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "profile": self.profile,
            "kind": self.kind,
            "architecture": self.config,
            "channels": self.channels,
            "period_s": self.period_s,
            "window": self.window,
            "hop": self.hop,
            "baseline": baseline.to_dict(),
            "training": self.training,
            "validation": self.validation,
            "created_at": self.created_at,
            "package_version": self.package_version,
            "weights_sha256": self.weights_sha256,
        }


@dataclass
class LoadedProfile:
    profile: str
    version: str
    path: Path
    detector: Any
    baseline: Baseline
    meta: ModelMeta


# Models are trained by an operator (or root) and served by the service account: readable by
# all, like files written under the usual umask 022 (mkstemp/mkdtemp make 0600/0700).
MODEL_FILE_MODE = 0o644
MODEL_DIR_MODE = 0o755


def write_atomic(path: Path, data: bytes | str, mode: int = MODEL_FILE_MODE) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ArtifactError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-'")


def build_detector(kind: str, config: dict[str, Any]) -> Any:
    if kind == "lstm":
        return SequenceAutoencoder(ModelConfig.from_dict(config))
    if kind == "pca":
        return PCADetector(PCAConfig.from_dict(config))
    if kind == "fused":
        return build_fused(FusedConfig.from_dict(config))
    raise ArtifactError(f"unknown model kind {kind!r}")


def list_versions(root: Path, profile: str) -> list[str]:
    folder = Path(root) / profile
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def list_profiles(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(root, p.name))


def save_model(
    root: Path,
    profile: str,
    detector: Any,
    baseline: Baseline,
    meta: ModelMeta,
    promote_now: bool = True,
) -> str:
    """Write a new version (never overwriting one) and, by default, make it CURRENT."""
    _check_name("profile", profile)
    existing = list_versions(root, profile)
    number = int(existing[-1][1:]) + 1 if existing else 1
    version = f"v{number:04d}"
    final = Path(root) / profile / version
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}."))
    staging.chmod(MODEL_DIR_MODE)
    tensors = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    save_file(tensors, str(staging / WEIGHTS))
    meta.weights_sha256 = _sha256(staging / WEIGHTS)
    meta.created_at = meta.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    meta.config = detector.cfg.to_dict()
    (staging / META).write_text(json.dumps(meta.to_dict(baseline), indent=2))
    for written in (staging / WEIGHTS, staging / META):
        written.chmod(MODEL_FILE_MODE)
    os.replace(staging, final)
    if promote_now:
        promote(root, profile, version)
    return version


def current_version(root: Path, profile: str) -> str | None:
    path = Path(root) / profile / "CURRENT"
    if not path.exists():
        return None
    return path.read_text().strip() or None


def promote(root: Path, profile: str, version: str) -> None:
    if version not in list_versions(root, profile):
        raise ArtifactError(f"profile {profile!r} has no version {version!r}")
    load_profile(root, profile, version)  # never serve what cannot be loaded
    folder = Path(root) / profile
    history = _history(folder)
    if not history or history[-1] != version:
        history.append(version)
    write_atomic(folder / "HISTORY", "\n".join(history) + "\n")
    write_atomic(folder / "CURRENT", version + "\n")


def rollback(root: Path, profile: str) -> str:
    """Serve the version promoted before the current one again; returns it."""
    folder = Path(root) / profile
    history = _history(folder)
    if len(history) < 2:
        raise ArtifactError(f"profile {profile!r} has no earlier promoted version to roll back to")
    history.pop()
    previous = history[-1]
    load_profile(root, profile, previous)
    write_atomic(folder / "HISTORY", "\n".join(history) + "\n")
    write_atomic(folder / "CURRENT", previous + "\n")
    return previous


def _history(folder: Path) -> list[str]:
    path = folder / "HISTORY"
    return path.read_text().split() if path.exists() else []


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    if not meta_path.exists():
        raise ArtifactError(f"{meta_path}: missing")
    try:
        data = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not a {FORMAT} file")
    return data


def load_profile(
    root: Path,
    profile: str,
    version: str | None = None,
    *,
    expect_channels: Sequence[str] | None = None,
) -> LoadedProfile:
    """Load and verify one version (CURRENT by default). Raises ArtifactError naming the file."""
    _check_name("profile", profile)
    version = version or current_version(root, profile)
    if version is None:
        raise ArtifactError(f"{Path(root) / profile}: no CURRENT version to serve")
    if not VERSION_RE.match(version):
        raise ArtifactError(f"invalid version {version!r}")
    path = Path(root) / profile / version
    data = read_meta(path)
    weights = path / WEIGHTS
    if not weights.exists():
        raise ArtifactError(f"{weights}: missing")
    if _sha256(weights) != data.get("weights_sha256"):
        raise ArtifactError(f"{weights}: checksum does not match model.json (corrupt or altered)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{weights}: not a valid safetensors file ({exc})") from exc
    try:
        meta = ModelMeta(
            profile=data["profile"],
            kind=data["kind"],
            config=data["architecture"],
            channels=list(data["channels"]),
            period_s=float(data["period_s"]),
            window=int(data["window"]),
            hop=int(data["hop"]),
            training=data.get("training", {}),
            validation=data.get("validation", {}),
            created_at=data.get("created_at", ""),
            package_version=data.get("package_version", ""),
            weights_sha256=data["weights_sha256"],
        )
        baseline = Baseline.from_dict(data["baseline"])
    except (KeyError, TypeError, ValueError, CalibrationError) as exc:
        raise ArtifactError(f"{path / META}: malformed ({exc!r})") from exc
    if expect_channels is not None and list(expect_channels) != meta.channels:
        raise ArtifactError(
            f"{path}: model channels {meta.channels} do not match the expected {list(expect_channels)}"
        )
    try:
        detector = build_detector(meta.kind, meta.config)
        detector.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # torch's message spans lines; keep errors on one
        raise ArtifactError(f"{weights}: tensors do not fit the architecture ({reason})") from exc
    detector.eval()
    return LoadedProfile(profile, version, path, detector, baseline, meta)


def baseline_path(root: Path, profile: str, asset: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", asset)
    return Path(root) / profile / "baselines" / f"{safe}.json"


def save_baseline(
    root: Path, profile: str, asset: str, baseline: Baseline, model_version: str
) -> Path:
    path = baseline_path(root, profile, asset)
    payload = {"asset": asset, "model_version": model_version, "baseline": baseline.to_dict()}
    write_atomic(path, json.dumps(payload))
    return path


def load_baseline(
    root: Path, profile: str, asset: str, model_version: str | None = None
) -> Baseline | None:
    """The asset's stored baseline, or None when there is none for this model version."""
    path = baseline_path(root, profile, asset)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        if model_version is not None and payload.get("model_version") != model_version:
            return None
        return Baseline.from_dict(payload["baseline"])
    except (json.JSONDecodeError, KeyError, TypeError, CalibrationError) as exc:
        raise ArtifactError(f"{path}: unreadable baseline ({exc!r})") from exc
