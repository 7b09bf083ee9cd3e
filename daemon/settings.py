"""Every knob of the daemon: a TOML file plus `SEQAE_` environment variables (nested with `__`).

Environment variables override the file; secrets may come from `*_file` paths and are masked
whenever the settings are printed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

_ROUTES_REMEMBERED = 1_000_000  # one route per asset (~100 B); cleared when full: above the fleet
_TOML_FILE: ContextVar[Path | None] = ContextVar("seqae_settings_toml_file", default=None)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _read_secret_file(path: Path, field: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{field}: cannot read secret file {path}: {exc.strerror}") from exc
    secret = text.strip()
    if not secret:
        raise ValueError(f"{field}: secret file {path} is empty")
    return SecretStr(secret)


def _resolve_secret(section: BaseModel, value_field: str, file_field: str) -> None:
    path = getattr(section, file_field)
    if path is None:
        return
    if getattr(section, value_field) is not None:
        raise ValueError(f"set either {value_field} or {file_field}, not both")
    object.__setattr__(section, value_field, _read_secret_file(path, file_field))


class KafkaSettings(_Section):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")  # show inf as "Infinity"

    bootstrap_servers: list[str] = Field(default=["127.0.0.1:9092"], min_length=1)
    client: Literal["confluent", "kafka-python"] = Field(
        default="confluent",
        description="the library of the input consumer and the changelog's producer: "
        "confluent (librdkafka, records parsed in C) or kafka-python (pure Python: its record "
        "parsing and sends took a third of the run loop at 25,000 msg/s)",
    )
    topics: list[str] = Field(default=["sensors"], min_length=1, description="input topics")
    group_id: str = "seqae"
    client_id: str = "seqae-daemon"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, ...")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    dead_letter_topic: str | None = Field(default=None, description="malformed messages go here")
    alert_topic: str | None = Field(default=None, description="JSON alert events go here")
    max_poll_records: int = Field(default=2000, gt=0)
    seek_back_on_assign: bool = Field(
        default=True, description="on assignment, re-read one window length so windows are whole"
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    changelog_topic: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="compacted topic holding each asset's durable state (baseline, warm-up, "
        "alert, window progress) keyed by asset, restored by whichever member is assigned the "
        "asset's partition; created if missing (default: '<group_id>-seqae-changelog')",
    )
    changelog_replication_factor: int = Field(
        default=-1,
        ge=-1,
        description="replicas of a changelog topic created here (-1: broker default)",
    )
    session_timeout_ms: int = Field(
        default=45_000, ge=1000, description="a member silent this long leaves the group"
    )
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    rebalance_protocol: Literal["eager", "cooperative"] = Field(
        default="eager",
        description="eager: every rebalance revokes every partition (range assignor); "
        "cooperative: incremental (KIP-429, cooperative-sticky assignor), only the partitions "
        "that move stop, so members keep scoring their other assets during a rebalance",
    )
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="static group membership (KIP-345): a member restarted with the same id "
        "within session_timeout_ms gets its partitions back at once, without a rebalance; a "
        "member stopped for good keeps its partitions idle until session_timeout_ms (give each "
        "instance its own stable id, e.g. the host name)",
    )
    call_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="longest one broker call from the run loop may block (lag, commit, committed "
        "offsets, a dead letter's topic metadata); one that takes longer counts as Kafka "
        "unreachable, shown on /readyz, and is tried again later",
    )
    connect_timeout_s: float = Field(
        default=float("inf"),
        gt=0,
        description="how long start-up retries an unreachable broker (one log line per try, "
        "backing off to 30 s) before it exits; inf: for ever, as a service should",
    )

    @property
    def changelog(self) -> str:
        """The changelog topic's name: set, or derived from the group id (legal characters)."""
        if self.changelog_topic is not None:
            return self.changelog_topic
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.group_id)[:230] + "-seqae-changelog"

    @model_validator(mode="after")
    def _secrets(self) -> KafkaSettings:
        _resolve_secret(self, "sasl_password", "sasl_password_file")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self


class InputSettings(_Section):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    format: Literal["wide", "narrow"] = "wide"
    asset_field: str = "asset"
    ts_field: str = "ts"
    values_field: str = Field(default="values", description="wide: object of channel -> value")
    channel_field: str = Field(default="channel", description="narrow: channel name")
    value_field: str = Field(default="value", description="narrow: reading")
    timestamp_format: Literal["auto", "rfc3339", "epoch_ms"] = Field(
        default="auto", description="auto accepts both RFC 3339 strings and epoch milliseconds"
    )
    max_message_bytes: int = Field(
        default=1 << 20, gt=0, description="longer messages are dead-lettered unread (too_large)"
    )
    max_depth: int = Field(
        default=32,
        ge=2,
        le=256,
        description="deeper nesting of arrays and objects is dead-lettered unparsed (too_deep)",
    )
    max_asset_chars: int = Field(
        default=200,
        gt=0,
        le=240,
        description="longer asset ids are refused: they become file names",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="a reading further ahead of the daemon's clock is dead-lettered "
        "(bad_timestamp) and never moves a window; inf accepts any future time (replays of "
        "synthetic data)",
    )
    oldest_timestamp: AwareDatetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="a reading before this is dead-lettered (bad_timestamp)",
    )


