"""One settings object for the whole node.

Values come, in order of precedence, from command-line flags, environment
variables (prefix ``URONODE_``, nested groups joined by ``__``, e.g.
``URONODE_SCP__AE_TITLE``), a TOML config file (``--config`` or
``URONODE_CONFIG``) and the defaults below. Everything is validated when the
node starts, so a bad value stops start-up with a message instead of failing
the first association.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

AE_TITLE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM AE VR: no backslash, no control
OHIF_VERSION = "3.13.2"
"""The OHIF viewer release the node serves (``./run`` fetches it, the Dockerfile too)."""


def default_models_dir() -> Path:
    """The models the node ships with.

    Installed from a wheel, they are the package data ``uronode/models/`` (pyproject.toml maps
    the repository's ``models/`` there); in a checkout (editable install or not), the
    repository's ``models/`` beside this package.
    """
    package = Path(__file__).resolve().parent
    shipped = package / "models"
    return shipped if shipped.is_dir() else package.parent / "models"


def default_viewer_dir() -> Path:
    """OHIF's prebuilt ``dist`` folder.

    In a checkout, where ``./run`` fetches it (``.ohif/<version>/dist``). A wheel does not
    carry the viewer (200 MB): installed, the default is ``<prefix>/share/uronode/ohif/<version>``
    of the environment the node runs in; put OHIF's ``dist`` there or set ``dicomweb.viewer_dir``.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".ohif" / OHIF_VERSION / "dist"
    return Path(sys.prefix) / "share" / "uronode" / "ohif" / OHIF_VERSION


def check_ae_title(value: str, what: str) -> str:
    """``value`` stripped, or ValueError naming ``what``: 1-16 characters, no backslash, no control character."""
    stripped = value.strip()
    if not stripped:
        raise ValueError(f"{what} must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"{what} {stripped!r} is {len(stripped)} characters long; the limit is 16")
    if not AE_TITLE_CHARS.match(stripped):
        raise ValueError(f"{what} {stripped!r} holds a backslash or a control character")
    return stripped


class CallerRule(BaseModel):
    """One entry of the calling-AE allow-list: an AE title and optionally the host it must come from."""

    model_config = {"frozen": True}

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> CallerRule:
        """Parse ``AE`` or ``AE@host``."""
        ae, _, host = text.partition("@")
        return cls(ae_title=check_ae_title(ae, "allowed calling AE title"), host=host.strip() or None)


class ScpSettings(BaseModel):
    """The DICOM listener (C-ECHO / C-STORE SCP)."""

    ae_title: str = "URONODE"
    port: int = Field(11112, ge=1, le=65535)
    restrict_callers: bool = False
    """When true, only callers on ``allowed_callers`` may associate."""
    allowed_callers: list[str] = Field(default_factory=list)
    """Entries ``AE`` (from any host) or ``AE@host`` (only from that IP address)."""
    max_associations: int = Field(16, ge=1, le=1000)
    """Concurrent associations accepted, over all receiving processes."""
    max_pdu_size: int = Field(4 * 1024 * 1024, ge=0)
    """Largest PDU we accept (bytes); 0 means no limit."""
    max_instance_bytes: int = Field(2 * 1024 ** 3, ge=1024 * 1024)
    """Largest data set one C-STORE may carry (bytes, as sent); past it the association is aborted and the
    log says why. A receiving process holds a data set in memory until it is complete."""
    processes: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1, le=32)
    """Receiving processes accepting on the one listening socket (each association runs in one of them)."""
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    completion_grace_s: float = Field(2.0, ge=0)
    """A series is complete this long after the association that carried it was released."""
    completion_quiet_s: float = Field(30.0, gt=0)
    """... or after this long without a new instance, whatever the associations do."""
    tls_cert_file: Path | None = None
    """With ``tls_key_file``: the DICOM port speaks TLS only (PEM certificate chain)."""
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    """CA certificates that sign the callers' certificates."""
    tls_require_client_cert: bool = True
    """With a CA file: callers must present a certificate it signed."""

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value, "AE title")

    @field_validator("allowed_callers")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        return [f"{r.ae_title}@{r.host}" if r.host else r.ae_title for r in map(CallerRule.parse, value)]

    @model_validator(mode="after")
    def _tls_files(self) -> ScpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("scp.tls_cert_file and scp.tls_key_file go together")
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"scp.{name} {path} does not exist")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("scp.tls_ca_file needs scp.tls_cert_file and scp.tls_key_file")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain TCP."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        if self.tls_ca_file is not None:
            context.load_verify_locations(self.tls_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED if self.tls_require_client_cert else ssl.CERT_OPTIONAL
        return context

    @model_validator(mode="after")
    def _restrict_needs_list(self) -> ScpSettings:
        if self.restrict_callers and not self.allowed_callers:
            raise ValueError("scp.restrict_callers is on but scp.allowed_callers is empty: nobody could connect")
        if self.completion_quiet_s < self.completion_grace_s:
            raise ValueError("scp.completion_quiet_s must not be shorter than scp.completion_grace_s")
        return self

    def caller_rules(self) -> list[CallerRule]:
        return [CallerRule.parse(c) for c in self.allowed_callers]


class StorageSettings(BaseModel):
    """Where instances, the index and the queue live."""

    data_dir: Path = Path("uronode-data")
    max_disk_used_percent: float = Field(95.0, gt=0, le=100)
    """Refuse new instances (out of resources) when the disk is fuller than this."""
    fsync: bool = True
    """fsync every instance and the index before answering success. Turn off only for throwaway tests."""
    retention_days: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Delete a received series this many days after its last instance arrived; the results the node
    derived (SEG, SC, SR), the jobs and their findings are kept. None (the default): keep everything."""
    retention_interval_s: float = Field(3600.0, gt=0)
    """How often the node looks for series past their retention."""


class DicomwebSettings(BaseModel):
    """The HTTP side: DICOMweb, REST API, viewer, health."""

    port: int = Field(8080, ge=1, le=65535)
    viewer_dir: Path = Field(default_factory=default_viewer_dir)
    """OHIF's prebuilt ``dist`` folder, served at ``/`` (default: see :func:`default_viewer_dir`)."""
    auth: str = Field("basic", pattern=r"^(basic|none)$")
    """``basic``: every HTTP path but /healthz and /readyz needs the user and password (or a bearer
    token); ``none``: open, for a demo on a private machine."""
    username: str = "uronode"
    password: str | None = None
    """None: a random one is made at first start and kept in ``<data_dir>/http-password`` (mode 600)."""
    tokens: list[str] = Field(default_factory=list)
    """Bearer tokens accepted as well (for scripts and remote workers)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """IP addresses of reverse proxies whose ``X-Forwarded-User`` and ``X-Forwarded-For`` the audit log
    believes; from any other client those headers are not taken as the user or the address."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"dicomweb.trusted_proxies: {address!r} is not an IP address") from None
        return value


class KnownAE(BaseModel):
    """Where a calling AE title can be reached, for results sent back to the sender."""

    model_config = {"frozen": True}

    host: str
    port: int = Field(ge=1, le=65535)


RESULT_KINDS = ("seg", "sc", "sr", "ko")
"""The kinds of results the node makes: the SEG, the Secondary Capture overlays, the SR, the key object."""


def result_kind(sop_class_uid: str) -> str:
    """Which of ``RESULT_KINDS`` a result of this SOP class is (an SR class of any kind is ``sr``)."""
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.66.4":
        return "seg"
    if sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.59":
        return "ko"
    if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88."):
        return "sr"
    return "sc"


class Destination(BaseModel):
    """Where results go. ``kind``: ``dicom`` (C-STORE to ``ae_title`` at ``host``:``port``),
    ``sender`` (C-STORE back to the AE that sent the series, looked up in ``delivery.known_aes``)
    or ``dicomweb`` (STOW-RS to ``url``, with optional basic auth or a bearer token)."""

    model_config = {"frozen": True}

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    kind: str = Field(pattern=r"^(dicom|sender|dicomweb)$")
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    results: tuple[str, ...] = RESULT_KINDS
    """Which results it is sent, of ``seg``, ``sc`` (the overlays), ``sr`` and ``ko`` (the key images): a
    PACS that stores no SEG or SR refuses them (no presentation context), and their deliveries would be
    retried until dead and fail the job although the rest arrived."""

    @field_validator("results")
    @classmethod
    def _results(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(RESULT_KINDS))
        if unknown or not value:
            raise ValueError(f"results: one or more of {', '.join(RESULT_KINDS)}"
                             + (f", not {', '.join(unknown)}" if unknown else ""))
        return tuple(dict.fromkeys(value))

    def takes(self, sop_class_uid: str) -> bool:
        """Whether results of this SOP class go to this destination (``results``)."""
        return result_kind(sop_class_uid) in self.results

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "dicom" and not (self.ae_title and self.host and self.port):
            raise ValueError(f"destination {self.name}: a dicom destination needs ae_title, host and port")
        if self.kind == "dicomweb" and not self.url:
            raise ValueError(f"destination {self.name}: a dicomweb destination needs url")
        if self.ae_title is not None:
            check_ae_title(self.ae_title, f"destination {self.name} ae_title")
        return self


class DeliverySettings(BaseModel):
    """Sending results: destinations, retries."""

    destinations: list[Destination] = Field(default_factory=list)
    """Empty: results stay in the node (and its DICOMweb)."""
    known_aes: dict[str, KnownAE] = Field(default_factory=dict)
    """Calling AE title -> host and port, for ``sender`` destinations."""
    max_attempts: int = Field(8, ge=1, le=100)
    """After this many failed tries a delivery is a dead letter (``uronode retry`` sends it again)."""
    backoff_s: float = Field(5.0, gt=0)
    """First wait after a failure; it doubles each time ..."""
    backoff_max_s: float = Field(600.0, gt=0)
    """... up to this."""

    @model_validator(mode="after")
    def _unique(self) -> DeliverySettings:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("delivery.destinations: names must be unique")
        for ae in self.known_aes:
            check_ae_title(ae, "delivery.known_aes key")
        return self


class InferenceSettings(BaseModel):
    """The model the worker runs."""

    models_dir: Path = Field(default_factory=default_models_dir)
    """Where model folders are looked up by name (default: the shipped ones, see :func:`default_models_dir`)."""
    model: str = "default"
    """A folder under ``models_dir`` (or a path to a model folder)."""
    workers: int = Field(1, ge=0, le=8)
    """Worker processes running the model (each loads it once); 0 leaves jobs queued for workers elsewhere."""


class QueueSettings(BaseModel):
    """How jobs reach the workers: the node's own (``sqlite``) or, through a broker, workers anywhere
    (``dramatiq``, ``docs/distributed.md``)."""

    backend: str = Field("sqlite", pattern=r"^(sqlite|dramatiq)$")
    """``sqlite``: only the node's own workers (``inference.workers``) take jobs, no broker. ``dramatiq``:
    each job is also published on ``broker_url`` for ``uronode worker`` processes on any machine."""
    broker_url: str = "redis://127.0.0.1:6379/0"
    """The Redis broker: ``redis://[:password@]host:port/db`` or ``unix:///path/to/socket?db=0``
    (the node and every worker read the same setting)."""
    worker_tokens_file: Path | None = None
    """Who may work: one line per worker, ``NAME SHA256`` (hex digest of its bearer token); read again when
    it changes. None: ``<storage.data_dir>/worker-tokens``."""
    lease_s: float = Field(60.0, gt=0)
    """A remote worker's claim lives this long after its last heartbeat (it beats every third of it)."""
    claim_timeout_s: float = Field(60.0, gt=0)
    """A published job nobody claimed in this time is published again (then after twice as long each time,
    at most 64 times this, until a worker claims it)."""
    sweep_interval_s: float = Field(5.0, gt=0)
    """How often the node looks for jobs to publish again (unclaimed, or held past their lease)."""

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"queue.broker_url {value!r} is neither redis://, rediss:// nor unix://")
        return value

    def tokens_file(self, data_dir: Path) -> Path:
        """The worker tokens file in force."""
        return self.worker_tokens_file if self.worker_tokens_file is not None else Path(data_dir) / "worker-tokens"


