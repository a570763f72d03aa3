"""The HTTP API's settings, from PGTASKS_* environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgtasks.config import READ_LAG_THRESHOLD

#: The names every local server answers to, whatever it binds.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _names(value: str) -> list[str]:
    return [v.strip().lower() for v in value.split(",") if v.strip()]


class WebSettings(BaseSettings):
    """PGTASKS_API_TOKEN set: mutating endpoints need `Authorization: Bearer <token>`, and
    so do reads unless PGTASKS_API_OPEN_READS=true. No token: everything is open, which is
    why `pgtasks serve` binds to 127.0.0.1 unless told otherwise, and answers only requests
    whose Host is one of `allowed_hosts` (DNS rebinding) and writes from no other origin.
    docs/http-api.md has the whole list."""

    model_config = SettingsConfigDict(env_prefix="PGTASKS_", extra="ignore")

    database_url: str | None = None
    #: PGTASKS_READ_DATABASE_URL: a hot standby of the database. The dashboard's pages,
    #: the API's GET endpoints and /metrics read there; writes, the task event streams and
    #: /metrics' table statistics stay on database_url (docs/high-availability.md).
    read_database_url: str | None = None
    #: PGTASKS_READ_LAG_THRESHOLD: seconds of replica lag above which pages say how stale
    #: they are (the API's GET /replica has `stale`).
    read_lag_threshold: float = Field(default=READ_LAG_THRESHOLD, ge=0, allow_inf_nan=False)
    api_token: SecretStr | None = None
    api_open_reads: bool = False
    #: Event streams at once, the API's and the dashboard's together; each holds a
    #: connection of the API's pool (10), and the cap never leaves the other endpoints
    #: fewer than two.
    api_max_streams: int = Field(default=8, ge=1)
    #: PGTASKS_DASHBOARD_READ_ONLY=true: the dashboard shows no action buttons (cancel,
    #: retry, pause...). The API's own auth still decides what a token may do.
    dashboard_read_only: bool = False

    # -- what `pgtasks serve` answers ----------------------------------------------------

    #: The address `pgtasks serve` binds (PGTASKS_HOST, as its --host); one of the hosts
    #: allowed by default.
    host: str = "127.0.0.1"
    #: PGTASKS_ALLOWED_HOSTS: the Host header values (names, no port; comma-separated)
    #: requests may carry; `*` for any. Empty: the bind address, localhost, 127.0.0.1 and
    #: ::1. Checked when no token is set (a page whose name was re-pointed at 127.0.0.1,
    #: DNS rebinding, sends its own name) and, once set, always.
    allowed_hosts: str = ""
    #: PGTASKS_ALLOWED_ORIGINS: origins (`https://tasks.example.com`, comma-separated)
    #: allowed to write besides the server's own, e.g. a proxy's that rewrites Host.
    allowed_origins: str = ""
    #: The largest request body, counted as it arrives, before anything parses it (413).
    #: Above the database's default max_params_bytes (1 MiB) with room for the rest.
    api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    #: Seconds a connection may take to send a request's headers (from its first byte, or
    #: from connecting); then it is closed (with a 408 if part of a request came).
    api_header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a request's body may take to arrive once its headers are in (408).
    api_body_timeout: float = Field(default=30.0, gt=0)
    #: Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive).
    api_keep_alive_timeout: int = Field(default=5, ge=1)
    #: The largest request line plus headers, in bytes (h11's max_incomplete_event_size).
    api_max_header_bytes: int = Field(default=16 * 1024, ge=1024)

    # -- the dashboard's login session -----------------------------------------------------

    #: PGTASKS_SESSION_SECRET: the key that signs dashboard sessions. Unset: a random one
    #: per process (a restart logs everyone out). Set it to share sessions between
    #: processes or keep them over a restart.
    session_secret: SecretStr | None = None
    #: Seconds a dashboard login lasts.
    session_ttl: float = Field(default=12 * 3600, gt=0)

    def host_names(self) -> frozenset[str] | None:
        """The allowed Host names, or None for any (`*`)."""
        names = _names(self.allowed_hosts)
        if "*" in names:
            return None
        if not names:
            names = [self.host.strip("[]").lower(), *LOCAL_HOSTS]
        return frozenset(names)

    def origins(self) -> frozenset[str]:
        """The origins allowed to write besides the server's own (PGTASKS_ALLOWED_ORIGINS)."""
        return frozenset(o.rstrip("/") for o in _names(self.allowed_origins))

    def checks_hosts(self) -> bool:
        """Whether the Host header is checked: with no token, or once hosts are named."""
        return self.api_token is None or bool(_names(self.allowed_hosts))
