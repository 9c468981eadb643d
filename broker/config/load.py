"""The broker's settings: frozen dataclasses loaded once, in ``main``, from one TOML file.

``load_settings(path)`` reads the file with :mod:`tomllib` and validates every key; every problem
raises :class:`broker.errors.ConfigError` whose message names the offending key (``[oauth].issuer``)
and never echoes a value that could be a secret. Rules:

* unknown sections and keys are rejected (a typo must not silently fall back to a default);
* values have exact types (``true`` is not a number, ``"30"`` is not a number);
* URLs the broker trusts or publishes must be ``https`` unless ``[oauth] allow_insecure_http``
  is ``true`` (tests only); the issuer is kept byte-for-byte (discovery compares it exactly);
* secrets are only ever *paths to files*: the key URI carries ``pin-source=file:...`` and a
  ``pin-value`` attribute is rejected; a PostgreSQL DSN with a password is rejected (use
  ``passfile=``); relative paths are resolved against the configuration file's directory;
* files the broker must read at start-up (TLS material, CA bundles, policy, PIN file) must exist
  when ``check_files`` is true (the default).

Only the path of the file may come from the environment (``BROKER_CONFIG``): see
:func:`resolve_config_path`. There is no module-level state.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from broker.errors import BrokerError, ConfigError, DidError, InvalidKeyUri
from broker.keys.didkey import decode_did_key
from broker.keys.health import DEFAULT_BUSY_RETRIES, DEFAULT_OP_TIMEOUT, PROBE_BACKOFF
from broker.keys.kid import KidFormat
from broker.keys.uri import check_pin_file, parse_key_uri
from broker.oauth.origins import parse_allowed_origin
from broker.strict_json import DOCUMENT_MAX_BYTES, JWT_MAX_BYTES
from broker.telemetry.settings import (  # defined in telemetry, which sits below config
    EXPORTERS,
    LOG_LEVELS,
    Exporter,
    LogFormat,
    LogLevel,
    TelemetrySettings,
)
from broker.tokens.schedule import (
    DEFAULT_FRACTION,
    DEFAULT_RETRY_MARGIN,
    LifetimeKind,
    RefreshTokenLifetime,
)
from broker.web.jwks import DEFAULT_JWKS_PATH, DEFAULT_MAX_AGE, MAX_MAX_AGE, check_jwks_path

CONFIG_ENV = "BROKER_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/broker/broker.toml")

StoreKind = Literal["sqlite", "postgres"]
_EXPORTERS = EXPORTERS
_LOG_LEVELS = LOG_LEVELS
_SCHEMA_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
)  # as broker.tokens.stores.postgres checks it
MAX_CLOCK_SKEW = 60.0  # TEST-CATALOGUE B05: a configured skew of at most 60 s


# --- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySettings:
    """``[key]``: the client key in the PKCS#11 token.

    ``uri`` is an RFC 7512 URI such as
    ``pkcs11:token=broker;object=client-2026?pin-source=file:/run/secrets/user_pin``; the keys
    package parses it. ``pin_file`` is the file its ``pin-source`` names (already resolved).

    HSM resilience (:class:`broker.keys.health.HsmHealth`, TEST-CATALOGUE D02, D07, D08):
    ``busy_retries`` retries of a busy HSM; ``sign_timeout`` seconds one HSM call (and the wait
    for the HSM lock) may take, None for no bound (``0`` in the file); the recovery probe of a
    DOWN HSM waits ``probe_initial`` seconds, then x1.5 per attempt up to ``probe_max``.
    """

    uri: str
    pin_file: Path
    sealing_key_label: str | None = None
    busy_retries: int = DEFAULT_BUSY_RETRIES
    sign_timeout: float | None = DEFAULT_OP_TIMEOUT
    probe_initial: float = PROBE_BACKOFF.initial
    probe_max: float = PROBE_BACKOFF.maximum


@dataclass(frozen=True)
class OAuthSettings:
    """``[oauth]``: the client registration at the authorization server (DOME Verifier)."""

    issuer: str
    redirect_uri: str
    client_id: str | None = None  # the did:key; derived from the key when None
    scope: str = "openid learcredential"
    use_pkce: bool = True
    use_par: bool = False
    dome_compat: bool = True
    clock_skew: float = 60.0
    http_timeout: float = 10.0
    max_response_bytes: int = DOCUMENT_MAX_BYTES
    """Cap of one AS response body (metadata, JWKS, token, PAR), as read and as JSON text."""
    max_jwt_bytes: int = JWT_MAX_BYTES
    """Cap of one compact JWT from the AS (the id_token), checked before it is decoded."""
    ca_file: Path | None = None
    login_ttl: float = 600.0
    refresh_token_lifetime: RefreshTokenLifetime = field(default_factory=RefreshTokenLifetime)
    """How long a refresh token lives when the token response has no ``refresh_expires_in``:
    ``"access"`` (as the access token issued with it: DOME v2), seconds, or ``"unknown"``."""
    allow_insecure_http: bool = False
    compensate_skew: bool = False
    """C09: sign client assertions on the AS's clock as measured from its ``Date`` headers."""
    allowed_endpoint_origins: tuple[str, ...] = ()
    """https origins besides the issuer's that the AS metadata may name for the token, PAR,
    JWKS and revocation endpoints (normalized, e.g. ``https://token.example.org``)."""
    kid_format: KidFormat = KidFormat.DID
    """The ``kid`` of our JWS headers and published keys (:mod:`broker.keys.kid`)."""


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: the HTTPS listener (request objects at ``request_uri``, the callback)."""

    public_base_url: str
    host: str = "0.0.0.0"  # noqa: S104 - a server listener; operators narrow it
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    post_login_url: str | None = None
    jwks_path: str | None = DEFAULT_JWKS_PATH
    """Where the listener serves our public key set; None (``""`` in the file): not served."""
    jwks_max_age: int = DEFAULT_MAX_AGE


@dataclass(frozen=True)
class GrpcSettings:
    """``[grpc]``: the mTLS API for internal services."""

    server_cert: Path
    server_key: Path
    client_ca: Path
    policy_file: Path
    bind: str = "0.0.0.0:50051"
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 100
    reflection: bool = False
    cn_identities: bool = False
    """Name a caller by its certificate's subject CN (as ``cn:<CN>``) when it has no URI SAN:
    an opt-in for non-SPIFFE PKIs. Off: the one URI SAN, a SPIFFE ID, is the only identity."""

    @property
    def host(self) -> str:
        return _split_bind(self.bind, "[grpc].bind")[0]

    @property
    def port(self) -> int:
        return _split_bind(self.bind, "[grpc].bind")[1]


@dataclass(frozen=True)
class StoreSettings:
    """``[store]``: where grants live. ``path`` for SQLite, ``dsn`` (no password) for PostgreSQL;
    ``schema`` (PostgreSQL only) names the schema holding the grant tables, shared by every
    replica of one deployment."""

    kind: StoreKind = "sqlite"
    path: Path | None = None
    dsn: str | None = None
    schema: str = "broker"
    emergency_dir: Path | None = None
    """G04: where refresh results the store could not write are sealed at shutdown (and
    re-imported on start). SQLite default: ``emergency`` next to the database file; PostgreSQL
    has no default (without one such a result is lost at exit, logged CRITICAL)."""


@dataclass(frozen=True)
class TokenSettings:
    """``[tokens]``: freshness. FRESH above ``refresh_threshold`` seconds of remaining life,
    STALE below it (served, refreshed in the background), never served below ``min_serve_ttl``."""

    refresh_threshold: float = 225.0  # google-auth REFRESH_THRESHOLD: 3 min 45 s
    min_serve_ttl: float = 30.0
    background_interval: float = 30.0
    refresh_fraction: float = DEFAULT_FRACTION
    """A background refresh is due at this fraction of the access token's life (+- 10 %
    jitter), never later than ``refresh_threshold`` before expiry."""
    refresh_retry_margin: float = DEFAULT_RETRY_MARGIN
    """Failed refreshes are retried until this many seconds before the refresh token dies."""


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: the append-only, hash-chained audit log (JSON lines). None: audit events go
    to the ``broker.audit`` logger.

    ``path`` is the same file the key ceremonies write (one chain, one hash to anchor); the
    service's events use their own action namespace (``grant.*``, ``token.*``, ``login.*``,
    ``caller.*``; ceremonies: ``keys.*``). ``mirror_path``: a second log written in parallel;
    ``require`` says whether a record must reach ``"all"`` logs or ``"any"`` one of them.
    ``write_timeout``: seconds a record may take before it counts as failed (H01).
    """

    path: Path | None = None
    mirror_path: Path | None = None
    require: Literal["all", "any"] = "all"
    write_timeout: float = 2.0


