"""One settings object for the whole node.

Values come, in order of precedence, from command-line flags, environment
variables (prefix ``URONODE_``, nested groups joined by ``__``, e.g.
``URONODE_SCP__AE_TITLE``), a TOML config file (``--config`` or
``URONODE_CONFIG``) and the defaults below. Everything is validated when the
node starts, so a bad value stops start-up with a message instead of failing
the first association.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import json
import os
import re
import ssl
import sys
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, Union, get_args, get_origin
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

AE_TITLE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM AE VR: printable ASCII, no backslash
HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
"""A DNS host name (RFC 1123 labels; ``_`` too, which Docker's service names may hold)."""
ENV_PREFIX = "URONODE_"
OTHER_VARIABLES = frozenset({"URONODE_CONFIG", "URONODE_SHARED_DATA", "URONODE_IN_NETNS"})
"""``URONODE_*`` environment variables that are not settings: the config file, the lab's shared data
(lab/synth.py) and the test harness's network-namespace mark (tests/peers/netns.py)."""
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


DEFAULT_MODEL = "default"
"""The model the node runs unless ``inference.model`` names another."""


def model_folder(name: str | os.PathLike[str] | None, models_dir: Path | None = None) -> Path | None:
    """The folder of the model ``name`` (None: :data:`DEFAULT_MODEL`) as the node finds the one it runs: a
    folder path as given, else ``<models_dir>/<name>`` (``models_dir`` None: the models uronode ships with);
    None where neither is a folder. The runtime (which loads the model), the worker queue's HTTP side (which
    compares a remote worker's model with the node's) and the commands all look a model up through it."""
    name = str(name or DEFAULT_MODEL)
    if Path(name).is_dir():
        return Path(name)
    candidate = (default_models_dir() if models_dir is None else models_dir) / name
    return candidate if candidate.is_dir() else None


def model_label(folder: Path | None) -> str:
    """A model as results and findings name it, "name version" from the card of its ``folder``; "" where
    there is no folder or its card does not say both (nothing is loaded)."""
    if folder is None:
        return ""
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, ValueError):
        return ""
    if isinstance(card, dict) and card.get("name") and card.get("version"):
        return f"{card['name']} {card['version']}"
    return ""


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
    """``value`` stripped, or ValueError naming ``what``: 1-16 characters of printable ASCII, no backslash."""
    stripped = value.strip()
    if not stripped:
        raise ValueError(f"{what} must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"{what} {stripped!r} is {len(stripped)} characters long; the limit is 16")
    if not AE_TITLE_CHARS.match(stripped):
        odd = next(c for c in stripped if not AE_TITLE_CHARS.match(c))
        kind = "a backslash" if odd == "\\" else "a control character" if odd < " " or odd == "\x7f" else \
            f"{odd!r}, not printable ASCII"
        raise ValueError(f"{what} {stripped!r} holds {kind}: an AE title is printable ASCII without a backslash")
    return stripped


def check_host(value: str, what: str) -> str:
    """``value`` as an IP address (IPv4-mapped IPv6 as its IPv4 address, brackets dropped) or a lower-case
    host name, or ValueError naming ``what``."""
    text = value.strip()
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        # a name whose last label is all digits is a mistyped address (10.1.2), not a name
        if HOST_NAME.match(text) and not text.rstrip(".").rpartition(".")[2].isdigit():
            return text.lower()
        raise ValueError(f"{what} {text!r} is neither an IP address nor a host name") from None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


SECRET_NAME = re.compile(r"token|passw|secret|key|signature|credential|auth|^sig$", re.IGNORECASE)
"""A name that sounds like a credential: its value is left out wherever it is shown (an audited query, a URL).
Generous: a harmless parameter masked costs nothing, a credential shown is a leak."""
_PARAMETER = re.compile(r"(?P<name>[^=&;]*)=(?P<value>[^&;]*)")


def url_for_people(url: str, mask: str = "...") -> str:
    """``url`` as a message or ``uronode config`` shows it: the values of query (and fragment) parameters whose
    names sound like credentials (``?access_token=...``, ``X-Amz-Signature``, an encoded name too) replaced by
    ``mask``, so that a job's reason or a pasted config names the destination without its secret; the path is
    left as it is."""
    if "?" not in url and "#" not in url:
        return url

    def masked(text: str) -> str:
        return _PARAMETER.sub(lambda m: f"{m['name']}={mask}" if SECRET_NAME.search(unquote(m["name"])) else m[0],
                              text)

    rest, hash_mark, fragment = url.partition("#")
    head, question_mark, query = rest.partition("?")
    return head + question_mark + masked(query) + hash_mark + masked(fragment)


MAX_DURATION_S = 366 * 86400.0
"""The longest duration (a setting ending in ``_s``) taken: probe 53: 1e10 s stopped the retention loop and every
association with an OverflowError, and nothing the node waits for is longer than a year."""


class _Encrypted(Exception):
    """A TLS key asked for its passphrase."""


def _no_passphrase() -> str:
    raise _Encrypted


def _is_path_field(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return annotation is Path or Path in get_args(annotation)


class StrictModel(BaseModel):
    """A settings model that refuses names it does not have: a misspelled setting stops start-up instead
    of being ignored (``[scp] restrict_caller = true`` would leave the node open). No number may be infinite or
    NaN (probe 53: ``inf`` passed, went to the receiving processes as JSON null, and they died on it), and no
    duration longer than :data:`MAX_DURATION_S`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _paths(cls, value: Any, info: ValidationInfo) -> Any:
        """A file or folder setting: ``~`` is the home folder (probe 53: ``data_dir = "~/uronode-data"`` made a
        folder named ``~`` in the working folder), and an empty value is none where none is allowed (an unset
        variable in ``URONODE_SCP__TLS_CERT_FILE=$CERT`` had been the current folder, "does not exist")."""
        if info.field_name is None or not _is_path_field(cls, info.field_name):
            return value
        if isinstance(value, str) and not value.strip():
            if type(None) in get_args(cls.model_fields[info.field_name].annotation):
                return None
            raise ValueError("is empty: give a file or folder")  # review 51: 'Input is not a valid path'
        return Path(value).expanduser() if isinstance(value, str | os.PathLike) else value

    @model_validator(mode="after")
    def _durations(self) -> Self:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("_s") and isinstance(value, int | float) and value > MAX_DURATION_S:
                raise ValueError(f"{name} {value:g} s is more than a year: a duration is given in seconds")
        return self


class CallerRule(StrictModel):
    """One entry of the calling-AE allow-list: an AE title and optionally the host it must come from
    (an IP address, or a host name :mod:`scp.policy` resolves)."""

    model_config = ConfigDict(frozen=True)

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> CallerRule:
        """Parse ``AE`` or ``AE@host``; ValueError if the AE title or the host is not one."""
        ae, at, host = text.partition("@")
        title = check_ae_title(ae, "allowed calling AE title")
        if at and not host.strip():
            raise ValueError(f"allowed caller {text.strip()!r}: no host after @")
        return cls(ae_title=title, host=check_host(host, f"allowed caller {title}: host") if at else None)


class ScpSettings(StrictModel):
    """The DICOM listener (C-ECHO / C-STORE SCP)."""

    ae_title: str = "URONODE"
    port: int = Field(11112, ge=1, le=65535)
    restrict_callers: bool = False
    """When true, only callers on ``allowed_callers`` may associate."""
    allowed_callers: list[str] = Field(default_factory=list)
    """Entries ``AE`` (from any host) or ``AE@host`` (only from that host): ``host`` is an IP address (an
    IPv4 caller reaching a listener on ``::`` as ``::ffff:10.1.2.3`` is ``10.1.2.3``) or a host name,
    e.g. a compose service (``ORTHANC@orthanc``). A name is resolved (all its addresses) when the
    receivers start, and again when the AE calls from an address the name did not give, at most every
    5 s; an answer is kept 30 s, so a peer whose address changes (a container made anew) is let in
    without a restart. A name that does not resolve lets no one in under it (logged as a warning)."""
    max_associations: int = Field(16, ge=1, le=1000)
    """Concurrent associations accepted, over all receiving processes."""
    max_associations_per_host: int | None = Field(None, ge=1, le=1000)
    """Concurrent associations accepted from one host (its address), over all receiving processes; None:
    half of ``max_associations``, rounded up, so that one host (a misbehaving sender, or any host while
    ``restrict_callers`` is off) cannot keep the others out. At most ``max_associations``."""
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
        try:
            # never a prompt: a passphrase-protected key asked for one on the node's stdin, from every receiving
            # process (probe 53)
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file, password=_no_passphrase)
            if self.tls_ca_file is not None:
                context.load_verify_locations(self.tls_ca_file)
        except (ssl.SSLError, OSError, _Encrypted) as exc:
            what = ("the key is protected by a passphrase, which the node cannot be given: give it the key without"
                    " one (openssl pkey -in KEY -out KEY.plain), readable by the node's account only"
                    if isinstance(exc, _Encrypted) else str(exc))
            raise ConfigError(f"scp TLS: {self.tls_cert_file}, {self.tls_key_file}"
                              + (f" and {self.tls_ca_file}" if self.tls_ca_file else "")
                              + f" could not be loaded as a PEM certificate, key and CA: {what}") from exc
        if self.tls_ca_file is not None:
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

    def host_share(self) -> int:
        """Associations one host may hold (``max_associations_per_host``, or half the node's, at most all)."""
        share = self.max_associations_per_host or (self.max_associations + 1) // 2
        return min(share, self.max_associations)


class StorageSettings(StrictModel):
    """Where instances, the index and the queue live."""

    data_dir: Path = Path("uronode-data")
    max_disk_used_percent: float = Field(95.0, gt=0, le=100)
    """Refuse new instances (out of resources) when the disk is fuller than this."""
    fsync: bool = True
    """fsync every instance and the index before answering success. Turn off only for throwaway tests."""
    retention_days: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Delete a received series this many days after its last instance arrived, with the results the node
    derived from it (SEG, SC, SR, KOS), and the jobs (with their findings), deliveries and associations that
    ended that long ago (:mod:`uronode.retention`). None (the default): keep everything."""
    retention_interval_s: float = Field(3600.0, gt=0)
    """How often the node looks for series past their retention."""

    @field_validator("max_disk_used_percent")
    @classmethod
    def _percent(cls, value: float) -> float:
        if value < 1:  # probe 53: 0.95 (a fraction) refused every instance on any disk more than 0.95 % full
            raise ValueError(f"storage.max_disk_used_percent {value:g} is a percentage of the disk: 95 means 95 %")
        return value


class DicomwebSettings(StrictModel):
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
    """Reverse proxies, each an IP address or a network (``172.18.0.0/16``, e.g. a container network),
    whose ``X-Forwarded-User``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` the node believes (the audit
    log's user and client, the scheme of the URLs it writes); from any other client those headers are not
    taken as the user, the address or the scheme."""

    cors_origins: list[str] = Field(default_factory=list)
    """Web origins (``https://viewer.hospital.example``, scheme, host and port) whose pages may call the node's
    DICOMweb and API from a browser (CORS): another OHIF or web viewer that adds the node as a data source.
    Empty (the default): none, the node's own viewer and upload page are on its own origin. ``*`` only with
    ``auth`` ``none``: with authentication, any page could otherwise use a user's credentials."""

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            parts = urlsplit(entry)
            if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query
                    or parts.fragment or parts.username is not None or entry != entry.strip()):
                raise ValueError(f"dicomweb.cors_origins: {entry!r} is not a web origin: the scheme, host and port"
                                 " a page is served from, such as https://viewer.hospital.example or"
                                 " http://10.0.0.5:3000, without a path or a trailing slash")
        return [entry.lower() for entry in value]

    @model_validator(mode="after")
    def _any_origin_only_when_open(self) -> DicomwebSettings:
        if "*" in self.cors_origins and self.auth != "none":
            raise ValueError("dicomweb.cors_origins: '*' (any web page) is refused while dicomweb.auth is"
                             f" {self.auth!r}: any page could use a user's credentials; name the viewer's origin")
        return self

    @field_validator("tokens")
    @classmethod
    def _no_empty_token(cls, value: list[str]) -> list[str]:
        if any(not token.strip() for token in value):  # probe 53: '["${API_TOKEN}"]' with the variable unset
            raise ValueError("dicomweb.tokens holds an empty token (a variable left unset?): 'Authorization: Bearer'"
                             " with nothing after it would open the node")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip())
            except ValueError:
                try:
                    network = ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"dicomweb.trusted_proxies: {entry!r} is neither an IP address"
                                     " nor a network (such as 172.18.0.0/16)") from None
                raise ValueError(f"dicomweb.trusted_proxies: {entry!r} has host bits set;"
                                 f" the network is {network}") from None
        return value


class KnownAE(StrictModel):
    """Where a calling AE title can be reached, for results sent back to the sender."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value, "delivery.known_aes host")  # probe 53: 'ct1..bad' passed; review 51: '[fd00::5]'


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


class Destination(StrictModel):
    """Where results go. ``kind``: ``dicom`` (C-STORE to ``ae_title`` at ``host``:``port``),
    ``sender`` (C-STORE back to the AE that sent the series, looked up in ``delivery.known_aes``)
    or ``dicomweb`` (STOW-RS to ``url``, with optional basic auth or a bearer token)."""

    model_config = ConfigDict(frozen=True)

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

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None, info: ValidationInfo) -> str | None:
        # as the SCU connects to it (review 51: '[fd00::5]' and ' pacs ' passed, and getaddrinfo refused them)
        return None if value is None else check_host(value, f"destination {info.data.get('name', '?')} host")

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "dicom" and not (self.ae_title and self.host and self.port):
            raise ValueError(f"destination {self.name}: a dicom destination needs ae_title, host and port")
        if self.kind == "dicomweb" and not self.url:
            raise ValueError(f"destination {self.name}: a dicomweb destination needs url")
        if self.password is not None and self.username is None:  # probe 53: a password alone sent no credentials
            raise ValueError(f"destination {self.name}: a password needs its username")
        if self.ae_title is not None:
            check_ae_title(self.ae_title, f"destination {self.name} ae_title")
        # probe 53: 'pacs.example/dicom-web' (no scheme), 'ftp://...', a host with its port or a doubled dot
        # passed, and each delivery failed with a traceback for a day before it was a dead letter
        if self.url is not None:
            parts = urlsplit(self.url)
            # review 51: urllib takes 'user:pw@host' whole for the host name, and each delivery failed for a day;
            # review 52: checked first, so that no message repeats the password
            if parts.username is not None or parts.password is not None:
                raise ValueError(f"destination {self.name} url holds a user name or password: give them as its"
                                 " username and password (sent as basic authentication), not in the url")
            if any(c.isspace() or not c.isprintable() for c in self.url):  # review 52: urllib refused it each try
                raise ValueError(f"destination {self.name} url holds a space or a control character: encode it"
                                 " (%20)")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"destination {self.name} url {url_for_people(self.url)!r} is no http:// or https://"
                                 " address with a host (e.g. https://pacs.example/dicom-web)")
            check_host(parts.hostname, f"destination {self.name} url's host")
        return self


class DeliverySettings(StrictModel):
    """Sending results: destinations, retries, the SCU's timeouts."""

    destinations: list[Destination] = Field(default_factory=list)
    """Empty: results stay in the node (and its DICOMweb)."""
    known_aes: dict[str, KnownAE] = Field(default_factory=dict)
    """Calling AE title -> host and port, for ``sender`` destinations."""
    retry_for_s: float = Field(86400.0, gt=0)
    """A delivery that keeps failing is retried this long (from when it was owed, or made pending again by
    ``uronode retry``), then it is a dead letter with the last reason. A day by default: a PACS
    maintenance window of hours is waited out."""
    max_attempts: int | None = Field(None, ge=1, le=100000)
    """Optionally, also give up after this many failed tries (None: only ``retry_for_s`` counts)."""
    backoff_s: float = Field(5.0, gt=0)
    """First wait after a failure; it doubles each time ..."""
    backoff_max_s: float = Field(600.0, gt=0)
    """... up to this."""
    connect_timeout_s: float = Field(10.0, gt=0, le=3600)
    """C-STORE SCU: the most a TCP connection to a destination may take."""
    acse_timeout_s: float = Field(30.0, gt=0, le=3600)
    """C-STORE SCU: the most the answer to the A-ASSOCIATE-RQ (and A-RELEASE-RQ) may take."""
    dimse_timeout_s: float = Field(120.0, gt=0, le=3600)
    """C-STORE SCU: the most each C-STORE response may take (an archive that commits a large SEG
    synchronously can take more than 30 s)."""

    @model_validator(mode="after")
    def _unique(self) -> DeliverySettings:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("delivery.destinations: names must be unique")
        for ae in self.known_aes:
            check_ae_title(ae, "delivery.known_aes key")
        folded = [_fold_ae(ae) for ae in self.known_aes]
        if len(folded) != len(set(folded)):
            raise ValueError("delivery.known_aes: two keys name one AE title (case and spaces aside)")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"delivery.backoff_max_s ({self.backoff_max_s:g}) must not be shorter than "
                             f"delivery.backoff_s ({self.backoff_s:g})")
        return self

    def known_ae(self, calling_ae: str) -> KnownAE | None:
        """Where results for a series sent by ``calling_ae`` go back to (a ``sender`` destination): its
        ``known_aes`` entry, matched without regard to case and surrounding spaces (probe 53: given as variables,
        ``URONODE_DELIVERY__KNOWN_AES__CT1__HOST``, the key came out as ``ct1``, and a scanner calling as ``CT1``
        was not found; a key ``"CT1 "`` kept its space)."""
        if (exact := self.known_aes.get(calling_ae)) is not None:
            return exact
        wanted = _fold_ae(calling_ae)
        return next((known for ae, known in self.known_aes.items() if _fold_ae(ae) == wanted), None)


def _is_this_host(host: str | None, bound: str) -> bool:
    """Whether ``host`` (a destination's) names the machine the node listens on at ``bound``: a loopback
    address, ``localhost``, or the address it binds."""
    if host is None:
        return False
    if host in ("localhost", bound):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fold_ae(ae: str) -> str:
    return ae.strip().upper()


class InferenceSettings(StrictModel):
    """The model the worker runs."""

    models_dir: Path = Field(default_factory=default_models_dir)
    """Where model folders are looked up by name (default: the shipped ones, see :func:`default_models_dir`)."""
    model: str = "default"
    """A folder under ``models_dir`` (or a path to a model folder)."""
    workers: int = Field(1, ge=0, le=8)
    """Worker processes running the model (each loads it once); 0 leaves jobs queued for workers elsewhere."""
    job_timeout_s: float = Field(1800.0, gt=0, allow_inf_nan=False)
    """A job the node's own worker has run longer than this is taken from it: the worker is killed and replaced,
    the job goes back to the queue with that try counted (it fails on its second), its reason saying why (probe
    41: a job whose computation hung while its heartbeat lived held the worker, and the queue, for good)."""
    contrast_series: str = Field("skip", pattern=r"^(skip|read)$")
    """A series whose description clearly names a contrast phase (``uronode.contrast``) and that arrives unasked
    (C-STORE, STOW-RS): ``skip`` records it as skipped, with the reason; ``read`` reads it, with a caution on
    every result. An upload to ``/api/predict`` is read either way (someone asked), with the caution; an agent
    alone never skips a series, it cautions."""
    sharp_kernel_series: str = Field("skip", pattern=r"^(skip|read)$")
    """A sharp-kernel (bone, lung) reconstruction arriving unasked (``uronode.completion.sharp_kernel``): ``skip``
    records it as skipped, with the reason; ``read`` reads it. An upload is read either way."""
    other_region_series: str = Field("skip", pattern=r"^(skip|read)$")
    """A series whose header clearly names another region than the abdomen (head, chest, heart, a limb) or a
    phantom, and the abdomen nowhere (``uronode.anatomy``), arriving unasked: ``skip`` records it as skipped, with
    the reason; ``read`` reads it, with a caution on every result. An upload is read either way, with the caution
    (probe 46: a head CT's pineal gland came back coded as a urinary stone)."""


class QueueSettings(StrictModel):
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

    @model_validator(mode="after")
    def _not_itself(self) -> Settings:
        if self.scp.port == self.dicomweb.port:  # probe 53: uvicorn's "address already in use" named no setting
            raise ValueError(f"scp.port and dicomweb.port are both {self.scp.port}: the DICOM listener and the HTTP"
                             " server each need a port of their own")
        for destination in self.delivery.destinations:  # probe 53: results 'delivered' to the node itself
            if (destination.kind == "dicom" and destination.port == self.scp.port
                    and destination.ae_title == self.scp.ae_title and _is_this_host(destination.host, self.host)):
                raise ValueError(f"destination {destination.name} is this node itself ({destination.ae_title} at"
                                 f" {destination.host}:{destination.port}): results go to the PACS")
        return self

    def cautions(self) -> list[str]:
        """Settings that are valid but most likely not what was meant, one sentence each: ``serve`` logs them as
        warnings at start and ``config`` prints them (probe 53: each was taken without a word)."""
        said: list[str] = []
        if not self.scp.restrict_callers:  # probe 27: one host held every association slot; nothing said so
            # probe 53: with the list given and the switch left off, the advice was to give the list
            todo = ("turn scp.restrict_callers on: scp.allowed_callers is listed but not applied"
                    if self.scp.allowed_callers else "list the scanners and the PACS in scp.allowed_callers"
                    " (AE@host) and turn scp.restrict_callers on")
            said.append(f"scp.restrict_callers is off: any host may store series here and hold"
                        f" {self.scp.host_share()} of its {self.scp.max_associations} association slots; {todo}"
                        " before the node goes on a hospital network (docs/operations.md, \"Before it goes on a"
                        " hospital network\")")
        if not self.delivery.destinations:  # probe 55: a deployment without one showed every job 'delivered'
            said.append("delivery.destinations is empty: results stay in the node (its DICOMweb and viewer) and no"
                        " PACS gets them; name the PACS there (README.md, delivery.destinations)")
        senders = [d.name for d in self.delivery.destinations if d.kind == "sender"]
        if senders and not self.delivery.known_aes:
            said.append(f"destination {senders[0]} sends results back to the AE that sent the series, but"
                        " delivery.known_aes is empty: each such delivery fails as an unknown sender until the"
                        " senders' AE titles are listed there with their host and port")
        if self.delivery.known_aes and not senders:
            said.append(f"delivery.known_aes lists {len(self.delivery.known_aes)} AE title(s) but no destination is"
                        " of kind sender: they are not used")
        web = self.dicomweb
        if web.auth == "none" and (web.password is not None or web.tokens):
            said.append(f"dicomweb.auth is none: the {'password' if web.password is not None else 'tokens'} set"
                        " in dicomweb is never asked for, and anyone who reaches the HTTP port may read every study")
        if (share := self.scp.max_associations_per_host) and share > self.scp.max_associations:
            said.append(f"scp.max_associations_per_host {share} is more than scp.max_associations"
                        f" {self.scp.max_associations}: one host may hold {self.scp.max_associations}")
        return said

    @field_validator("host")
    @classmethod
    def _bind_host(cls, value: str) -> str:
        if not value.strip():  # probe 53: '' bound every address, IPv6 too, and config showed ""
            raise ValueError("host is empty: give 0.0.0.0 for every IPv4 address, :: for every address, or one")
        return value

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


def _source(loc: tuple[str | int, ...], config_file: Path | None, overrides: dict[str, Any] | None) -> str:
    """Where the value at ``loc`` came from, as a refusal names it (`` (URONODE_SCP__PORT)``, `` (node.toml)``,
    `` (the command line)``), looked for in the order they win and only where it is given (a group's JSON
    variable or the file's table must hold it); empty for a default, and for a check of a whole group or across
    settings, whose values may come from several (probe 53: a bad variable was named like a setting in the file,
    and the admin looked in the file)."""
    names = [str(part) for part in itertools.takewhile(lambda part: isinstance(part, str), loc)]
    if not names or (len(names) == len(loc) and _fields_at(loc)):
        return ""

    def holds(tree: Any, path: list[str]) -> bool:
        for name in path:
            if not isinstance(tree, dict) or name not in tree:
                return False
            tree = tree[name]
        return True

    if holds(overrides, names):
        return " (the command line)"
    variables = {name.upper(): value for name, value in os.environ.items()}
    for depth in range(len(names), 0, -1):  # the setting's own variable, else its group's JSON holding it
        variable = ENV_PREFIX + "__".join(names[:depth]).upper()
        if variable in variables:
            try:
                given = depth == len(names) or holds(json.loads(variables[variable]), names[depth:])
            except ValueError:
                given = False
            if given:
                return f" ({variable})"
    if config_file is not None:
        try:
            if holds(tomllib.loads(config_file.read_text(encoding="utf-8")), names):
                return f" ({config_file})"
        except (OSError, ValueError):
            pass
    return ""


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


def _inner(annotation: Any) -> Any:
    """``annotation`` without ``| None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _inner(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """The names the settings model at ``loc`` (a path as pydantic reports it: list indexes and dict keys
    included) has, or none if ``loc`` leads to no model."""
    annotation: Any = Settings
    for part in loc:
        if (model := _model(annotation)) is not None:
            if not isinstance(part, str) or part not in model.model_fields:
                return []
            annotation = model.model_fields[part].annotation
        elif get_origin(_inner(annotation)) in (list, tuple, dict):
            annotation = get_args(_inner(annotation))[-1 if get_origin(_inner(annotation)) is dict else 0]
        else:
            return []
    model = _model(annotation)
    return list(model.model_fields) if model is not None else []


def _meant(unknown: str, known: list[str]) -> str | None:
    """The name in ``known`` closest to the misspelled ``unknown``, if one is close."""
    close = difflib.get_close_matches(unknown.lower(), known, n=1, cutoff=0.6)
    return close[0] if close else None


def _setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every group and value of ``model``, as paths of field names."""
    paths = []
    for name, field in model.model_fields.items():
        paths.append((*prefix, name))
        if (inner := _model(field.annotation)) is not None:
            paths += _setting_paths(inner, (*prefix, name))
    return paths


def _unknown_setting(loc: tuple[str | int, ...]) -> str:
    """Why pydantic refused ``loc`` (an input no settings model has), with the name meant if one is close."""
    meant = _meant(str(loc[-1]), _fields_at(loc[:-1]))
    where = ".".join(str(p) for p in loc)
    return f"{where}: unknown setting" + (f"; did you mean {'.'.join(str(p) for p in (*loc[:-1], meant))}?"
                                          if meant else "")


def _environment_variable_problem(variable: str) -> str | None:
    """Why ``variable`` (a ``URONODE_*`` environment variable) names no setting, or None if it names one.

    pydantic-settings reads only the variables that name a field and ignores the rest, so a misspelled
    one (``URONODE_SCP__RESTRICT_CALLER``, ``URONODE_DATA_DIR``) would leave its setting at the default."""
    parts = variable[len(ENV_PREFIX):].lower().split("__")
    annotation: Any = Settings
    for depth, part in enumerate(parts):
        if (model := _model(annotation)) is not None:
            if part in model.model_fields:
                annotation = model.model_fields[part].annotation
                continue
            # the name meant: the misspelled part among its siblings, else the whole name among all
            meant_part = _meant(part, list(model.model_fields))
            meant: str | None
            if meant_part is not None:
                meant = ENV_PREFIX + "__".join((*parts[:depth], meant_part, *parts[depth + 1:])).upper()
            else:
                names = ["__".join(p) for p in _setting_paths(Settings)]
                close = _meant("__".join(parts), names)
                meant = ENV_PREFIX + close.upper() if close else None
            group = ".".join(parts[:depth]) or "the top level"
            return (f"environment variable {variable} names no setting ({group} has no {part!r})"
                    + (f"; did you mean {meant}?" if meant else ""))
        if get_origin(_inner(annotation)) is dict:  # URONODE_DELIVERY__KNOWN_AES__<key>...: a key, then its value
            annotation = get_args(_inner(annotation))[1]
            continue
        return f"environment variable {variable} names no setting ({'.'.join(parts[:depth])} holds no {part!r})"
    return None


def _environment_problems(environ: Mapping[str, str]) -> list[str]:
    """One line for each ``URONODE_*`` variable in ``environ`` that names no setting (case as pydantic-settings
    reads them: any), leaving out :data:`OTHER_VARIABLES`."""
    problems = []
    for variable in sorted(environ):
        if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in OTHER_VARIABLES:
            if (problem := _environment_variable_problem(variable)) is not None:
                problems.append(problem)
    return problems


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from flags (``overrides``), environment and config file.

    ``config_file`` defaults to ``URONODE_CONFIG``. ``overrides`` is nested like
    the settings (``{"scp": {"port": 104}}``) and wins over everything else.
    Raises :class:`ConfigError` with a readable message when a value is invalid, a name (in the file, in
    the environment, in a JSON group) is no setting, the config file is missing, is a folder or is not
    UTF-8 TOML, or a group in the environment is not JSON. Reads the process environment, never writes it.
    """
    from pydantic import ValidationError

    named = ""
    if config_file is None and os.environ.get("URONODE_CONFIG"):
        config_file = Path(os.environ["URONODE_CONFIG"])
        named = " (URONODE_CONFIG)"
    if config_file is not None and (problem := _config_file_problem(config_file)):
        raise ConfigError(f"config file {config_file}{named} {problem}")
    if unknown := _environment_problems(os.environ):
        raise ConfigError(unknown[0] if len(unknown) == 1 else "invalid settings:\n  " + "\n  ".join(unknown))
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
            if err["type"] == "extra_forbidden" and err["loc"]:
                lines.append(_unknown_setting(err["loc"]))
                continue
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where}{_source(err['loc'], config_file, overrides)}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:  # read by cls(): only a config file is TOML
        raise ConfigError(f"config file {config_file}{named} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {config_file}{named} is not UTF-8 text (TOML is): {exc}") from None
    except SettingsError as exc:
        raise ConfigError(_environment_problem(exc)) from None
