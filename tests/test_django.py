"""Django's Tasks framework on pgtasks (pgtasks.contrib.django), with a real project.

tests/django_project is a Django project whose `shop` app has tasks and views. Its tasks are
enqueued from views through Django's test client, run by `manage.py pgtasks_worker --burst`
as a real process, and read back through Django's own API (`task.get_result(id)`), all on
this test's database. A request whose transaction rolls back leaves no task behind.

This file runs on this interpreter's Django: 5.2 with the django-tasks backport here (Python
3.11). `test_the_same_tests_pass_on_django_6` runs it again under Django 6 (Python 3.12 or
later, in a venv it builds once in .venv/django6); there a database URL is handed down in
PGTASKS_TEST_DJANGO_DSN and the tests share that one database, so each test asserts only on
its own tasks and leaves none behind that a later worker would wait for.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

django = pytest.importorskip("django")
if django.VERSION < (6, 0):
    pytest.importorskip("django_tasks", reason="Django 5.2 needs the django-tasks backport")

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "tests" / "django_project" / "manage.py"
DSN_ENV = "PGTASKS_TEST_DJANGO_DSN"
SHOP = "tests.django_project.shop.tasks"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    django.setup()


class Project:
    """The test project on one database: Django's connection points at it, `sql` reads it
    as psql would, `worker` runs `manage.py pgtasks_worker` on it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def point(self, **options: Any) -> None:
        """Django's connection to this database (with these connection OPTIONS)."""
        from django.db import connections

        from tests.django_project.settings import database

        connection = connections["default"]
        connection.close()
        connection.settings_dict.update(database(self.dsn, **options))

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            cur = c.execute(query, args)
            return cur.fetchall() if cur.description else []

    def worker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, str(MANAGE), "pgtasks_worker", *args],
            cwd=ROOT, env={**os.environ, DSN_ENV: self.dsn}, capture_output=True, text=True,
            timeout=600,  # only bounds a hung worker; no speed is asserted
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def run_until_finished(self, *results: Any) -> str:
        """A worker as it runs in production, `manage.py pgtasks_worker` until SIGTERM: it
        is stopped once every one of these results is finished, and must exit 0. (Tasks
        that retry are run this way: `--burst` stops when it sees nothing ready or
        scheduled, and can look while a failure that schedules the retry is committing.)
        Its log (stderr) is returned."""
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(
                [sys.executable, str(MANAGE), "pgtasks_worker", "--poll-interval", "0.2"],
                cwd=ROOT, env={**os.environ, DSN_ENV: self.dsn}, stdout=log, stderr=log,
                text=True,
            )  # fmt: skip
            try:
                hung = time.monotonic() + 300  # only bounds a hung test; no speed asserted
                for result in results:
                    while not result.is_finished:
                        assert proc.poll() is None, "the worker exited before the tasks ended"
                        assert time.monotonic() < hung, f"task {result.id} never finished"
                        time.sleep(0.05)
                        result.refresh()
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(120)
            log.seek(0)
            text = log.read()
        assert code == 0, text
        return text

    def cancel(self, *ids: str) -> None:
        """Leave nothing pending that a later worker of a shared database would run."""
        for i in ids:
            with contextlib.suppress(psycopg.Error):
                self.sql("SELECT pgtasks.cancel_task(%s)", int(i))


@pytest.fixture
def project(request: pytest.FixtureRequest) -> Iterator[Project]:
    dsn = os.environ.get(DSN_ENV) or request.getfixturevalue("dsn")
    p = Project(dsn)
    p.point()
    try:
        yield p
    finally:
        from django.db import connections

        connections.close_all()


def _status(result: Any) -> str:
    return str(result.status)


# -- the framework in use -------------------------------------------------------------


def test_the_tasks_framework_of_this_django_is_the_one_in_use():
    from pgtasks.contrib.django import _compat

    expected = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    assert _compat.TaskResult.__module__.startswith(expected)
    assert type(_compat.task_backends["default"]).__name__ == "PgTasksBackend"


# -- enqueue, run, read back ----------------------------------------------------------