@dataclass(frozen=True)
class CredentialSettings:
    """``[credential]``: the LEARCredentialMachine (``broker keys credential import``).

    ``path``: the file holding it; default ``lear-credential-machine.jwt`` next to the audit
    log (see :func:`broker.credentials.store.credential_path`). None and no audit log: the
    broker has no machine credential."""

    path: Path | None = None


@dataclass(frozen=True)
class MachineGrantSettings:
    """One ``[[machine_grants]]`` entry: a machine-to-machine grant (client credentials with the
    ``[credential]`` LEARCredentialMachine) that callers reach by ``label`` like a user grant."""

    label: str
    scope: str = "machine learcredential"


@dataclass(frozen=True)
class Settings:
    key: KeySettings
    oauth: OAuthSettings
    web: WebSettings
    grpc: GrpcSettings
    store: StoreSettings
    tokens: TokenSettings
    telemetry: TelemetrySettings
    audit: AuditSettings
    source: Path  # the file these settings came from
    credential: CredentialSettings = CredentialSettings()
    machine_grants: tuple[MachineGrantSettings, ...] = ()


# --- reading -----------------------------------------------------------------------------------

T = TypeVar("T")


class _Section:
    """Typed access to one TOML table; remembers which keys were read, to reject the others."""

    def __init__(self, name: str, table: Mapping[str, Any], base_dir: Path, check_files: bool):
        self.name = name
        self._table = table
        self._seen: set[str] = set()
        self.base_dir = base_dir
        self.check_files = check_files

    def key(self, key: str) -> str:
        return f"[{self.name}].{key}"

    def has(self, key: str) -> bool:
        return key in self._table

    def _raw(self, key: str, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._table:
            if required:
                raise ConfigError(f"{self.key(key)} is required")
            return None
        return self._table[key]

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._raw(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(key)} must be a string, not {_toml_type(value)}")
        if not value or value != value.strip():
            raise ConfigError(f"{self.key(key)} must be non-empty without surrounding spaces")
        return value

    def req_string(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)} must be true or false, not {_toml_type(value)}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)} must be an integer, not {_toml_type(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{self.key(key)} must be within [{low}, {high}], got {value}")
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        """Seconds and the like: an integer or a float within ``[low, high]``."""
        value = self._raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(key)} must be a number, not {_toml_type(value)}")
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError(f"{self.key(key)} must be within [{low:g}, {high:g}], got {value}")
        return number

    def choice(self, key: str, options: tuple[T, ...], default: T) -> T:
        value = self._raw(key, False)
        if value is None:
            return default
        if value not in options:
            shown = ", ".join(repr(o) for o in options)
            raise ConfigError(f"{self.key(key)} must be one of {shown}")
        return cast(T, value)

    def path(self, key: str, *, required: bool = False, must_exist: bool = True) -> Path | None:
        value = self.string(key, required=required)
        if value is None:
            return None
        return _resolve_file(value, self.key(key), self.base_dir, self.check_files and must_exist)

    def req_path(self, key: str) -> Path:
        value = self.path(key, required=True)
        assert value is not None
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise ConfigError(f"unknown key {self.key(unknown[0])}")


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _resolve_file(value: str, key: str, base_dir: Path, must_exist: bool) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if must_exist and not path.is_file():
        raise ConfigError(f"{key}: file {path} does not exist or is not a regular file")
    return path


def _url(section: _Section, key: str, value: str, *, insecure_ok: bool) -> str:
    """An absolute URL with a host, https (or http when allowed), no fragment; kept as given."""
    parts = urlsplit(value)
    allowed = ("https", "http") if insecure_ok else ("https",)
    if parts.scheme not in allowed:
        hint = "" if insecure_ok else " (http only with [oauth].allow_insecure_http = true)"
        raise ConfigError(f"{section.key(key)} must be an https URL{hint}")
    if not parts.hostname:
        raise ConfigError(f"{section.key(key)} must be an absolute URL with a host")
    if parts.fragment or value.endswith("#"):
        raise ConfigError(f"{section.key(key)} must not have a fragment")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{section.key(key)} must not carry user information")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"{section.key(key)} has an invalid port") from exc
    return value


def _split_bind(value: str, key: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key} must be host:port (IPv6 as [::1]:50051)")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{key} port must be within [0, 65535]")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{key} has an unterminated IPv6 bracket")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ConfigError(f"{key} has an invalid IPv6 address") from exc
    elif ":" in host:
        raise ConfigError(f"{key}: write IPv6 hosts in brackets, as [::]:50051")
    return host, port


