"""`seqae models list|show|promote|rollback`.

`list` and `show` read the store's folders and model.json files directly (the layout of
seqae.artifacts), without importing torch: inspecting a store is instant. `promote` and
`rollback` load the version they will serve, so they use seqae.artifacts itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import click

from seqae.cli_common import MODELS_OPTION, fail

# As in seqae.artifacts (FORMAT, VERSION_RE, NAME_RE, WEIGHTS, META); tests/unit/test_cli_imports.py
# checks that the two agree.
FORMAT = "seqae-model/1"
VERSION_RE = re.compile(r"^v\d{4,}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
WEIGHTS = "weights.safetensors"
META = "model.json"


def list_versions(root: Path, profile: str) -> list[str]:
    folder = root / profile
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def list_profiles(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(root, p.name))


def current_version(root: Path, profile: str) -> str | None:
    path = root / profile / "CURRENT"
    return (path.read_text().strip() or None) if path.exists() else None


def read_meta(path: Path) -> dict[str, Any]:
    """A version's model.json; a UserError naming the file if it is missing or not one."""
    meta_path = path / META
    if not meta_path.exists():
        raise fail(f"{meta_path}: missing")
    try:
        data = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise fail(f"{meta_path}: not a {FORMAT} file")
    return data


def checked_meta(root: Path, profile: str, version: str | None) -> tuple[str, dict[str, Any]]:
    """(version, model.json) of `version` (CURRENT by default), its weights' checksum verified."""
    if not NAME_RE.match(profile):
        raise fail(f"invalid profile name {profile!r}: use letters, digits, '.', '_', '-'")
    if not (root / profile).is_dir():
        raise fail(f"{root / profile}: no such profile")
    version = version or current_version(root, profile)
    if version is None:
        raise fail(f"{root / profile}: no CURRENT version to serve")
    if not VERSION_RE.match(version):
        raise fail(f"invalid version {version!r}")
    meta = read_meta(root / profile / version)
    weights = root / profile / version / WEIGHTS
    if not weights.exists():
        raise fail(f"{weights}: missing")
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != meta.get("weights_sha256"):
        raise fail(f"{weights}: checksum does not match model.json (corrupt or altered)")
    return version, meta


@click.group()
def models() -> None:
    """List, inspect, promote and roll back model versions."""


@models.command("list")
@MODELS_OPTION
def models_list(models_root: Path) -> None:
    """One line per version: * marks CURRENT."""
    for profile in list_profiles(models_root):
        current = current_version(models_root, profile)
        for v in list_versions(models_root, profile):
            mark = "*" if v == current else " "
            try:
                meta = read_meta(models_root / profile / v)
            except click.ClickException as exc:  # one broken version must not hide the others
                click.echo(f"{mark} {profile}/{v}  unreadable: {exc.message}")
                continue
            click.echo(
                f"{mark} {profile}/{v}  {meta['kind']}  {meta['created_at']}  channels={len(meta['channels'])}"
            )


@models.command("show")
@click.argument("profile")
@click.option("--version", default=None)
@MODELS_OPTION
def models_show(profile: str, version: str | None, models_root: Path) -> None:
    """model.json of a version (CURRENT by default), with the baseline summarised."""
    _, meta = checked_meta(models_root, profile, version)
    baseline = meta.get("baseline")
    if not isinstance(baseline, dict) or "threshold" not in baseline:
        raise fail(f"{models_root / profile}: model.json has no baseline threshold (malformed)")
    meta["baseline"] = {
        "threshold": baseline["threshold"],
        "score_kind": baseline.get("score_kind", "mahalanobis"),
        **baseline.get("info", {}),
    }
    click.echo(json.dumps(meta, indent=2))


@models.command("promote")
@click.argument("profile")
@click.argument("version")
@MODELS_OPTION
def models_promote(profile: str, version: str, models_root: Path) -> None:
    """Serve VERSION (it must load)."""
    from seqae import artifacts

    try:
        artifacts.promote(models_root, profile, version)
    except artifacts.ArtifactError as exc:
        raise fail(exc) from exc
    click.echo(f"{profile}: serving {version}")


@models.command("rollback")
@click.argument("profile")
@MODELS_OPTION
def models_rollback(profile: str, models_root: Path) -> None:
    """Serve the version promoted before the current one again."""
    from seqae import artifacts

    try:
        version = artifacts.rollback(models_root, profile)
    except artifacts.ArtifactError as exc:
        raise fail(exc) from exc
    click.echo(f"{profile}: serving {version}")