class Settings(BaseSettings):
    """Everything the node can be told. See README.md for the list with defaults."""

    model_config = SettingsConfigDict(
        env_prefix="URONODE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "0.0.0.0"
    """Address both the DICOM listener and the HTTP server bind to."""
    log_level: str = "INFO"
    scp: ScpSettings = Field(default_factory=lambda: ScpSettings())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())
    dicomweb: DicomwebSettings = Field(default_factory=lambda: DicomwebSettings())
    inference: InferenceSettings = Field(default_factory=lambda: InferenceSettings())
    delivery: DeliverySettings = Field(default_factory=lambda: DeliverySettings())
    queue: QueueSettings = Field(default_factory=lambda: QueueSettings())

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level {value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):  # set by load_settings, never by the environment
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


class ConfigError(ValueError):
    """The settings are invalid; the message says which value and why."""


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _reading(config_file: Path | None) -> type[Settings]:
    """The settings class that reads ``config_file`` too (below the environment, above the defaults)."""
    if config_file is None:
        return Settings

    class SettingsWithFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return SettingsWithFile


def _config_file_problem(config_file: Path) -> str | None:
    """Why ``config_file`` cannot be the config file, or None."""
    if config_file.is_dir():
        return "is a folder, not a file"
    if not config_file.is_file():
        return "does not exist"
    return None