# --- the sections, validated -------------------------------------------------------------------


def _key_uri(section: _Section) -> tuple[str, Path]:
    """Parse the key URI with :func:`broker.keys.uri.parse_key_uri` and refuse secrets in it."""
    uri = section.req_string("uri")
    name = section.key("uri")
    if re.search(r"pin(-|%2d)value", uri, flags=re.IGNORECASE):
        # Checked before parsing, and the URI is never echoed: it holds the PIN.
        raise ConfigError(
            f"{name} must not contain pin-value; put the PIN in a file and use "
            "pin-source=file:/path/to/pin"
        )
    try:
        ref = parse_key_uri(uri)
    except InvalidKeyUri as exc:
        raise ConfigError(f"{name}: {exc.message}") from exc
    if ref.object is None:
        raise ConfigError(f"{name} must name the key: 'object=' missing")
    pin_file = ref.pin_path()
    if pin_file is None:
        raise ConfigError(
            f"{name} needs pin-source=file:/path/to/pin (the PIN is read from a file)"
        )
    if section.check_files and not pin_file.is_file():
        raise ConfigError(
            f"{name} pin-source: file {pin_file} does not exist or is not a regular file"
        )
    if section.check_files:
        check_pin_file(pin_file)  # InsecurePinFile when group or others may read or write it
    return uri, pin_file


