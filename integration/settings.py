"""Every setting of the bridge, read from the environment in one place.

Start-up fails fast: a missing or malformed setting raises `SettingsError` whose message is one
line naming the variable, so a Heroku release or a `revor-bridge` command stops with a clear
reason instead of failing later in a worker. Secret values are wrapped in `Secret` so that no
repr, log line or error message can show them.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REVOR_DEFAULT_BASE_URL = "https://revor.ai/api/v1"
HUBSPOT_DEFAULT_API_BASE_URL = "https://api.hubapi.com"
PIPEDRIVE_DEFAULT_API_BASE_URL = "https://api.pipedrive.com"
SALESFORCE_DEFAULT_API_VERSION = "62.0"
# Used when REVOR_API_KEY is unset: the bridge talks to the local Revor sandbox, never to Revor.
SANDBOX_API_KEY = "sk-revor-sandbox"
SANDBOX_DEFAULT_BASE_URL = "http://127.0.0.1:8765/api/v1"

_GENERIC_PREFIX = "GENERIC_WEBHOOK_SECRET_"
_GENERIC_ID_PREFIX = "GENERIC_WEBHOOK_EVENT_ID_FIELD_"
_ORG_ID = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
_GENERIC_NAME = re.compile(r"^[A-Z0-9_]{1,64}$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what was expected."""


