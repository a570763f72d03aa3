"""Errors as `{"error": {"code", "message", "hint"}}` with a fitting HTTP status.

A route class rather than app exception handlers, so a router mounted in someone else's
app answers the same way without touching that app's handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from pgtasks.errors import (
    ConfigurationError,
    DatabaseError,
    IllegalTransition,
    InvalidArgument,
    ParentNotDone,
    PgTasksError,
    TaskAlreadyFinished,
    TaskNotFound,
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
    (ParentNotDone, 409),
    (IllegalTransition, 409),
    (TaskAlreadyFinished, 409),
    (InvalidArgument, 422),
]


def error_response(status: int, code: str, message: str, hint: str | None = None) -> Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, hint=hint))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def to_response(exc: Exception) -> Response | None:
    """The answer for an exception the API knows, else None (a 500 then)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.hint)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = _field(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}" if field else str(exc)
        return error_response(422, "invalid_request", message, "See /docs for the schema.")
    if isinstance(exc, DatabaseError):
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 400)
        message = str(exc)
        if exc.hint and message.endswith(f" ({exc.hint})"):
            message = message[: -len(exc.hint) - 3]
        return error_response(status, exc.sqlstate, message, exc.hint)
    if isinstance(exc, ConfigurationError):  # the app's set-up, not the request
        return error_response(503, "not_configured", str(exc))
    if isinstance(exc, PgTasksError):  # refused by the client before any SQL ran
        return error_response(422, "invalid_request", str(exc))
    return None


class ErrorRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                answer = to_response(exc)
                if answer is None:
                    raise
                return answer

        return handle