def test_a_view_enqueues_the_worker_runs_and_django_reads_the_result(project):
    from django.test import Client

    from tests.django_project.shop.tasks import add

    response = Client().post("/add/", {"a": "2", "b": "3"})
    assert response.status_code == 200, response.content
    task_id = response.json()["id"]
    assert response.json()["status"] == "READY"

    # The row is pgtasks' own: type = the function's dotted path, params = args/kwargs.
    [(task_type, params, queue, priority)] = project.sql(
        "SELECT task_type, params, queue, priority FROM pgtasks.tasks WHERE id = %s", int(task_id)
    )
    assert (task_type, params, queue, priority) == (
        f"{SHOP}.add", {"args": [2, 3], "kwargs": {}}, "default", 0,
    )  # fmt: skip
    before = add.get_result(task_id)
    assert _status(before) == "READY" and before.enqueued_at is not None
    assert before.attempts == 0 and before.started_at is None
    with pytest.raises(ValueError, match="not finished"):
        before.return_value  # noqa: B018

    # Enqueued from psql, the same task: what submit_task gives any client.
    [(psql_id,)] = project.sql(
        "SELECT pgtasks.submit_task(%s, %s::jsonb)", f"{SHOP}.add", '{"args": [40, 2]}'
    )

    project.worker("--burst")

    result = add.get_result(task_id)
    assert _status(result) == "SUCCESSFUL"
    assert result.return_value == 5
    assert result.args == [2, 3] and result.kwargs == {}
    assert result.attempts == 1 and len(result.worker_ids) == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.last_attempted_at
    assert result.last_attempted_at <= result.finished_at
    assert result.task.func is add.func and result.backend == "default"
    # refresh() reads the same row again, through the backend.
    before.refresh()
    assert _status(before) == "SUCCESSFUL" and before.return_value == 5
    assert add.get_result(str(psql_id)).return_value == 42


async def test_the_async_api_enqueues_and_reads_too(project):
    from asgiref.sync import sync_to_async

    from tests.django_project.shop.tasks import double

    result = await double.aenqueue(21)
    assert _status(result) == "READY"
    await sync_to_async(project.worker)("--burst")
    done = await double.aget_result(result.id)
    assert _status(done) == "SUCCESSFUL" and done.return_value == 42
    await result.arefresh()
    assert result.return_value == 42
    from django.db import connections

    await sync_to_async(connections.close_all)()  # the connection of Django's async thread


async def test_the_dashboard_and_api_serve_beside_django_in_one_asgi_app(project):
    pytest.importorskip("fastapi", reason="the dashboard needs pgtasks[web]")
    import httpx

    from tests.django_project.asgi import create_application

    app = create_application()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            enqueued = await c.post("/add/", data={"a": "4", "b": "5"})  # Django's view
            assert enqueued.status_code == 200, enqueued.text
            task_id = enqueued.json()["id"]
            shown = await c.get(f"/tasks/api/tasks/{task_id}")  # pgtasks' API
            assert shown.status_code == 200, shown.text
            assert shown.json()["task_type"] == f"{SHOP}.add"
            page = await c.get("/tasks/")  # the dashboard
            assert page.status_code == 200 and "pgtasks" in page.text
    project.cancel(task_id)


# -- transactions ---------------------------------------------------------------------


def test_enqueue_joins_the_request_transaction_and_a_rollback_leaves_no_task(project):
    from django.test import Client

    from pgtasks.contrib.django._compat import TaskResultDoesNotExist
    from tests.django_project.shop.tasks import send_receipt

    client = Client()
    declined = client.post("/order/", {"order": "7", "to": "a@example.com", "fail": "1"})
    assert declined.status_code == 402
    rolled_back = declined.json()
    # Inside the transaction the task existed and Django could read it...
    assert rolled_back["inside"] == "READY"
    # ...and the rollback took it away with everything else.
    gone = project.sql("SELECT count(*) FROM pgtasks.tasks WHERE id = %s", int(rolled_back["id"]))
    assert gone == [(0,)]
    with pytest.raises(TaskResultDoesNotExist):
        send_receipt.get_result(rolled_back["id"])

    paid = client.post("/order/", {"order": "8", "to": "b@example.com"})
    assert paid.status_code == 200
    committed = paid.json()["id"]
    [(queue, priority, params)] = project.sql(
        "SELECT queue, priority, params FROM pgtasks.tasks WHERE id = %s", int(committed)
    )
    assert (queue, priority) == ("emails", 10)
    assert params == {"args": [8], "kwargs": {"to": "b@example.com"}}
    project.worker("--burst", "--queues", "emails")
    assert send_receipt.get_result(committed).return_value == {"order": 8, "to": "b@example.com"}


