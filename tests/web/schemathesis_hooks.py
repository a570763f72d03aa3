"""Schemathesis hooks for tests/web/test_schemathesis.py (SCHEMATHESIS_HOOKS names this module).

One check replaces the built-in positive_data_acceptance. The schema states what the HTTP
layer checks (types, int64 and int32 bounds, lengths, no NUL, finite numbers, which fields
go together); the database has the last word on the rest (max_retries <= 1000, blank
names, size limits it is configured with, ids that must exist) and says so with its
SQLSTATE. So a schema-valid request may be refused with 422 only when the code is the
database's (PT1xx, or a PostgreSQL class-22 SQLSTATE); a 422 `invalid_request` for a
schema-valid request means the schema and the server disagree, and still fails.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from schemathesis.checks import CHECKS

_builtin = CHECKS.get_one("positive_data_acceptance")
#: A database's answer: a pgtasks SQLSTATE (PT...) or a PostgreSQL one (5 characters).
_DATABASE_CODE = re.compile(r"^(PT\d{3}|[0-9A-Z]{5})$")


def _database_code(response: Any) -> bool:
    try:
        code = response.json()["error"]["code"]
    except Exception:
        return False
    return isinstance(code, str) and bool(_DATABASE_CODE.match(code))


@schemathesis.check
def positive_data_acceptance_or_database_refusal(ctx: Any, response: Any, case: Any) -> Any:
    """positive_data_acceptance, except for the database's own refusals (see above)."""
    try:
        return _builtin(ctx, response, case)  # type: ignore[call-arg]
    except AssertionError:
        if response.status_code == 422 and _database_code(response):
            return None
        raise
