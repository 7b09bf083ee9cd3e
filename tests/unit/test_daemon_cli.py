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


def test_daemon_run_refuses_a_missing_model_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[profiles]\nmodels_root = "{tmp_path / "models"}"\n'
        'routes = [{ pattern = "pump-*", profile = "pumps" }]\n[health]\nenabled = false\n'
    )
    result = CliRunner().invoke(build_cli(), ["daemon", "run", "--config", str(config)])
    assert result.exit_code == 2
    assert "cannot load a model profile" in result.output and "pumps" in result.output