def test_a_task_enqueued_in_an_open_transaction_is_invisible_until_commit(project):
    from django.db import transaction

    from tests.django_project.shop.tasks import add

    with transaction.atomic():
        result = add.enqueue(1, 1)
        outside = project.sql("SELECT count(*) FROM pgtasks.tasks WHERE id = %s", int(result.id))
        assert outside == [(0,)]  # another session (a worker) cannot claim it yet
    assert project.sql("SELECT status::text FROM pgtasks.tasks WHERE id = %s", int(result.id)) == [
        ("PENDING",)
    ]
    project.cancel(result.id)


# -- retries, errors, context, the worker's rules -------------------------------------


def test_retries_errors_context_and_what_the_worker_refuses(project):
    from tests.django_project.shop import tasks

    marker = uuid.uuid4().hex
    flaky = tasks.flaky.enqueue(marker)
    broken = tasks.broken.enqueue()
    uses_db = tasks.database_name.enqueue()
    not_json = tasks.not_json.enqueue()
    declined = tasks.declined.enqueue("4242")
    [(bad_params,)] = project.sql(
        "SELECT pgtasks.submit_task(%s, %s::jsonb)", f"{SHOP}.add", '{"a": 1}'
    )

    project.run_until_finished(
        flaky, broken, uses_db, not_json, tasks.add.get_result(str(bad_params))
    )

    # Failed once, retried (MAX_RETRIES = 1): the second attempt sees itself in its context.
    ok = tasks.flaky.get_result(flaky.id)
    assert _status(ok) == "SUCCESSFUL", ok.errors
    assert ok.return_value == {"attempt": 2, "status": "RUNNING", "id": flaky.id}
    assert ok.attempts == 2 and len(ok.errors) == 1
    [error] = ok.errors
    assert error.exception_class_path == f"{SHOP}.ShopError"
    assert error.exception_class is tasks.ShopError
    assert f"first attempt of {marker}" in error.traceback

    # Always failing: FAILED after 1 + MAX_RETRIES attempts, each one's error kept.
    failed = tasks.broken.get_result(broken.id)
    assert _status(failed) == "FAILED" and failed.attempts == 2
    assert [e.exception_class_path for e in failed.errors] == [f"{SHOP}.ShopError"] * 2
    with pytest.raises(ValueError, match="failed"):
        failed.return_value  # noqa: B018

    # pgtasks' PermanentError: FAILED at once, the class named as Django names classes.
    refused_card = tasks.declined.get_result(declined.id)
    assert _status(refused_card) == "FAILED" and refused_card.attempts == 1
    assert refused_card.errors[0].exception_class_path == "pgtasks.errors.PermanentError"

    # Django's own connection works inside the worker, on the same database.
    [(name,)] = project.sql("SELECT current_database()")
    assert tasks.database_name.get_result(uses_db.id).return_value == name

    # What no retry can fix fails at once: a return value that is not JSON, params that
    # are not Django's args/kwargs (here from psql).
    refused = tasks.not_json.get_result(not_json.id)
    assert _status(refused) == "FAILED" and refused.attempts == 1
    assert "not JSON" in refused.errors[0].traceback
    bad = tasks.add.get_result(str(bad_params))
    assert _status(bad) == "FAILED" and bad.attempts == 1
    assert "must be" in bad.errors[0].traceback


def test_a_cancelled_task_is_failed_for_django(project):
    from tests.django_project.shop.tasks import add

    result = add.enqueue(1, 2)
    project.sql("SELECT pgtasks.cancel_task(%s)", int(result.id))
    cancelled = add.get_result(result.id)
    assert _status(cancelled) == "FAILED" and cancelled.is_finished and cancelled.errors == []