MIN_SIGN_TIMEOUT = 0.05  # seconds; below this a healthy SoftHSM signature could time out


def _key(section: _Section) -> KeySettings:
    uri, pin_file = _key_uri(section)
    sign_timeout: float | None = section.number(
        "sign_timeout", DEFAULT_OP_TIMEOUT, low=0.0, high=300.0
    )
    if sign_timeout == 0:
        sign_timeout = None
    elif sign_timeout is not None and sign_timeout < MIN_SIGN_TIMEOUT:
        raise ConfigError(
            f"{section.key('sign_timeout')} must be 0 (no bound) or at least "
            f"{MIN_SIGN_TIMEOUT:g} seconds"
        )
    probe_initial = section.number("probe_initial", PROBE_BACKOFF.initial, low=0.1, high=300.0)
    probe_max = section.number("probe_max", PROBE_BACKOFF.maximum, low=0.1, high=3600.0)
    if probe_max < probe_initial:
        raise ConfigError(
            f"{section.key('probe_max')} must be at least {section.key('probe_initial')}"
        )
    return KeySettings(
        uri=uri,
        pin_file=pin_file,
        sealing_key_label=section.string("sealing_key_label"),
        busy_retries=section.integer("busy_retries", DEFAULT_BUSY_RETRIES, low=0, high=10),
        sign_timeout=sign_timeout,
        probe_initial=probe_initial,
        probe_max=probe_max,
    )


