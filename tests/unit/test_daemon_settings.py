import json
from pathlib import Path

import pytest

from daemon.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_file_and_env_override_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        '[kafka]\ntopics = ["plant"]\ngroup_id = "g1"\n[[profiles.routes]]\npattern = "pump-*"\nprofile = "pumps"\n',
    )
    monkeypatch.setenv("SEQAE_KAFKA__GROUP_ID", "g2")
    monkeypatch.setenv("SEQAE_ENGINE__MAX_BATCH", "64")
    s = load_settings(path)
    assert s.kafka.topics == ["plant"] and s.kafka.group_id == "g2" and s.engine.max_batch == 64
    assert s.profiles.profile_for("pump-3") == "pumps" and s.profiles.profile_for("fan-1") is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[kafka]\nmax_poll_records = 0\n", "kafka.max_poll_records"),
        ('[engine]\ndevice = "tpu"\n', "engine.device"),
        ("[alerts]\nenter_level = 1.0\nexit_level = 1.5\n", "alerts: exit_level"),
        ('[influx]\nurl = "localhost:8086"\n', "influx.url"),
        ("[kafka]\ntopicz = []\n", "kafka.topicz"),
        ("[kafka]\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 3000\n", "kafka: heartbeat"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert field in str(info.value)


def test_bad_env_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQAE_WINDOWS__MAX_FILL", "lots")
    with pytest.raises(ConfigError, match=r"windows\.max_fill"):
        load_settings()


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[kafka\n"))


def test_secrets_from_files_are_masked(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cr3t-token\n")
    (tmp_path / "pw").write_text("hunter2")
    path = write(
        tmp_path,
        f'[influx]\ntoken_file = "{tmp_path / "token"}"\n[kafka]\nsasl_password_file = "{tmp_path / "pw"}"\n',
    )
    s = load_settings(path)
    assert s.influx.token is not None and s.influx.token.get_secret_value() == "s3cr3t-token"
    assert (
        s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "hunter2"
    )
    shown = json.dumps(s.masked())
    assert "s3cr3t" not in shown and "hunter2" not in shown and "**********" in shown
    assert "s3cr3t" not in repr(s)


def test_secret_file_problems_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQAE_INFLUX__TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="token_file: cannot read"):
        load_settings()
    (tmp_path / "t").write_text("x")
    monkeypatch.setenv("SEQAE_INFLUX__TOKEN_FILE", str(tmp_path / "t"))
    monkeypatch.setenv("SEQAE_INFLUX__TOKEN", "y")
    with pytest.raises(ConfigError, match="either token or token_file"):
        load_settings()


def test_example_config_is_valid() -> None:
    s = load_settings(Path(__file__).resolve().parents[2] / "configs" / "daemon.example.toml")
    assert s.profiles.profile_for("pump-1") == "pumps"


def test_an_invalid_environment_variable_is_named_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[influx]\nbatch_points = 100\n")
    monkeypatch.setenv("SEQAE_INFLUX__BATCH_POINTS", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(
        "environment variable SEQAE_INFLUX__BATCH_POINTS: influx.batch_points"
    )
    assert str(path) not in message
    monkeypatch.delenv("SEQAE_INFLUX__BATCH_POINTS")
    monkeypatch.setenv("seqae_engine__max_batch", "-1")  # names are case-insensitive
    with pytest.raises(ConfigError, match="environment variable seqae_engine__max_batch: engine"):
        load_settings(path)


def test_an_error_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[influx]\nbatch_points = 0\n")
    with pytest.raises(ConfigError, match=f"config {path}: influx.batch_points"):
        load_settings(path)


def test_an_unparseable_list_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQAE_KAFKA__TOPICS", "plant,line-2")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "environment variable SEQAE_KAFKA__TOPICS: kafka: cannot be parsed" in str(info.value)


def test_secret_values_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQAE_HEALTH__PORT", "hunter2-port")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "SEQAE_HEALTH__PORT" in str(info.value) and "hunter2" not in str(info.value)


def test_input_limits_and_time_horizon(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.input.max_message_bytes == 1 << 20 and s.input.max_depth == 32
    assert s.input.max_clock_skew_s == 300 and s.input.oldest_timestamp.year == 2000
    monkeypatch.setenv("SEQAE_INPUT__MAX_CLOCK_SKEW_S", "inf")
    monkeypatch.setenv("SEQAE_KAFKA__CONNECT_TIMEOUT_S", "inf")
    shown = load_settings().masked()
    assert shown["input"]["max_clock_skew_s"] == "Infinity"  # not null
    assert shown["kafka"]["connect_timeout_s"] == "Infinity"
    monkeypatch.setenv("SEQAE_INPUT__OLDEST_TIMESTAMP", "2000-01-01T00:00:00")
    with pytest.raises(ConfigError, match=r"input\.oldest_timestamp"):
        load_settings()  # a time without an offset is refused