def test_priority_run_after_and_queue_reach_the_row(project):
    from tests.django_project.shop.tasks import add

    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    result = add.using(priority=-5, run_after=later, queue_name="emails").enqueue(1, 2)
    try:
        [(priority, run_at, queue)] = project.sql(
            "SELECT priority, run_at, queue FROM pgtasks.tasks WHERE id = %s", int(result.id)
        )
        assert (priority, run_at, queue) == (-5, later, "emails")
        read = add.get_result(result.id)
        assert read.task.priority == -5 and read.task.run_after == later
        assert read.task.queue_name == "emails"
    finally:
        project.cancel(result.id)


def test_enqueue_inside_a_traced_request_stores_its_trace_context(project):
    trace = pytest.importorskip("opentelemetry.trace")
    from tests.django_project.shop.tasks import add

    # The context an instrumented request makes current (the API alone, no SDK needed).
    request = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=False,
            trace_flags=trace.TraceFlags(1),
            trace_state=trace.TraceState([("rojo", "00f067aa0ba902b7")]),
        )
    )
    with trace.use_span(request):
        traced = add.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue(1, 2)
    plain = add.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue(1, 2)
    try:
        rows = {
            r[0]: (r[1], r[2])
            for r in project.sql(
                "SELECT id, traceparent, tracestate FROM pgtasks.tasks WHERE id IN (%s, %s)",
                int(traced.id),
                int(plain.id),
            )
        }
        assert rows == {
            int(traced.id): (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "rojo=00f067aa0ba902b7",
            ),
            int(plain.id): (None, None),
        }
    finally:
        project.cancel(traced.id)
        project.cancel(plain.id)


def test_ids_that_are_no_django_task_of_this_project_do_not_exist(project):
    from pgtasks.contrib.django._compat import TaskResultDoesNotExist, task_backends
    from tests.django_project.shop.tasks import add

    [(other,)] = project.sql("SELECT pgtasks.submit_task('node.add', '{}')")
    try:
        for result_id in (str(other), "0", "abc", "1e3", "-1", "9" * 30, ""):
            with pytest.raises(TaskResultDoesNotExist):
                task_backends["default"].get_result(result_id)
    finally:
        project.cancel(str(other))
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(str(other))


def test_arguments_that_are_not_json_are_refused_before_the_database(project):
    from tests.django_project.shop.tasks import add

    with pytest.raises(TypeError):
        add.enqueue(object(), 1)
    with pytest.raises(ValueError):
        add.enqueue(float("nan"), 1)


def test_the_database_refusing_a_task_raises_the_pgtasks_exception(project):
    from pgtasks.errors import InvalidArgument
    from tests.django_project.shop.tasks import add

    [(limit,)] = project.sql("SELECT max_params_bytes FROM pgtasks.settings")
    project.sql("SELECT pgtasks.configure(max_params_bytes => 100)")
    try:
        with pytest.raises(InvalidArgument) as caught:
            add.enqueue("x" * 200, "y")
        assert caught.value.sqlstate == "PT113"
    finally:
        project.sql("SELECT pgtasks.configure(max_params_bytes => %s)", limit)


# -- search_path ----------------------------------------------------------------------

PLANT = """
CREATE TABLE public.planted_calls (what pg_catalog.text);
CREATE FUNCTION public.planted_int8_eq(a pg_catalog.int8, b pg_catalog.int8)
  RETURNS pg_catalog.bool LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO public.planted_calls VALUES ('int8 =');
        RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8,
                          FUNCTION = public.planted_int8_eq);
CREATE FUNCTION public.planted_status_eq(a pgtasks.status, b pgtasks.status)
  RETURNS pg_catalog.bool LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO public.planted_calls VALUES ('status =');
        RETURN a::pg_catalog.text OPERATOR(pg_catalog.=) b::pg_catalog.text; END $$;
CREATE OPERATOR public.= (LEFTARG = pgtasks.status, RIGHTARG = pgtasks.status,
                          FUNCTION = public.planted_status_eq);
CREATE FUNCTION public.planted_neg(a pg_catalog.int4) RETURNS pg_catalog.int4 LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO public.planted_calls VALUES ('unary -'); RETURN 0; END $$;
CREATE OPERATOR public.- (RIGHTARG = pg_catalog.int4, FUNCTION = public.planted_neg);
CREATE FUNCTION public.planted_accum(acc pg_catalog.text[], x pg_catalog.text)
  RETURNS pg_catalog.text[] LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO public.planted_calls VALUES ('array_agg'); RETURN acc; END $$;
CREATE AGGREGATE public.array_agg(pg_catalog.text) (SFUNC = public.planted_accum,
                                                    STYPE = pg_catalog.text[], INITCOND = '{}');
CREATE TYPE public.jsonb AS (planted pg_catalog.int4);
CREATE TYPE public.int4 AS (planted pg_catalog.int4);
CREATE TYPE public.int8 AS (planted pg_catalog.int4);
CREATE TYPE public.timestamptz AS (planted pg_catalog.int4);
CREATE TYPE public.float8 AS (planted pg_catalog.int4);
"""
UNPLANT = """
DROP TABLE public.planted_calls;
DROP OPERATOR public.= (pg_catalog.int8, pg_catalog.int8);
DROP OPERATOR public.= (pgtasks.status, pgtasks.status);
DROP OPERATOR public.- (NONE, pg_catalog.int4);
DROP AGGREGATE public.array_agg(pg_catalog.text);
DROP FUNCTION public.planted_int8_eq, public.planted_status_eq, public.planted_neg,
              public.planted_accum;
DROP TYPE public.jsonb, public.int4, public.int8, public.timestamptz, public.float8;
"""