def _oauth(section: _Section) -> OAuthSettings:
    insecure = section.boolean("allow_insecure_http", False)
    issuer = _url(section, "issuer", section.req_string("issuer"), insecure_ok=insecure)
    if urlsplit(issuer).query:
        raise ConfigError(f"{section.key('issuer')} must not have a query (OIDC Discovery 4.3)")
    redirect = _url(
        section, "redirect_uri", section.req_string("redirect_uri"), insecure_ok=insecure
    )
    client_id = section.string("client_id")
    if client_id is not None:
        try:
            decoded = decode_did_key(client_id)
        except DidError as exc:
            raise ConfigError(
                f"{section.key('client_id')} must be a did:key ({exc.message})"
            ) from exc
        if decoded.key_type != "P-256":
            raise ConfigError(
                f"{section.key('client_id')} must be a P-256 did:key (did:key:zDn...)"
            )
    scope = section.string("scope", default="openid learcredential")
    assert scope is not None
    if "openid" not in scope.split(" ") or "" in scope.split(" "):
        raise ConfigError(
            f"{section.key('scope')} must be space-separated scope tokens including 'openid'"
        )
    if section.has("assertion_audience"):
        raise ConfigError(
            f"{section.key('assertion_audience')} was removed: the client assertion's aud is "
            "always the issuer (RFC 7523bis, FAPI 2.0); the token endpoint URL named by the AS "
            "metadata let the metadata choose the audience. Delete the key."
        )
    max_response = section.integer(
        "max_response_bytes", DOCUMENT_MAX_BYTES, low=4096, high=16 * 1024 * 1024
    )
    max_jwt = section.integer("max_jwt_bytes", JWT_MAX_BYTES, low=1024, high=1024 * 1024)
    if max_jwt > max_response:
        raise ConfigError(
            f"{section.key('max_jwt_bytes')} must not exceed {section.key('max_response_bytes')}"
        )
    return OAuthSettings(
        issuer=issuer,
        redirect_uri=redirect,
        client_id=client_id,
        scope=scope,
        use_pkce=section.boolean("use_pkce", True),
        use_par=section.boolean("use_par", False),
        dome_compat=section.boolean("dome_compat", True),
        clock_skew=section.number("clock_skew", 60.0, low=0.0, high=MAX_CLOCK_SKEW),
        http_timeout=section.number("http_timeout", 10.0, low=0.1, high=300.0),
        max_response_bytes=max_response,
        max_jwt_bytes=max_jwt,
        ca_file=section.path("ca_file"),
        login_ttl=section.number("login_ttl", 600.0, low=30.0, high=3600.0),
        allow_insecure_http=insecure,
        compensate_skew=section.boolean("compensate_skew", False),
        allowed_endpoint_origins=_origins(section, "allowed_endpoint_origins"),
        kid_format=KidFormat(
            section.choice("kid_format", tuple(f.value for f in KidFormat), KidFormat.DID.value)
        ),
        refresh_token_lifetime=_refresh_token_lifetime(section),
    )


def _refresh_token_lifetime(section: _Section) -> RefreshTokenLifetime:
    """``"access"`` (default), ``"unknown"``, or a positive integer of seconds (<= 1 year)."""
    key = "refresh_token_lifetime"
    value = section._raw(key, False)
    if value is None:
        return RefreshTokenLifetime()
    if isinstance(value, str) and value in (LifetimeKind.ACCESS, LifetimeKind.UNKNOWN):
        return RefreshTokenLifetime(LifetimeKind(value))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 31_536_000:
        return RefreshTokenLifetime.of(value)
    raise ConfigError(
        f'{section.key(key)} must be "access", "unknown" or a whole number of seconds '
        "in [1, 31536000]"
    )


