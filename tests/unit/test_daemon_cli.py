import json
from pathlib import Path

from click.testing import CliRunner

from daemon.cli import build_cli


def test_config_check_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text('[influx]\ntoken = "very-secret"\n[kafka]\ntopics = ["plant"]\n')
    result = CliRunner().invoke(
        build_cli(),
        ["config", "check", "--config", str(config)],
        env={"SEQAE_KAFKA__GROUP_ID": "from-env"},
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["kafka"]["topics"] == ["plant"] and shown["kafka"]["group_id"] == "from-env"
    assert shown["influx"]["token"] == "**********" and "very-secret" not in result.output


def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text("[engine]\nmax_batch = -3\n")
    result = CliRunner().invoke(build_cli(), ["config", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "engine.max_batch" in result.output and "greater than 0" in result.output


def test_daemon_run_refuses_a_config_without_routes(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n[health]\nenabled = false\n')
    result = CliRunner().invoke(build_cli(), ["daemon", "run", "--config", str(config)])
    assert result.exit_code == 2 and "profiles.routes" in result.output


def test_daemon_run_refuses_a_broken_model_naming_it(tmp_path: Path) -> None:
    """A profile with no model yet waits for it (tests/integration/test_daemon_lag_and_models);
    one whose CURRENT names a version that cannot load is refused at start."""
    (tmp_path / "models" / "pumps" / "v0001").mkdir(parents=True)
    (tmp_path / "models" / "pumps" / "CURRENT").write_text("v0001\n")
    config = tmp_path / "d.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[profiles]\nmodels_root = "{tmp_path / "models"}"\n'
        'routes = [{ pattern = "pump-*", profile = "pumps" }]\n[health]\nenabled = false\n'
    )
    result = CliRunner().invoke(build_cli(), ["daemon", "run", "--config", str(config)])
    assert result.exit_code == 2
    assert "cannot load a model profile" in result.output and "pumps" in result.output


def models(tmp_path: Path, *profiles: tuple[str, str | None, bool]) -> Path:
    """A models folder: (profile, CURRENT text or None for no file, version folder exists)."""
    root = tmp_path / "models"
    root.mkdir()
    for profile, current, exists in profiles:
        (root / profile).mkdir()
        if current is not None:
            (root / profile / "CURRENT").write_text(current)
            if exists:
                (root / profile / current.strip()).mkdir()
    return root


def check(tmp_path: Path, root: Path, extra: str = "") -> tuple[int, str]:
    config = tmp_path / "d.toml"
    config.write_text(
        f'[profiles]\nmodels_root = "{root}"\nroutes = [{{ pattern = "pump-*", profile = "pumps" }},'
        ' { pattern = "fan-*", profile = "fans" }]\n' + extra
    )
    result = CliRunner().invoke(build_cli(), ["config", "check", "--config", str(config)])
    return result.exit_code, result.stderr


def test_config_check_passes_with_every_profile_served(tmp_path: Path) -> None:
    root = models(tmp_path, ("pumps", "v1\n", True), ("fans", "v3", True))
    assert check(tmp_path, root) == (0, "")


def test_config_check_fails_on_a_missing_models_root(tmp_path: Path) -> None:
    code, err = check(tmp_path, tmp_path / "nowhere")
    assert code == 2
    assert f"error: profiles.models_root: {tmp_path / 'nowhere'} does not exist" in err


def test_config_check_names_each_profile_without_a_current_model(tmp_path: Path) -> None:
    root = models(tmp_path, ("pumps", None, False), ("fans", "v9", False))
    code, err = check(tmp_path, root)
    assert code == 2
    assert f"profile 'pumps' has no {root / 'pumps' / 'CURRENT'}" in err
    assert "profile 'fans'" in err and "names version 'v9'" in err and "does not exist" in err


def test_config_check_names_unreadable_files(tmp_path: Path) -> None:
    root = models(tmp_path, ("pumps", "v1", True), ("fans", "v1", True))
    code, err = check(tmp_path, root, f'[kafka]\nssl_cafile = "{tmp_path / "ca.pem"}"\n')
    assert code == 2 and f"kafka.ssl_cafile: cannot read {tmp_path / 'ca.pem'}" in err
    code, err = check(tmp_path, root, f'[influx]\ntoken_file = "{tmp_path / "token"}"\n')
    assert code == 2 and "influx: token_file: cannot read secret file" in err
