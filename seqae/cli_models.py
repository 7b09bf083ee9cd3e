"""`seqae models list|show|promote|rollback`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from seqae import artifacts
from seqae.artifacts import ArtifactError
from seqae.cli_common import MODELS_OPTION, fail, served_profile


@click.group()
def models() -> None:
    """List, inspect, promote and roll back model versions."""


@models.command("list")
@MODELS_OPTION
def models_list(models_root: Path) -> None:
    for profile in artifacts.list_profiles(models_root):
        current = artifacts.current_version(models_root, profile)
        for v in artifacts.list_versions(models_root, profile):
            mark = "*" if v == current else " "
            try:
                meta = artifacts.read_meta(models_root / profile / v)
            except ArtifactError as exc:  # one broken version must not hide the others
                click.echo(f"{mark} {profile}/{v}  unreadable: {exc}")
                continue
            click.echo(
                f"{mark} {profile}/{v}  {meta['kind']}  {meta['created_at']}  channels={len(meta['channels'])}"
            )


@models.command("show")
@click.argument("profile")
@click.option("--version", default=None)
@MODELS_OPTION
def models_show(profile: str, version: str | None, models_root: Path) -> None:
    lp = served_profile(models_root, profile, version)
    meta = artifacts.read_meta(lp.path)
    meta["baseline"] = {
        "threshold": lp.baseline.threshold,
        "score_kind": lp.baseline.score_kind,
        **lp.baseline.info,
    }
    click.echo(json.dumps(meta, indent=2))


@models.command("promote")
@click.argument("profile")
@click.argument("version")
@MODELS_OPTION
def models_promote(profile: str, version: str, models_root: Path) -> None:
    try:
        artifacts.promote(models_root, profile, version)
    except ArtifactError as exc:
        raise fail(exc) from exc
    click.echo(f"{profile}: serving {version}")


@models.command("rollback")
@click.argument("profile")
@MODELS_OPTION
def models_rollback(profile: str, models_root: Path) -> None:
    try:
        version = artifacts.rollback(models_root, profile)
    except ArtifactError as exc:
        raise fail(exc) from exc
    click.echo(f"{profile}: serving {version}")