def _origins(section: _Section, key: str) -> tuple[str, ...]:
    """An array of https origins (scheme, host, optional port; no path), normalized."""
    if not section.has(key):
        return ()
    value = section._raw(key, False)
    if not isinstance(value, list):
        raise ConfigError(
            f"{section.key(key)} must be an array of strings, not {_toml_type(value)}"
        )
    origins: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{section.key(key)} entries must be strings")
        try:
            origins.append(parse_allowed_origin(item))
        except ValueError as exc:
            raise ConfigError(f"{section.key(key)} entry {item!r} {exc}") from None
    return tuple(dict.fromkeys(origins))


def _web(section: _Section, oauth: OAuthSettings) -> WebSettings:
    insecure = oauth.allow_insecure_http
    base = _url(
        section, "public_base_url", section.req_string("public_base_url"), insecure_ok=insecure
    )
    if urlsplit(base).query:
        raise ConfigError(f"{section.key('public_base_url')} must not have a query")
    base_origin = urlsplit(base)[:2]
    if urlsplit(oauth.redirect_uri)[:2] != base_origin:
        raise ConfigError(
            "[oauth].redirect_uri must be served by this broker: same scheme and host as "
            f"{section.key('public_base_url')}"
        )
    post_login = section.string("post_login_url")
    if post_login is not None:
        _url(section, "post_login_url", post_login, insecure_ok=insecure)
    host = section.string("host", default="0.0.0.0")  # noqa: S104
    assert host is not None
    cert = section.path("tls_cert")
    key = section.path("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{section.key('tls_cert')} and {section.key('tls_key')} go together")
    return WebSettings(
        public_base_url=base,
        host=host,
        port=section.integer("port", 8443, low=0, high=65535),
        tls_cert=cert,
        tls_key=key,
        post_login_url=post_login,
        jwks_path=_jwks_path(section, oauth.redirect_uri),
        jwks_max_age=section.integer("jwks_max_age", DEFAULT_MAX_AGE, low=0, high=MAX_MAX_AGE),
    )


def _jwks_path(section: _Section, redirect_uri: str) -> str | None:
    """``[web].jwks_path``: an absolute path without query; ``""`` turns the route off."""
    value = section._raw("jwks_path", False)
    if value is None:
        return DEFAULT_JWKS_PATH
    if value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{section.key('jwks_path')} must be a string, not {_toml_type(value)}")
    try:
        path = check_jwks_path(value)
    except BrokerError as exc:
        raise ConfigError(f"{section.key('jwks_path')}: {exc.message}") from None
    if (
        path == "/healthz"
        or path.startswith("/request-objects/")
        or path == urlsplit(redirect_uri).path
    ):
        raise ConfigError(f"{section.key('jwks_path')} collides with another route of the listener")
    return path


def _grpc(section: _Section) -> GrpcSettings:
    bind = section.string("bind", default="0.0.0.0:50051")
    assert bind is not None
    _split_bind(bind, section.key("bind"))
    return GrpcSettings(
        server_cert=section.req_path("server_cert"),
        server_key=section.req_path("server_key"),
        client_ca=section.req_path("client_ca"),
        policy_file=section.req_path("policy_file"),
        bind=bind,
        max_message_bytes=section.integer(
            "max_message_bytes", 4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024
        ),
        max_concurrent_rpcs=section.integer("max_concurrent_rpcs", 100, low=1, high=100_000),
        reflection=section.boolean("reflection", False),
        cn_identities=section.boolean("cn_identities", False),
    )