def _environment_problem(exc: SettingsError) -> str:
    """A readable sentence for a group (or list) in the environment that is not valid JSON.

    pydantic-settings names only the top-level group (``field "scp"``), also for ``URONODE_SCP__...``:
    the variables that can hold it are looked up here."""
    group = re.search(r'field "([^"]+)"', str(exc))
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    if group is None:
        return f"{exc}{cause}"
    prefix = f"URONODE_{group.group(1)}".upper()
    names = sorted(k for k in os.environ if k.upper() == prefix or k.upper().startswith(prefix + "__"))
    which = (f"one of the environment variables {', '.join(names)}" if len(names) > 1
             else f"the environment variable {names[0] if names else prefix}")
    return (f"{which} is not valid JSON{cause}"
            f" (a group or a list is given as JSON, e.g. URONODE_SCP='{{\"port\": 104}}';"
            " one value as URONODE_SCP__PORT=104)")


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from flags (``overrides``), environment and config file.

    ``config_file`` defaults to ``URONODE_CONFIG``. ``overrides`` is nested like
    the settings (``{"scp": {"port": 104}}``) and wins over everything else.
    Raises :class:`ConfigError` with a readable message when a value is invalid, the config
    file is missing, is a folder or is not UTF-8 TOML, or a group in the environment is not JSON.
    Reads the process environment, never writes it.
    """
    from pydantic import ValidationError

    named = ""
    if config_file is None and os.environ.get("URONODE_CONFIG"):
        config_file = Path(os.environ["URONODE_CONFIG"])
        named = " (URONODE_CONFIG)"
    if config_file is not None and (problem := _config_file_problem(config_file)):
        raise ConfigError(f"config file {config_file}{named} {problem}")
    cls = _reading(config_file)
    try:
        if not overrides:
            return Settings.model_validate(cls().model_dump())
        # Nested init values replace a whole group; merge with what env/file give first.
        base = cls().model_dump()
        return Settings.model_validate(_deep_merge(base, overrides))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:  # read by cls(): only a config file is TOML
        raise ConfigError(f"config file {config_file}{named} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {config_file}{named} is not UTF-8 text (TOML is): {exc}") from None
    except SettingsError as exc:
        raise ConfigError(_environment_problem(exc)) from None
