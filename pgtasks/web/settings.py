"""The HTTP API's settings, from PGTASKS_* environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    """PGTASKS_API_TOKEN set: mutating endpoints need `Authorization: Bearer <token>`, and
    so do reads unless PGTASKS_API_OPEN_READS=true. No token: everything is open, which is
    why `pgtasks serve` binds to 127.0.0.1 unless told otherwise."""

    model_config = SettingsConfigDict(env_prefix="PGTASKS_", extra="ignore")

    database_url: str | None = None
    api_token: SecretStr | None = None
    api_open_reads: bool = False
    #: Event streams at once; each holds a connection of the API's pool (10), so the
    #: default leaves the other endpoints two.
    api_max_streams: int = 8
    #: PGTASKS_DASHBOARD_READ_ONLY=true: the dashboard shows no action buttons (cancel,
    #: retry, pause...). The API's own auth still decides what a token may do.
    dashboard_read_only: bool = False