def _store(section: _Section) -> StoreSettings:
    kind: StoreKind = section.choice("kind", ("sqlite", "postgres"), "sqlite")
    path = section.path("path", must_exist=False)
    dsn = section.string("dsn")
    schema = section.string("schema")
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise ConfigError(
            f"{section.key('schema')} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, "
            "at most 63 characters)"
        )
    if kind == "sqlite":
        if path is None:
            raise ConfigError(f"{section.key('path')} is required when kind = 'sqlite'")
        if dsn is not None:
            raise ConfigError(f"{section.key('dsn')} is for kind = 'postgres' only")
        if schema is not None:
            raise ConfigError(f"{section.key('schema')} is for kind = 'postgres' only")
        if section.check_files and not path.parent.is_dir():
            raise ConfigError(f"{section.key('path')}: directory {path.parent} does not exist")
    else:
        if dsn is None:
            raise ConfigError(f"{section.key('dsn')} is required when kind = 'postgres'")
        if path is not None:
            raise ConfigError(f"{section.key('path')} is for kind = 'sqlite' only")
        _check_dsn(dsn, section.key("dsn"))
    emergency = section.path("emergency_dir", must_exist=False)
    if emergency is not None:
        if section.check_files and emergency.exists() and not emergency.is_dir():
            raise ConfigError(f"{section.key('emergency_dir')}: {emergency} is not a directory")
        if section.check_files and not emergency.exists() and not emergency.parent.is_dir():
            raise ConfigError(
                f"{section.key('emergency_dir')}: directory {emergency.parent} does not exist"
            )
        if path is not None and emergency in (path, path.parent):
            raise ConfigError(
                f"{section.key('emergency_dir')} must be its own directory, not the database "
                "file or its directory"
            )
    elif kind == "sqlite" and path is not None:
        emergency = path.parent / "emergency"
    return StoreSettings(
        kind=kind, path=path, dsn=dsn, schema=schema or "broker", emergency_dir=emergency
    )


def _check_dsn(dsn: str, key: str) -> None:
    """Refuse a password in a libpq DSN (URI or key=value form); use ``passfile=`` instead."""
    advice = (
        f"{key} must not contain a password: use passfile=/path (a file) or a client certificate"
    )
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{key} must be a postgresql:// URI or key=value pairs")
        if parts.password is not None:
            raise ConfigError(advice)
        if any(k.lower() == "password" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
            raise ConfigError(advice)
        return
    for item in dsn.split():
        name, eq, _ = item.partition("=")
        if not eq:
            raise ConfigError(f"{key} must be key=value pairs or a postgresql:// URI")
        if name.strip().lower() == "password":
            raise ConfigError(advice)


def _tokens(section: _Section) -> TokenSettings:
    threshold = section.number("refresh_threshold", 225.0, low=1.0, high=86_400.0)
    min_ttl = section.number("min_serve_ttl", 30.0, low=0.0, high=86_400.0)
    if min_ttl >= threshold:
        raise ConfigError(
            f"{section.key('min_serve_ttl')} must be below {section.key('refresh_threshold')}"
        )
    return TokenSettings(
        refresh_threshold=threshold,
        min_serve_ttl=min_ttl,
        background_interval=section.number("background_interval", 30.0, low=1.0, high=3600.0),
        refresh_fraction=section.number("refresh_fraction", DEFAULT_FRACTION, low=0.05, high=0.95),
        refresh_retry_margin=section.number(
            "refresh_retry_margin", DEFAULT_RETRY_MARGIN, low=0.0, high=86_400.0
        ),
    )


def _telemetry(section: _Section) -> TelemetrySettings:
    traces: Exporter = section.choice("traces", _EXPORTERS, "off")
    metrics: Exporter = section.choice("metrics", _EXPORTERS, "off")
    endpoint = section.string("endpoint")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{section.key('endpoint')} must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{section.key('endpoint')} must not carry user information")
    service = section.string("service_name", default="broker")
    assert service is not None
    log_format: LogFormat = section.choice("log_format", ("json", "text"), "json")
    level = section.string("log_level", default="INFO")
    assert level is not None
    if level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"{section.key('log_level')} must be one of {', '.join(_LOG_LEVELS)}")
    return TelemetrySettings(
        traces=traces,
        metrics=metrics,
        endpoint=endpoint,
        service_name=service,
        log_format=log_format,
        log_level=cast(LogLevel, level.upper()),
    )