def test_objects_planted_in_public_never_run_in_the_backends_statements(project):
    from tests.django_project.shop.tasks import add, broken

    project.sql(PLANT)
    try:
        # public first, so every plant is a closer match than pg_catalog's or ties with it.
        project.point(options="-c search_path=public,pg_catalog")
        ran = add.using(priority=-5, run_after=datetime.now(UTC)).enqueue(1, 2)
        failed = broken.enqueue()
        project.run_until_finished(ran, failed)
        assert add.get_result(ran.id).return_value == 3
        assert broken.get_result(failed.id).attempts == 2
        assert project.sql("SELECT what FROM public.planted_calls") == []
        # The plants are live: a statement that does not qualify its names runs them.
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT array_agg(x) FROM (VALUES ('a')) v(x)")
            cursor.execute("SELECT 1::pg_catalog.int8 = 1::pg_catalog.int8")
        planted = project.sql("SELECT what FROM public.planted_calls ORDER BY what")
        assert planted == [("array_agg",), ("int8 =",)]
    finally:
        project.point()
        project.sql(UNPLANT)


# -- settings checks and the command --------------------------------------------------


def test_system_checks_report_bad_options_without_touching_the_database(project):
    from django.core.management import call_command

    from pgtasks.contrib.django import PgTasksBackend

    call_command("check")  # the project's own settings pass
    bad = PgTasksBackend(
        "x",
        {"OPTIONS": {"DATABASE": "nope", "MAX_RETRIES": "3", "TIMEOUT": True, "RETRIES": 1}},
    )
    assert sorted(m.id for m in bad.check()) == [
        "pgtasks.E001", "pgtasks.E002", "pgtasks.E004", "pgtasks.E005",
    ]  # fmt: skip
    assert list(PgTasksBackend("y", {"OPTIONS": {"MAX_RETRIES": 0, "TIMEOUT": 1.5}}).check()) == []


def test_the_worker_url_comes_from_djangos_database_settings():
    from django.core.exceptions import ImproperlyConfigured

    from pgtasks.contrib.django.backend import url_from_settings

    assert url_from_settings({"NAME": "shop", "USER": "app", "PASSWORD": "p@ss:w/rd",
                         "HOST": "db.internal", "PORT": "6432",
                         "OPTIONS": {"sslmode": "require"}}) == (
        "postgresql://app:p%40ss%3Aw%2Frd@db.internal:6432/shop?sslmode=require"
    )  # fmt: skip
    assert url_from_settings({"NAME": "shop", "HOST": "/run/postgresql", "PORT": "5433"}) == (
        "postgresql:///shop?host=%2Frun%2Fpostgresql&port=5433"
    )
    assert url_from_settings({"NAME": "shop", "HOST": "::1"}) == "postgresql://[::1]/shop"
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        url_from_settings({"OPTIONS": {"service": "shop"}})