class Secret:
    """A string that never shows itself in repr, str, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    revor_api_key: Secret | None = None
    revor_base_url: str = SANDBOX_DEFAULT_BASE_URL
    revor_connect_timeout: float = 5.0
    revor_read_timeout: float = 30.0
    rules_file: Path | None = None
    hubspot_client_secret: Secret | None = None
    hubspot_access_token: Secret | None = None
    hubspot_api_base_url: str = HUBSPOT_DEFAULT_API_BASE_URL
    hubspot_webhook_url: str | None = None
    # v1 and v2 carry no timestamp: a captured request replays forever, so v1 is opt-in.
    hubspot_signature_versions: tuple[str, ...] = ("v3", "v2")
    salesforce_org_ids: tuple[str, ...] = ()
    salesforce_webhook_token: Secret | None = None
    salesforce_verify_session: bool = False
    pipedrive_webhook_user: str | None = None
    pipedrive_webhook_password: Secret | None = None
    # CRM write-back destinations (kind: salesforce / pipedrive in the rules file).
    # SALESFORCE_DOMAIN: the org's My Domain, as https://<name>.my.salesforce.com (a bare host
    # gets https://); an http:// URL is accepted for a local stand-in.
    salesforce_base_url: str | None = None
    salesforce_client_id: Secret | None = None
    salesforce_client_secret: Secret | None = None
    salesforce_api_version: str = SALESFORCE_DEFAULT_API_VERSION
    salesforce_max_rps: float = 5.0
    pipedrive_api_token: Secret | None = None
    pipedrive_api_base_url: str = PIPEDRIVE_DEFAULT_API_BASE_URL
    pipedrive_max_rps: float = 5.0
    generic_webhook_secrets: Mapping[str, Secret] = field(default_factory=dict)
    generic_event_id_fields: Mapping[str, str] = field(default_factory=dict)
    admin_token: Secret | None = None
    metrics_token: Secret | None = None  # unset: /metrics is open
    port: int = 8000
    web_concurrency: int = 2
    # Threads per web process: a thread waits on a slow client for at most web_read_timeout.
    web_threads: int = 16
    web_read_timeout: float = 10.0
    data_dir: Path = Path(".revor-bridge")
    log_level: str = "INFO"
    # LOG_FORMAT: `json` (one object per line, for a log drain) by default on a dyno, `text` elsewhere.
    log_format: str = "text"
    revor_max_rps: float = 5.0
    hubspot_max_rps: float = 8.0
    tracking_horizon_seconds: int = 2 * 86400
    lease_seconds: int = 30
    worker_threads: int = 8
    writeback_retry_scale: float = 1.0
    # One write-back attempt, connect to answer; below the 25 s job timeout so a timeout is counted.
    writeback_timeout_seconds: float = 15.0
    # Per source: raw deliveries and events stored in the last 7 days; beyond it webhooks get 429.
    inbound_max_stored_bytes: int = 256 * 1024 * 1024
    # DISPATCH_RETENTION_DAYS, in seconds (tests use a few): how long a finished dispatch, its
    # timeline and status messages stay in Redis. At least 7 days, the events' own lifetime: an
    # event retried within it must find the dispatches it made, or it would make them again.
    dispatch_retention_seconds: int = 30 * 86400

    @property
    def uses_sandbox(self) -> bool:
        """True when no real Revor key is configured: every Revor call goes to the sandbox."""
        return self.revor_api_key is None

    @property
    def effective_revor_key(self) -> Secret:
        return self.revor_api_key or Secret(SANDBOX_API_KEY)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        api_key = env.secret("REVOR_API_KEY", pattern=r"^sk-revor-\S+$", expected="a key starting with 'sk-revor-'")
        base_default = REVOR_DEFAULT_BASE_URL if api_key else SANDBOX_DEFAULT_BASE_URL
        pd_user = env.text("PIPEDRIVE_WEBHOOK_USER")
        pd_password = env.secret("PIPEDRIVE_WEBHOOK_PASSWORD", min_length=16)
        if bool(pd_user) != bool(pd_password):
            missing = "PIPEDRIVE_WEBHOOK_PASSWORD" if pd_user else "PIPEDRIVE_WEBHOOK_USER"
            raise SettingsError(f"{missing}: missing (PIPEDRIVE_WEBHOOK_USER and _PASSWORD go together)")
        admin = env.secret("ADMIN_TOKEN")
        if admin and len(admin.get()) < 16:
            raise SettingsError("ADMIN_TOKEN: malformed, expected at least 16 characters")
        return cls(
            # Heroku's older add-on plans also set REDIS_TLS_URL; REDIS_URL wins when both exist.
            redis_url=env.url("REDIS_URL", schemes=("redis", "rediss", "unix"))
            or env.url("REDIS_TLS_URL", schemes=("rediss",)),
            revor_api_key=api_key,
            revor_base_url=(env.url("REVOR_BASE_URL", schemes=("http", "https")) or base_default).rstrip("/"),
            revor_connect_timeout=env.number("REVOR_CONNECT_TIMEOUT", 5.0, low=0.1, high=120),
            revor_read_timeout=env.number("REVOR_READ_TIMEOUT", 30.0, low=0.1, high=300),
            rules_file=env.path("RULES_FILE"),
            # HubSpot client secrets are UUIDs (36 characters); a short one is a paste error.
            hubspot_client_secret=env.secret("HUBSPOT_CLIENT_SECRET", min_length=16),
            hubspot_access_token=env.secret("HUBSPOT_ACCESS_TOKEN"),
            hubspot_api_base_url=(
                env.url("HUBSPOT_API_BASE_URL", schemes=("http", "https")) or HUBSPOT_DEFAULT_API_BASE_URL
            ).rstrip("/"),
            hubspot_webhook_url=env.url("HUBSPOT_WEBHOOK_URL", schemes=("http", "https")),
            hubspot_signature_versions=env.versions("HUBSPOT_SIGNATURE_VERSIONS", ("v1", "v2", "v3"), ("v3", "v2")),
            salesforce_org_ids=env.org_ids("SALESFORCE_ORG_IDS"),
            # It goes into the Outbound Message's endpoint URL: URL-safe characters, so no encoding.
            salesforce_webhook_token=env.secret("SALESFORCE_WEBHOOK_TOKEN", pattern=r"^[A-Za-z0-9._~-]{16,}$",
                                                expected="16+ characters from A-Z a-z 0-9 . _ ~ -"),
            salesforce_verify_session=env.flag("SALESFORCE_VERIFY_SESSION"),
            pipedrive_webhook_user=pd_user,
            pipedrive_webhook_password=pd_password,
            salesforce_base_url=env.my_domain("SALESFORCE_DOMAIN"),
            salesforce_client_id=env.secret("SALESFORCE_CLIENT_ID"),
            salesforce_client_secret=env.secret("SALESFORCE_CLIENT_SECRET"),
            salesforce_api_version=env.api_version("SALESFORCE_API_VERSION", SALESFORCE_DEFAULT_API_VERSION),
            salesforce_max_rps=env.number("SALESFORCE_MAX_RPS", 5.0, low=0.1, high=1000),
            pipedrive_api_token=env.secret("PIPEDRIVE_API_TOKEN"),
            pipedrive_api_base_url=(
                env.url("PIPEDRIVE_API_BASE_URL", schemes=("http", "https")) or PIPEDRIVE_DEFAULT_API_BASE_URL
            ).rstrip("/"),
            pipedrive_max_rps=env.number("PIPEDRIVE_MAX_RPS", 5.0, low=0.1, high=1000),
            generic_webhook_secrets=env.generic_secrets(),
            generic_event_id_fields=env.generic_event_id_fields(),
            admin_token=admin,
            metrics_token=env.secret("METRICS_TOKEN", min_length=16),
            port=int(env.number("PORT", 8000, low=1, high=65535, integer=True)),
            web_concurrency=int(env.number("WEB_CONCURRENCY", 2, low=1, high=64, integer=True)),
            web_threads=int(env.number("WEB_THREADS", 16, low=1, high=256, integer=True)),
            web_read_timeout=env.number("WEB_READ_TIMEOUT", 10.0, low=0.5, high=120),
            data_dir=env.path("BRIDGE_DATA_DIR", must_exist=False) or Path(".revor-bridge"),
            log_level=env.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            log_format=env.choice("LOG_FORMAT", ("TEXT", "JSON"), "JSON" if env.text("DYNO") else "TEXT").lower(),
            revor_max_rps=env.number("REVOR_MAX_RPS", 5.0, low=0.1, high=1000),
            hubspot_max_rps=env.number("HUBSPOT_MAX_RPS", 8.0, low=0.1, high=1000),
            tracking_horizon_seconds=int(env.number("TRACKING_HORIZON_SECONDS", 2 * 86400, low=1, high=30 * 86400,
                                                    integer=True)),
            lease_seconds=int(env.number("BRIDGE_LEASE_SECONDS", 30, low=2, high=3600, integer=True)),
            worker_threads=int(env.number("WORKER_THREADS", 8, low=1, high=64, integer=True)),
            writeback_retry_scale=env.number("WRITEBACK_RETRY_SCALE", 1.0, low=0.00001, high=100),
            writeback_timeout_seconds=env.number("WRITEBACK_TIMEOUT_SECONDS", 15.0, low=0.5, high=20),
            inbound_max_stored_bytes=int(env.number("INBOUND_MAX_STORED_BYTES", 256 * 1024 * 1024, low=4 * 1024 * 1024,
                                                    high=2**40, integer=True)),
            dispatch_retention_seconds=int(env.number("DISPATCH_RETENTION_DAYS", 30, low=7, high=3650,
                                                      integer=True)) * 86400,
        )


class _Env:
    """Typed readers over an environment mapping; each raises SettingsError naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def secret(self, name: str, pattern: str | None = None, expected: str = "", min_length: int = 0) -> Secret | None:
        value = self.text(name)
        if value is None:
            return None
        if pattern and not re.match(pattern, value):
            raise SettingsError(f"{name}: malformed, expected {expected}")
        if len(value) < min_length:
            raise SettingsError(f"{name}: too short, expected at least {min_length} characters")
        return Secret(value)

    def versions(self, name: str, known: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated subset of `known` (any case), in the order given."""
        value = self.text(name)
        if value is None:
            return default
        chosen = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",")))
        if not chosen or any(part not in known for part in chosen):
            raise SettingsError(f"{name}: malformed, expected a comma-separated list of {', '.join(known)}")
        return chosen

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"{name}: malformed, expected true or false")
        return value.lower() in ("true", "1", "yes")

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
            starts = " or ".join(s + "://" for s in schemes)
            raise SettingsError(f"{name}: malformed, expected a URL starting with {starts}")
        return value

    def my_domain(self, name: str) -> str | None:
        """A Salesforce My Domain: `acme.my.salesforce.com` or `https://acme.my.salesforce.com`, as a base URL."""
        value = self.text(name)
        if value is None:
            return None
        if "://" not in value:
            value = "https://" + value
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") \
                and not parts.query and not parts.username
        except ValueError:
            valid = False
        if not valid:
            raise SettingsError(f"{name}: malformed, expected the org's My Domain host, e.g. "
                                "acme.my.salesforce.com (or https://acme.my.salesforce.com)")
        return value.rstrip("/")

    def api_version(self, name: str, default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        value = value.removeprefix("v")
        if not re.fullmatch(r"[1-9][0-9]\.0", value):
            raise SettingsError(f"{name}: malformed, expected a Salesforce API version such as {default}")
        return value

    def number(self, name: str, default: float, low: float, high: float, integer: bool = False) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise SettingsError(f"{name}: malformed, expected {kind} from {low:g} to {high:g}") from None
        if not low <= number <= high:
            raise SettingsError(f"{name}: out of range, expected {low:g} to {high:g}")
        return number

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value.upper() not in choices:
            raise SettingsError(f"{name}: malformed, expected one of {', '.join(choices)}")
        return value.upper()

    def path(self, name: str, must_exist: bool = True) -> Path | None:
        value = self.text(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if must_exist and not path.is_file():
            raise SettingsError(f"{name}: no such file: {value}")
        return path

    def org_ids(self, name: str) -> tuple[str, ...]:
        value = self.text(name)
        if value is None:
            return ()
        ids = tuple(part.strip() for part in value.split(",") if part.strip())
        for org_id in ids:
            if not _ORG_ID.match(org_id):
                raise SettingsError(f"{name}: malformed id {org_id!r}, expected 15 or 18 letters and digits")
        return ids

    def generic_event_id_fields(self) -> dict[str, str]:
        """Which body field holds the event id, per generic hook (default `event_id`)."""
        found: dict[str, str] = {}
        for key in sorted(self.environ):
            if not key.startswith(_GENERIC_ID_PREFIX):
                continue
            name, value = key[len(_GENERIC_ID_PREFIX):], self.text(key)
            if not _GENERIC_NAME.match(name) or not value or not re.match(r"^[A-Za-z0-9_.-]{1,100}$", value):
                raise SettingsError(f"{key}: malformed, expected a field name such as event_id or data.id")
            found[name.lower()] = value
        return found

    def generic_secrets(self) -> dict[str, Secret]:
        secrets: dict[str, Secret] = {}
        for key in sorted(self.environ):
            if not key.startswith(_GENERIC_PREFIX):
                continue
            name = key[len(_GENERIC_PREFIX):]
            if not _GENERIC_NAME.match(name):
                raise SettingsError(f"{key}: malformed name, expected letters, digits and _ after the prefix")
            value = self.text(key)
            if value is None:
                raise SettingsError(f"{key}: empty, expected a whsec_ secret or a token")
            if value.startswith("whsec_"):
                encoded = value.removeprefix("whsec_").rstrip("=")
                try:
                    decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
                except (binascii.Error, ValueError):
                    decoded = b""
                if len(decoded) < 16:
                    raise SettingsError(f"{key}: malformed, expected whsec_ followed by base64 of 16+ bytes")
            elif len(value) < 16:
                raise SettingsError(f"{key}: malformed, expected a whsec_ secret or a token of 16+ characters")
            # URL segments are lower case (`/webhooks/generic/zapier`), variables upper case.
            secrets[name.lower()] = Secret(value)
        return secrets