class ProfileRoute(_Section):
    pattern: str = Field(description="fnmatch pattern on the asset id, e.g. 'pump-*'")
    profile: str = Field(description="folder under models_root")


class ProfileRouter:
    """Asset id -> profile: the first route whose pattern matches, remembered per asset, as
    every message asks (a plain object: a pydantic private attribute costs ~1 us a read)."""

    __slots__ = ("_routed", "_routes", "source")

    def __init__(self, routes: list[ProfileRoute]) -> None:
        self.source = routes
        self._routes = [(r.pattern, r.profile) for r in routes]
        self._routed: dict[str, str | None] = {}

    def profile_for(self, asset: str) -> str | None:
        try:
            return self._routed[asset]
        except KeyError:
            pass
        profile = next(
            (p for pattern, p in self._routes if fnmatch.fnmatchcase(asset, pattern)), None
        )
        if len(self._routed) >= _ROUTES_REMEMBERED:
            self._routed.clear()  # bounded: a stream of ever-new asset ids cannot grow it
        self._routed[asset] = profile
        return profile


class ProfilesSettings(_Section):
    models_root: Path = Path("models")
    routes: list[ProfileRoute] = Field(
        default_factory=list, description="first matching pattern wins"
    )
    reload_poll_s: float = Field(default=2.0, gt=0, description="how often CURRENT is checked")

    _router: ProfileRouter | None = PrivateAttr(default=None)

    @property
    def router(self) -> ProfileRouter:
        """The one route cache of these settings (hot paths keep its `profile_for`)."""
        # `model_copy` carries private attributes over: a copy with other routes builds its own
        if self._router is None or self._router.source is not self.routes:
            self._router = ProfileRouter(self.routes)
        return self._router

    def profile_for(self, asset: str) -> str | None:
        """The first route whose pattern matches; remembered, as every message asks."""
        return self.router.profile_for(asset)

    @property
    def profile_names(self) -> list[str]:
        return list(dict.fromkeys(r.profile for r in self.routes))


class WindowSettings(_Section):
    max_fill: int = Field(default=3, ge=0, description="slots forward-filled before a gap resets")
    max_lateness_s: float = Field(
        default=2.0,
        ge=0,
        description="readings older than the asset's newest slot by at most this are placed in "
        "their slot; older ones are dropped and counted (`late` on the asset's next score). 2 s "
        "keeps the 1-2 s reordering of a real plant (several gateways or partitions, retries) "
        "at the cost of holding each window back by as long",
    )
    idle_eviction_s: float = Field(
        default=600.0, gt=0, description="wall-clock seconds without a reading before eviction"
    )


class BaselineSettings(_Section):
    mode: Literal["per_asset", "model"] = Field(
        default="per_asset",
        description="per_asset: each new asset calibrates its own baseline; model: use the default",
    )
    warmup_windows: int = Field(default=64, ge=2, description="windows collected to calibrate")
    rebaseline_windows: int = Field(
        default=24,
        ge=0,
        description="consecutive `shifted` windows (an operating-point change that keeps the "
        "plant's physics) after which the asset re-baselines at its new operating point and "
        "returns to `ok` (0: only on POST /recalibrate)",
    )
    prior_windows: float = Field(
        default=50.0,
        ge=0,
        description="how many independent (non-overlapping) windows of its own an asset needs "
        "before its error statistics and threshold weigh as much as the profile's; its own "
        "baseline is a blend n / (n + prior_windows) of both (0: its own statistics alone)",
    )
    refit_scaler: bool = Field(
        default=False,
        description="refit the asset's scaler too (default: keep the training scaler and refit "
        "error statistics, threshold and input range)",
    )


class EngineSettings(_Section):
    device: Literal["cpu", "cuda", "auto"] = "auto"
    max_batch: int = Field(default=256, gt=0)
    max_wait_ms: float = Field(default=50.0, ge=0)
    device_history: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="keep each asset's recent rows on the scoring device and send only new rows "
        "(auto: on CUDA, where copying whole windows costs more than the forward pass)",
    )
    cpu_threads: int = Field(
        default=1,
        ge=0,
        description="torch threads for scoring on CPU (0: torch's default, one per core); one "
        "leaves the other cores to the run loop, which overlaps the forward pass",
    )


class AlertSettings(_Section):
    enter_level: float = Field(default=1.0, gt=0, description="score/threshold that opens")
    exit_level: float = Field(default=0.8, gt=0, description="score/threshold that closes")
    min_duration_s: float = Field(default=0.0, ge=0, description="time above enter before open")
    clear_duration_s: float = Field(
        default=30.0,
        ge=0,
        description="time below exit before an open alert closes, the counterpart of "
        "min_duration_s: a window back at or above exit restarts it, so a fault that dips "
        "briefly stays one alert; 0 closes on the first window below exit",
    )
    cooldown_s: float = Field(
        default=0.0,
        ge=0,
        description="after a close, a fault back above enter (for min_duration_s) within this "
        "time re-opens the same alert (reopened=true) instead of opening a new one",
    )
    critical_level: float = Field(
        default=2.0, gt=0, description="ratio from which severity is critical"
    )
    update_every_s: float = Field(default=60.0, gt=0, description="an open alert writes updates")
    top_channels: int = Field(default=3, gt=0)

    @model_validator(mode="after")
    def _levels(self) -> AlertSettings:
        if self.exit_level > self.enter_level:
            raise ValueError("exit_level must not exceed enter_level")
        if self.critical_level < self.enter_level:
            raise ValueError("critical_level must not be below enter_level")
        return self