def _audit(section: _Section) -> AuditSettings:
    path = section.path("path", must_exist=False)
    mirror = section.path("mirror_path", must_exist=False)
    for key, value in (("path", path), ("mirror_path", mirror)):
        if value is not None and section.check_files and not value.parent.is_dir():
            raise ConfigError(f"{section.key(key)}: directory {value.parent} does not exist")
    if mirror is not None and path is None:
        raise ConfigError(f"{section.key('mirror_path')} needs {section.key('path')}")
    if mirror is not None and mirror == path:
        raise ConfigError(f"{section.key('mirror_path')} must differ from {section.key('path')}")
    require: Literal["all", "any"] = section.choice("require", ("all", "any"), "all")
    timeout = section.number("write_timeout", 2.0, low=0.05, high=60.0)
    return AuditSettings(path=path, mirror_path=mirror, require=require, write_timeout=timeout)


def _credential(section: _Section) -> CredentialSettings:
    path = section.path("path", must_exist=False)
    if path is not None and section.check_files and not path.parent.is_dir():
        raise ConfigError(f"{section.key('path')}: directory {path.parent} does not exist")
    return CredentialSettings(path=path)


def _machine_grants(value: object, base_dir: Path) -> tuple[MachineGrantSettings, ...]:
    """``[[machine_grants]]``: an array of tables, labels unique."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("machine_grants must be an array of tables ([[machine_grants]])")
    grants: list[MachineGrantSettings] = []
    for index, table in enumerate(value):
        if not isinstance(table, dict):
            raise ConfigError("machine_grants must be an array of tables ([[machine_grants]])")
        section = _Section(f"machine_grants[{index}]", table, base_dir, False)
        label = section.req_string("label")
        scope = section.string("scope", default="machine learcredential")
        assert scope is not None
        section.finish()
        if any(g.label == label for g in grants):
            raise ConfigError(f"[[machine_grants]] label {label!r} is listed twice")
        grants.append(MachineGrantSettings(label=label, scope=scope))
    return tuple(grants)


_REQUIRED = ("key", "oauth", "web", "grpc", "store")
_OPTIONAL = ("tokens", "telemetry", "audit", "credential")


def parse_settings(
    document: Mapping[str, Any], *, base_dir: Path, source: Path, check_files: bool = True
) -> Settings:
    """Validate an already-parsed TOML document (see :func:`load_settings`)."""
    for name, table in document.items():
        if name == "machine_grants":
            continue
        if name not in _REQUIRED + _OPTIONAL:
            raise ConfigError(f"unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
    sections: dict[str, _Section] = {}
    for name in _REQUIRED + _OPTIONAL:
        table = document.get(name)
        if table is None:
            if name in _REQUIRED:
                raise ConfigError(f"section [{name}] is required")
            table = {}
        sections[name] = _Section(name, table, base_dir, check_files)

    oauth = _oauth(sections["oauth"])
    settings = Settings(
        key=_key(sections["key"]),
        oauth=oauth,
        web=_web(sections["web"], oauth),
        grpc=_grpc(sections["grpc"]),
        store=_store(sections["store"]),
        tokens=_tokens(sections["tokens"]),
        telemetry=_telemetry(sections["telemetry"]),
        audit=_audit(sections["audit"]),
        source=source,
        credential=_credential(sections["credential"]),
        machine_grants=_machine_grants(document.get("machine_grants"), base_dir),
    )
    for section in sections.values():
        section.finish()
    return settings


def load_settings(path: str | Path, *, check_files: bool = True) -> Settings:
    """Read and validate the TOML file at ``path``. Raises :class:`ConfigError`."""
    source = Path(path).expanduser().absolute()
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {source}: {exc.strerror}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {source} is not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names line and column, not the value.
        raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from exc
    return parse_settings(document, base_dir=source.parent, source=source, check_files=check_files)


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The configuration file: ``--config`` if given, else ``$BROKER_CONFIG``, else the default.

    This is the only setting the environment may override.
    """
    if cli_value:
        return Path(cli_value)
    from_env = environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH
