"""The shop's Django tasks: plain module-level functions under Django's @task."""

from __future__ import annotations

import asyncio

from django.db import connection

from pgtasks import PermanentError

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task


class ShopError(Exception):
    """What the shop's tasks raise on purpose."""


@task
def add(a, b):
    return a + b


@task(queue_name="emails", priority=10)
def send_receipt(order, *, to):
    return {"order": order, "to": to}


@task(takes_context=True)
def flaky(context, marker):
    """Fails its first attempt; returns what its context says of the second."""
    if context.attempt == 1:
        raise ShopError(f"first attempt of {marker}")
    result = context.task_result
    return {"attempt": context.attempt, "status": str(result.status), "id": result.id}


@task
def broken():
    raise ShopError("always broken")


@task
def declined(card):
    raise PermanentError(f"card {card} declined")  # no retry can fix it


@task
async def double(x):
    await asyncio.sleep(0)
    return x * 2


@task
def database_name():
    """Uses Django's own connection inside the worker."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_catalog.current_database()")
        return cursor.fetchone()[0]


@task
def not_json():
    return {1, 2}
