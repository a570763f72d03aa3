"""Errors as `{"error": {"code", "message", "hint"}}` with a fitting HTTP status.

A route class rather than app exception handlers, so a router mounted in someone else's
app answers the same way without touching that app's handlers. The route class also runs
the route's auth check before FastAPI reads the body: a request without the token is
answered 401 without a byte of its body read or parsed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pgtasks.errors import (
    ConfigurationError,
    DatabaseError,
    IllegalTransition,
    InvalidArgument,
    LeaseLost,
    ParentNotDone,
    PgTasksError,
    ScheduleNotFound,
    TaskAlreadyFinished,
    TaskNotFound,
    UniqueKeyHeld,
    WorkflowNotFound,
)


class ErrorBody(BaseModel):
    code: str
    message: str
    hint: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error the API itself answers (auth, too many streams), with its status and code."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint


_STATUS: list[tuple[type[DatabaseError], int]] = [
    (TaskNotFound, 404),
    (WorkflowNotFound, 404),
    (ScheduleNotFound, 404),
    (ParentNotDone, 409),
    (IllegalTransition, 409),
    (TaskAlreadyFinished, 409),
    (UniqueKeyHeld, 409),
    (LeaseLost, 409),
    (InvalidArgument, 422),
]

#: The code of each status the API itself answers with (the database's answers carry its
#: SQLSTATE instead).
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    hint: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, hint=hint))
    extra = dict(headers or {})
    if status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status, headers=extra or None)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "not JSON")
        return f"body: {why} (at character {loc[1] if len(loc) > 1 else 0})"
    field = _field(loc)
    return f"{field}: {first.get('msg', 'invalid')}" if field else str(exc)


def to_response(exc: Exception) -> Response | None:
    """The answer for an exception the API knows, else None (a 500 then)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.hint)
    if isinstance(exc, RequestValidationError):
        message = _validation_message(exc)
        return error_response(422, "invalid_request", message, "See /docs for the schema.")
    if isinstance(exc, HTTPException):  # routing (404, 405) and the body guards (408, 413)
        code = CODES.get(exc.status_code, f"http_{exc.status_code}")
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
        return error_response(exc.status_code, code, message, headers=exc.headers)
    if isinstance(exc, DatabaseError):
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), None)
        if status is None:
            # PT0xx: the task's state forbids it; any other PT class refused an argument.
            status = 409 if exc.sqlstate.startswith("PT0") else 422
        message = str(exc)
        if exc.hint and message.endswith(f" ({exc.hint})"):
            message = message[: -len(exc.hint) - 3]
        return error_response(status, exc.sqlstate, message, exc.hint)
    if isinstance(exc, asyncpg.DataError):
        # SQLSTATE class 22: a value PostgreSQL (or asyncpg, encoding an argument) cannot
        # take, e.g. a NUL character inside params (jsonb has no \u0000). The database
        # refused it; nothing was written.
        hint = getattr(exc, "hint", None) or "Text and JSON may not contain NUL characters."
        return error_response(422, exc.sqlstate or "22000", exc.args[0] if exc.args else "", hint)
    if isinstance(exc, ConfigurationError):  # the app's set-up, not the request
        return error_response(503, "not_configured", str(exc))
    if isinstance(exc, PgTasksError):  # refused by the client before any SQL ran
        return error_response(422, "invalid_request", str(exc))
    return None


# -- JSON bodies -----------------------------------------------------------------------

#: A lone UTF-16 surrogate: JSON can spell one (`"\ud800"`), but no UTF-8 text (and so no
#: PostgreSQL text or jsonb) can hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_strings(value: Any) -> None:
    """Walk the decoded body without recursion (its depth is the client's choice)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise ValueError("a string holds a lone UTF-16 surrogate")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):  # 1e999 decodes to inf
            raise ValueError("a number is too large for a double")


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 (RFC 8259), no NaN or Infinity (not JSON, and jsonb refuses
    them), no lone surrogates, no number that overflows a double; any refusal is a
    JSONDecodeError, so FastAPI answers it as an invalid body (422) naming why."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from exc
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
        _check_strings(value)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise json.JSONDecodeError(why, text, 0) from exc
    return value


class _StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


# -- the route class -------------------------------------------------------------------


class ErrorRoute(APIRoute):
    """Answers known errors in the one shape; `authorize` (none here) runs before the body
    is read."""

    def authorize(self, request: Request) -> None:
        """Raise ApiError to refuse the request before its body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                self.authorize(request)
                return await handler(_StrictRequest(request.scope, request.receive, request._send))
            except Exception as exc:
                answer = to_response(exc)
                if answer is None:
                    raise
                return answer

        return handle