class InfluxSettings(_Section):
    api: Literal["v2", "v1"] = "v2"
    url: str = "http://127.0.0.1:8086"
    token: SecretStr | None = None
    token_file: Path | None = None
    org: str = "seqae"
    bucket: str = "seqae"
    database: str = "seqae"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    batch_points: int = Field(default=5000, gt=0)
    max_buffered_points: int = Field(default=200_000, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    write_clean: bool = Field(
        default=False, description="also write `seqae_clean`: reconstructed values per channel"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secrets(self) -> InfluxSettings:
        _resolve_secret(self, "token", "token_file")
        _resolve_secret(self, "password", "password_file")
        return self


class HealthSettings(_Section):
    host: str = Field(
        default="127.0.0.1",
        description="/healthz, /readyz and /metrics answer anyone who reaches host:port",
    )
    port: int = Field(default=9108, ge=0, le=65535, description="0 picks a free port")
    enabled: bool = True
    control_token: SecretStr | None = Field(
        default=None,
        description="bearer token for control endpoints (POST /recalibrate); without one "
        "they are off. Prefer control_token_file",
    )
    control_token_file: Path | None = Field(
        default=None, description="file holding the control token (a mounted secret)"
    )

    @model_validator(mode="after")
    def _secrets(self) -> HealthSettings:
        _resolve_secret(self, "control_token", "control_token_file")
        return self


class DaemonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEQAE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    profiles: ProfilesSettings = Field(default_factory=ProfilesSettings)
    windows: WindowSettings = Field(default_factory=WindowSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    state_dir: Path = Field(
        default=Path("state"), description="alert state and per-asset baselines live here"
    )
    commit_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="how often offsets, and the changelog states they depend on, are committed: "
        "each asset whose window completed is written once per interval, so at 1 s a fleet "
        "scoring a window a second writes every asset every second (quix-streams: 5 s)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as JSON-safe data, secrets shown as '**********'."""
        return json.loads(self.model_dump_json())  # type: ignore[no-any-return]


def _env_variable(loc: tuple[Any, ...], environ: dict[str, str]) -> str | None:
    """The SEQAE_ variable that set the field at `loc` (the most specific one), if any.
    Environment variables win over the file, and their names are case-insensitive."""
    names = {key.upper(): key for key in environ if key.upper().startswith("SEQAE_")}
    parts = [str(p).upper() for p in loc]
    for n in range(len(parts), 0, -1):
        found = names.get("SEQAE_" + "__".join(parts[:n]))
        if found is not None:
            return found
    return None


def _describe(error: ValidationError, where: str, overrides: dict[str, Any]) -> str:
    """Each error as "<origin>: <field>: <reason>", the origin being the environment variable
    that set the field or else the file (`where`). Values are never shown: they may be secrets."""
    environ = dict(os.environ)
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        field = ".".join(str(p) for p in loc) or "(root)"
        reason = item["msg"].removeprefix("Value error, ")
        variable = None if loc[:1] and loc[0] in overrides else _env_variable(loc, environ)
        origin = f"environment variable {variable}" if variable else where
        lines.append(f"{origin}: {field}: {reason}")
    return "; ".join(lines)


def _describe_unparsed(error: SettingsError) -> str:
    """pydantic-settings could not parse a variable (a list or object must be JSON)."""
    match = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(error))
    if match is None:
        return f"config: {error}"
    section = match.group(1)
    prefix = f"SEQAE_{section.upper()}"
    variables = sorted(k for k in os.environ if k.upper().split("__")[0] == prefix)
    cause = f": {error.__cause__}" if error.__cause__ is not None else ""
    return (
        f"environment variable {' or '.join(variables) or prefix + '__*'}: {section}: cannot be "
        f"parsed (a list or object must be JSON, e.g. SEQAE_KAFKA__TOPICS='[\"a\"]'){cause}"
    )


def load_settings(path: Path | None = None, **overrides: Any) -> DaemonSettings:
    """Read `path` (TOML) and `SEQAE_*` variables; raise ConfigError naming the field and reason
    (and the environment variable, when one set it)."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        import tomllib

        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    token = _TOML_FILE.set(path)
    try:
        return DaemonSettings(**overrides)
    except ValidationError as exc:
        where = f"config {path}" if path is not None else "config"
        raise ConfigError(_describe(exc, where, overrides)) from exc
    except SettingsError as exc:
        raise ConfigError(_describe_unparsed(exc)) from exc
    finally:
        _TOML_FILE.reset(token)