def test_worker_command_mistakes_are_one_line_and_a_non_zero_exit(project):
    for args, message in [
        (["--backend", "nope"], "TASKS has no backend 'nope'"),
        (["--concurrency", "0"], "--concurrency"),
        (["--log-format", "xml"], "--log-format"),
    ]:
        proc = project.worker(*args, check=False)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_pgtasks_migrate_installs_the_schema_in_the_backends_database(project):
    name = f"django_migrate_{uuid.uuid4().hex[:8]}"
    project.sql(f"CREATE DATABASE {name}")
    fresh = Project(project.dsn.rsplit("/", 1)[0] + f"/{name}")
    try:
        command = [sys.executable, str(MANAGE), "pgtasks_migrate"]
        env = {**os.environ, DSN_ENV: fresh.dsn}
        first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_" in first.stdout
        assert fresh.sql("SELECT pg_catalog.to_regclass('pgtasks.tasks') IS NOT NULL") == [(True,)]
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert again.returncode == 0 and "schema is up to date" in again.stdout, again.stderr
    finally:
        project.sql(f"DROP DATABASE {name} WITH (FORCE)")


def test_the_worker_command_offers_every_option_of_pgtasks_worker():
    from django.core.management import load_command_class

    from pgtasks.cli import worker

    command = load_command_class("pgtasks.contrib.django", "pgtasks_worker")
    parser = command.create_parser("manage.py", "pgtasks_worker")
    ours = {s for a in parser._actions for s in a.option_strings}
    theirs = {o for p in worker.params for o in getattr(p, "opts", []) if o.startswith("--")}
    assert theirs - ours == {"--verbose"}  # Django's -v 3 stands for it


# -- Django 6 --------------------------------------------------------------------------


def _python312() -> str | None:
    """A Python >= 3.12 to build the Django 6 venv with: $PGTASKS_DJANGO6_PYTHON, pyenv's,
    or python3.12/3.13 on PATH."""
    home = Path.home() / ".pyenv" / "versions"
    candidates = [
        os.environ.get("PGTASKS_DJANGO6_PYTHON"),
        *sorted(glob.glob(str(home / "3.1[2-9]*" / "bin" / "python"))),
        shutil.which("python3.12"),
        shutil.which("python3.13"),
    ]
    for c in candidates:
        if not c:
            continue
        probe = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return c
    return None


def _django6_requirements() -> list[str]:
    """pgtasks' dependencies and its django and web extras (from pyproject.toml, so they
    never drift), Django 6, and the test runner and client: the venv runs pgtasks from
    this checkout."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runner = [
        s for s in extras["test"]
        if re.match(r"(pytest|pytest-asyncio|psycopg|httpx)(\[|[<>=!~; ]|$)", s)
    ]  # fmt: skip
    return [*project["dependencies"], *extras["django"], *extras["web"], "django>=6", *runner]


def _django6_venv() -> Path:
    """.venv/django6, built once per set of requirements (a lock keeps parallel runs from
    building it twice); skips the test, saying why, when it cannot be built."""
    base = _python312()
    if base is None:
        pytest.skip("no Python >= 3.12 found for Django 6 (set PGTASKS_DJANGO6_PYTHON)")
    requirements = _django6_requirements()
    digest = hashlib.sha256("\n".join([base, *requirements]).encode()).hexdigest()[:12]
    venv = ROOT / ".venv" / "django6"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{digest}"
    venv.parent.mkdir(exist_ok=True)
    with open(venv.parent / "django6.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *requirements],
            capture_output=True, text=True,
        )  # fmt: skip
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            tail = (pip.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"could not install Django 6 into {venv}: {tail}")
        stamp.write_text(f"built in {time.monotonic() - started:.0f} s from {base}\n")
    return python


@pytest.mark.slow
@pytest.mark.skipif(DSN_ENV in os.environ, reason="this is the Django 6 run already")
def test_the_same_tests_pass_on_django_6(dsn):
    python = _django6_venv()
    version = subprocess.run(
        [str(python), "-c", "import django; print(django.VERSION[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert int(version) >= 6
    env = {**os.environ, DSN_ENV: dsn, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
         str(Path(__file__).relative_to(ROOT))],
        cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=1800,  # only bounds a hung run
    )  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    # Everything but this test itself ran there.
    skipped = re.search(r"(\d+) skipped", summary)
    assert skipped is not None and skipped.group(1) == "1", summary
    print(json.dumps({"django6": summary}))
