"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
`pgtasks serve` process and real `pgtasks worker` processes on the suite's PostgreSQL.

Every wait is on a condition (Playwright's expect, or a SQL poll); the timeouts only keep
a broken test from hanging. Each test saves screenshots of what it saw, 1280 px and 390 px
wide, under test-artifacts/dashboard/ (docs/dashboard.md shows a few of them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ROOT
from tests.fleet import Fleet
from tests.web.test_fastapi_app import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra has it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or sync_playwright is None,
        reason="the dashboard's browser tests need chromium on PATH (Debian: apt-get install "
        "chromium) and the playwright package (the test extra)",
    ),
]

APP = "tests/apps/dashboard.py"
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000  # a hang guard, never a speed assertion


@pytest.fixture(scope="module")
def browser(postgresql_noproc: object) -> Iterator[Browser]:
    """One chromium for the module. Sync Playwright keeps an event loop running in this
    thread while it lives, so the template database (built with asyncio.run) is made first."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def say_yes(dialog: Dialog) -> None:
    dialog.accept()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    pg.on("dialog", say_yes)  # every action asks first; the tests say yes (but one)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"the dashboard's script failed: {errors}"


@contextlib.contextmanager
def serving(dsn: str, log_dir: Path, **env: str) -> Iterator[str]:
    """`pgtasks serve` on a free port, with `env` added; its URL."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtasks.cli", "--database-url", dsn, "serve", "--port",
         str(port), "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/login").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pgtasks serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()


@pytest.fixture
def served(dsn: str, tmp_path: Path) -> Iterator[str]:
    with serving(dsn, tmp_path) as url:
        yield url


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(dsn, tmp_path / "workers")
    try:
        yield f
    finally:
        f.stop_all()


def worker(fleet: Fleet, *args: str) -> None:
    fleet.start("--poll-interval", "0.1", "--concurrency", "8", *args, app=APP)


def sql(dsn: str, query: str, *args: object) -> object:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(query, args).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]


def wait_sql(dsn: str, query: str, *args: object, fleet: Fleet | None = None) -> None:
    deadline = time.monotonic() + 60
    while not sql(dsn, query, *args):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {query}\n{fleet.tails() if fleet else ''}")
        time.sleep(0.1)


def submit(url: str, task_type: str, params: dict | None = None, **kw: object) -> int:
    r = httpx.post(f"{url}/api/tasks", json={"task_type": task_type, "params": params or {}, **kw})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def submit_many(
    dsn: str, task_type: str, n: int, queue: str = "default", max_retries: int | None = None
) -> None:
    sql(dsn, "SELECT count(*) FROM pgtasks.submit_tasks(task_type => %s, params_list => "
             "ARRAY(SELECT jsonb_build_object('i', g) FROM generate_series(1, %s) g), "
             "queue => %s, max_retries => %s)", task_type, n, queue, max_retries)  # fmt: skip


def shoot(page: Page, name: str) -> None:
    """Screenshots at desktop and phone width (the phone one full length); at phone width
    the page must also fit: nothing may make the whole document scroll sideways (a wide
    table or graph scrolls inside its own box)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
    fits_the_phone(page, name)
    page.set_viewport_size(DESKTOP)


def fits_the_phone(page: Page, name: str) -> None:
    """No horizontal overflow of the document at the current (phone) width; the message
    names the elements that stick out on the right."""
    width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    wider = page.evaluate(
        """() => {
            const w = document.documentElement.clientWidth;
            return [...document.querySelectorAll('body *')]
              .filter(e => e.getBoundingClientRect().right > w + 1)
              .filter(e => !e.parentElement.closest('.scroll, pre, .logs'))  // scrolls inside
              .slice(0, 8).map(e => [e.tagName.toLowerCase(), e.getAttribute('class')]
                                      .filter(Boolean).join('.'));
        }"""
    )
    assert width[0] <= width[1] + 1, f"{name} at {PHONE['width']} px: {width}, too wide: {wider}"


def statuses_are_whole_on_the_phone(page: Page, selector: str) -> None:
    """At phone width, each status (`selector`) is inside the screen as its table first
    shows it, not cut by the table's sideways scroll ("✓ DON") nor pushed past the edge."""
    page.set_viewport_size(PHONE)
    try:
        cut = page.evaluate(
            """(sel) => {
                const w = document.documentElement.clientWidth;
                const els = [...document.querySelectorAll(sel)];
                if (!els.length) return ['none found'];
                return els.filter(e => {
                    const r = e.getBoundingClientRect();
                    return r.left < 0 || r.right > w || e.scrollWidth > e.clientWidth + 1;
                }).map(e => e.textContent.trim());
            }""",
            selector,
        )
        assert not cut, f"statuses cut at {PHONE['width']} px: {cut}"
    finally:
        page.set_viewport_size(DESKTOP)


def keyboard_reaches_every_action(page: Page) -> None:
    """Tab from the top of the page; every action button and form control must get focus."""
    count = page.evaluate(
        """() => {
            const els = [...document.querySelectorAll(
                'main button, main input:not([type=hidden]), main select, main a[href]')]
              .filter(e => e.offsetParent !== null);
            els.forEach((e, i) => e.dataset.kbd = String(i));
            return els.length;
        }"""
    )
    assert count > 0
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.locator("body").focus()
    reached: set[str] = set()
    for _ in range(count * 2 + 40):
        page.keyboard.press("Tab")
        key = page.evaluate("() => document.activeElement && document.activeElement.dataset.kbd")
        if key is not None:
            reached.add(key)
        if len(reached) == count:
            break
    missing = page.evaluate(
        "(r) => [...document.querySelectorAll('[data-kbd]')].filter(e => !r.includes("
        "e.dataset.kbd)).map(e => e.outerHTML.slice(0, 80))",
        sorted(reached),
    )
    assert not missing, f"not reachable with Tab: {missing}"


def test_overview_counts_change_while_a_worker_drains_the_queue(dsn, served, page, fleet):
    submit_many(dsn, "dash_quick", 40, queue="drain")
    page.goto(f"{served}/")
    card = page.locator('.qcard[data-queue="drain"]')
    expect(card.locator("[data-field=ready]")).to_have_text("40")
    page.evaluate("() => window.notReloaded = true")
    worker(fleet, "--queues", "drain")
    expect(card.locator("[data-field=ready]")).to_have_text("0")
    expect(page.locator("[data-workers-count]")).to_have_text("1")
    assert page.evaluate("() => window.notReloaded") is True  # pushed, not reloaded
    roll_up(dsn)
    page.locator("#charts button[data-span='5m']").click()  # fetches the charts again
    expect(page.locator("[data-chart=throughput] [data-chart-summary]")).to_contain_text("40 done")
    page.wait_for_function(  # the chart drew the finished tasks above its base line
        "() => /[ML][0-9.]+,([0-9]|[0-9]{2}|10[0-9])[.]/.test("
        "document.querySelector('[data-chart=throughput] path.done').getAttribute('d'))"
    )
    shoot(page, "overview")


def roll_up(dsn: str) -> None:
    """As a worker's maintenance would, 20 s on: every task that ended is in a bucket that
    has closed, and roll_up counts it (the test clock moves, no one waits)."""
    sql(dsn, "SELECT pgtasks.advance_clock(interval '20 seconds')")
    while sql(dsn, "SELECT pgtasks.roll_up()"):
        pass


def test_charts_switch_ranges_and_times_show_the_exact_one(dsn, served, page, fleet):
    """The selector redraws the charts over 5 minutes, an hour and a day from the roll-up,
    at desktop and phone width; relative times carry the exact one (title, datetime)."""
    submit_many(dsn, "dash_quick", 6, queue="charted")
    worker(fleet, "--queues", "charted")
    wait_sql(dsn, "SELECT count(*) = 6 FROM pgtasks.tasks WHERE status = 'DONE'", fleet=fleet)
    roll_up(dsn)
    page.goto(f"{served}/")
    charts = page.locator("#charts")
    summary = charts.locator("[data-chart=throughput] [data-chart-summary]")
    expect(summary).to_have_text("6 done, 0 failed, 0 cancelled in the last 5 minutes.")
    expect(charts.locator("[data-chart=run] [data-chart-summary]")).to_contain_text("6 tasks")
    expect(charts.locator("[data-chart=wait] [data-chart-summary]")).to_contain_text("6 tasks")
    for span, label, ago in (("1h", "hour", "1 h ago"), ("24h", "24 hours", "24 h ago"),
                             ("5m", "5 minutes", "5 min ago")):  # fmt: skip
        button = charts.locator(f"button[data-span='{span}']")
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        expect(charts.locator("[data-chart-span-label]")).to_have_text(label)
        expect(charts.locator("[data-chart=run] [data-chart-start]")).to_have_text(ago)
        expect(summary).to_have_text(f"6 done, 0 failed, 0 cancelled in the last {label}.")
        assert charts.locator("button[aria-pressed='true']").count() == 1
    rolled = charts.locator("[data-chart-rolled] time")
    expect(rolled).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    page.set_viewport_size(PHONE)
    page.locator("#charts button[data-span='24h']").click()
    expect(summary).to_contain_text("in the last 24 hours")
    fits_the_phone(page, "charts")
    box = charts.locator("[data-chart=wait] svg").bounding_box()
    assert box is not None and box["width"] <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / "charts-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)

    task_id = sql(dsn, "SELECT min(id) FROM pgtasks.tasks WHERE queue = 'charted'")
    page.goto(f"{served}/tasks/{task_id}")
    started = page.locator("[data-field=started] time")
    started.hover()
    exact = sql(dsn, "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
                     " FROM pgtasks.tasks WHERE id = %s", task_id)  # fmt: skip
    expect(started).to_have_attribute("title", f"{exact} UTC")
    expect(page.locator("[data-field=ran] .dur")).to_have_attribute("title", re.compile(r" s$"))
    expect(page.locator("[data-field=waited] .dur")).to_be_visible()


def test_the_workers_table_streams_what_each_worker_runs(dsn, served, page, fleet):
    """A task that starts after the page drew appears under its worker, with its
    progress, by the overview stream alone (pgtasks.active_tasks), and leaves when it ends."""
    worker(fleet)
    wait_sql(dsn, "SELECT count(*) = 1 FROM pgtasks.workers WHERE alive", fleet=fleet)
    page.goto(f"{served}/")
    cell = page.locator("#workers td.wtasks")
    expect(cell).to_have_text("—")
    page.evaluate("() => window.notReloaded = true")
    task_id = submit(served, "web_steps", {"steps": 400, "pause": 0.1})
    expect(cell).to_contain_text(f"#{task_id} web_steps", timeout=WAIT_MS)
    expect(cell).to_contain_text("% ·", timeout=WAIT_MS)  # its percent, once it reported
    link = cell.locator("a")
    assert link.get_attribute("href") == f"/tasks/{task_id}"
    httpx.post(f"{served}/api/tasks/{task_id}/cancel").raise_for_status()
    expect(cell).to_have_text("—", timeout=WAIT_MS)
    assert page.evaluate("() => window.notReloaded") is True  # pushed, not reloaded


def test_running_task_streams_progress_and_logs_then_cancel(dsn, served, page, fleet):
    worker(fleet)
    task_id = submit(served, "web_steps", {"steps": 400, "pause": 0.1})
    page.goto(f"{served}/tasks/{task_id}")
    status = page.locator("#task [data-field=status]")
    expect(status).to_contain_text("RUNNING")
    page.evaluate("() => window.notReloaded = true")
    label = page.locator("#task [data-field=progress]")
    expect(label).to_contain_text("/ 400)")
    first = int(label.inner_text().split("(")[1].split(" ")[0])
    # Log lines keep arriving (one per step): wait for at least 3 more than the first
    # progress showed, not an exact count, which a loaded machine can jump past in one push.
    page.wait_for_function(
        f"() => document.querySelectorAll('#logs li').length >= {first + 3}", timeout=WAIT_MS
    )
    page.wait_for_function(
        f"() => Number(document.querySelector('#task-progress').value) > {100 * first / 400}"
    )
    assert page.evaluate("() => window.notReloaded") is True
    expect(page.locator("#task [data-field=message]")).to_contain_text("of 400")
    shoot(page, "task-running")
    keyboard_reaches_every_action(page)
    page.locator("#cancel").click()
    expect(status).to_contain_text("CANCELLED")
    expect(page.locator("#flash")).to_contain_text("cancelled")
    assert sql(dsn, "SELECT status::text FROM pgtasks.task_status WHERE id = %s", task_id) == (
        "CANCELLED"
    )


def test_send_an_event_then_the_refusal_once_the_task_ended(dsn, served, page):
    task_id = submit(served, "dash_quick", queue="no-worker")
    # No live stream: the page must not reload itself when the task ends below.
    page.route("**/stream/**", lambda route: route.abort())
    page.goto(f"{served}/tasks/{task_id}")
    form = page.get_by_role("form", name=f"Send an event to task {task_id}")
    form.get_by_label("event name").fill("approved")
    form.get_by_label("payload").fill("{not json")
    form.get_by_role("button", name="Send event").click()
    expect(page.locator("#flash")).to_contain_text("the payload is not JSON")
    form.get_by_label("payload").fill('{"by": "ann"}')
    form.get_by_role("button", name="Send event").click()
    expect(page.locator("#flash")).to_contain_text(f"Event approved sent to task {task_id}")
    expect(page.locator("main")).to_contain_text('"by": "ann"')
    sql(dsn, "SELECT pgtasks.cancel_task(%s)", task_id)
    form.get_by_label("event name").fill("late")
    form.get_by_role("button", name="Send event").click()
    expect(page.locator("#flash")).to_contain_text("Refused: PT128: ")
    expect(page.locator("#flash")).to_contain_text("(Send events to a task before it ends")


def test_failed_task_traceback_retry_goes_done(dsn, served, page, fleet):
    worker(fleet)
    task_id = submit(served, "dash_flaky", max_retries=0)
    wait_sql(dsn, "SELECT status = 'FAILED' FROM pgtasks.task_status WHERE id = %s", task_id,
             fleet=fleet)  # fmt: skip
    page.goto(f"{served}/failed")
    expect(page.locator("table.groups")).to_contain_text("flaky: attempt 1 fails")
    shoot(page, "failed")
    page.get_by_role("link", name=str(task_id), exact=True).click()
    expect(page.locator(".traceback")).to_contain_text("ValueError: flaky: attempt 1 fails")
    expect(page.locator(".traceback")).to_contain_text("Traceback (most recent call last)")
    shoot(page, "task-failed")
    expect(page.locator("#retry")).to_be_visible()
    keyboard_reaches_every_action(page)
    page.locator("#retry").click()
    expect(page.locator("#task [data-field=status]")).to_contain_text("DONE")
    expect(page.locator("#result")).to_contain_text('"attempt": 2')
    expect(page.locator(".timeline")).to_contain_text("FAILED")
    shoot(page, "task-done")


def test_cancel_asks_first_and_no_changes_nothing(dsn, served, page):
    """The confirm dialog decides: dismissed, the button sends nothing and the task stays
    PENDING in the database; accepted, the task is cancelled."""
    task_id = submit(served, "dash_quick", queue="no-worker")
    page.goto(f"{served}/tasks/{task_id}")
    # Record every fetch(): the click handler calls it, if at all, before it returns.
    page.evaluate(
        """() => {
            window.sent = [];
            const f = window.fetch;
            window.fetch = (...a) => { window.sent.push(String(a[0])); return f(...a); };
        }"""
    )
    asked: list[str] = []

    def say_no(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.remove_listener("dialog", say_yes)
    page.on("dialog", say_no)
    page.locator("#cancel").click()
    assert asked == [f"Cancel task {task_id} (dash_quick)?"]
    assert page.evaluate("() => window.sent") == []
    expect(page.locator("#cancel")).to_be_enabled()
    expect(page.locator("#flash")).to_be_hidden()
    assert sql(dsn, "SELECT status::text FROM pgtasks.task_status WHERE id = %s", task_id) == (
        "PENDING"
    )
    assert sql(dsn, "SELECT count(*) FROM pgtasks.task_events WHERE task_id = %s AND "
                    "to_status = 'CANCELLED'", task_id) == 0  # fmt: skip

    page.remove_listener("dialog", say_no)
    page.on("dialog", say_yes)
    page.locator("#cancel").click()
    expect(page.locator("#flash")).to_contain_text(f"Task {task_id} cancelled (it was PENDING)")
    expect(page.locator("#task [data-field=status]")).to_contain_text("CANCELLED")
    assert sql(dsn, "SELECT status::text FROM pgtasks.task_status WHERE id = %s", task_id) == (
        "CANCELLED"
    )


def test_bulk_retry_of_twenty_failed_tasks(dsn, served, page, fleet):
    worker(fleet)
    submit_many(dsn, "dash_flaky", 20, max_retries=0)
    wait_sql(dsn, "SELECT count(*) = 20 FROM pgtasks.failed_tasks", fleet=fleet)
    page.goto(f"{served}/failed")
    expect(page.locator("input[name=ids]")).to_have_count(20)
    keyboard_reaches_every_action(page)
    page.locator("input[data-select-all]").check()
    page.locator("#retry-selected").click()
    expect(page.locator("#flash")).to_contain_text("20 tasks done")
    wait_sql(dsn, "SELECT count(*) = 20 FROM pgtasks.task_status WHERE status = 'DONE'",
             fleet=fleet)  # fmt: skip
    page.reload()
    expect(page.locator("table.groups")).to_contain_text("No failed task")


def test_pause_and_resume_a_queue_from_the_keyboard(dsn, served, page):
    submit(served, "dash_quick", queue="mail")
    page.goto(f"{served}/queues")
    keyboard_reaches_every_action(page)
    pause = page.get_by_role("button", name="Pause mail")
    pause.focus()
    page.keyboard.press("Enter")
    card = page.locator('section.qrow[data-queue="mail"]')
    expect(card.locator("[data-field=state]")).to_contain_text("paused")
    assert sql(dsn, "SELECT paused FROM pgtasks.queues WHERE queue = 'mail'") is True
    shoot(page, "queues")
    card.locator("input[name=max_running]").fill("4")
    card.get_by_role("button", name="Save limits").click()
    expect(page.locator("#flash")).to_contain_text("Limits saved")
    assert sql(dsn, "SELECT max_running FROM pgtasks.queues WHERE queue = 'mail'") == 4
    page.get_by_role("button", name="Resume mail").click()
    expect(card.locator("[data-field=state]")).to_contain_text("active")
    assert sql(dsn, "SELECT paused FROM pgtasks.queues WHERE queue = 'mail'") is False


def test_tasks_schedules_and_workflows_pages(dsn, served, page):
    # A long queue name that cannot wrap: the columns before a status must not push it off a
    # phone's screen (it was cut so, at 390 px, when status came after type and queue).
    submit_many(dsn, "dash_quick", 5, queue="transactional_mail_eu_west")
    # And a long error: its column does not wrap, so the table is wider than the phone.
    sql(dsn, "WITH u AS (UPDATE pgtasks.tasks SET error = repeat('connection refused ', 20) "
             "RETURNING 1) SELECT count(*) FROM u")  # fmt: skip
    sql(dsn, "SELECT pgtasks.create_schedule(name => 'nightly-report', task_type => "
             "'dash_quick', cron => '0 3 * * *')")  # fmt: skip
    page.goto(f"{served}/tasks")
    expect(page.locator("table.tasks tbody tr")).to_have_count(5)
    statuses_are_whole_on_the_phone(page, "table.tasks .badge")
    keyboard_reaches_every_action(page)
    page.get_by_label("id or text").fill("dash_quick")
    page.get_by_label("id or text").press("Enter")
    expect(page).to_have_url(f"{served}/tasks?status=&queue=&task_type=&q=dash_quick&order=newest")
    shoot(page, "tasks")
    page.goto(f"{served}/schedules")
    keyboard_reaches_every_action(page)
    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#flash")).to_contain_text("enqueued task")
    page.reload()
    statuses_are_whole_on_the_phone(page, "table.grid tbody td:nth-child(2), table.grid .badge")
    shoot(page, "schedules")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("table.grid tbody")).to_contain_text("paused")
    assert sql(dsn, "SELECT paused FROM pgtasks.schedules WHERE name = 'nightly-report'") is True
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("table.grid tbody")).to_contain_text("active")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("main")).to_contain_text("No schedule")
    assert sql(dsn, "SELECT count(*) FROM pgtasks.schedules") == 0
    form = page.get_by_role("form", name="Create or replace a schedule")
    form.get_by_label("name").fill("hourly/report")
    form.get_by_label("task type").fill("dash_quick")
    form.get_by_label("or every (seconds)").fill("3600")
    form.get_by_role("button", name="Save schedule").click()
    expect(page.locator("#flash")).to_contain_text("Schedule hourly/report saved")
    assert sql(dsn, "SELECT every FROM pgtasks.schedules WHERE name = 'hourly/report'") == (
        timedelta(hours=1)
    )
    form = page.get_by_role("form", name="Create or replace a schedule")
    form.get_by_label("name").fill("hourly/report")
    form.get_by_label("task type").fill("dash_quick")
    form.get_by_label("cron").fill("61 * * * *")
    form.get_by_role("button", name="Save schedule").click()
    expect(page.locator("#flash")).to_contain_text("Refused:")
    assert sql(dsn, "SELECT cron FROM pgtasks.schedules WHERE name = 'hourly/report'") is None
    # Edit fills the form with the whole definition: changing the cron keeps the rest.
    sql(dsn, "SELECT pgtasks.create_schedule(name => 'tuned', task_type => 'dash_quick', "
             "cron => '0 4 * * *', timezone => 'Europe/Paris', params => '{\"k\": [1, \"x\"]}', "
             "priority => 7, overlap => 'skip', catch_up => interval '2 hours', "
             "misfire_grace => interval '90 seconds')")  # fmt: skip
    page.reload()
    page.get_by_role("button", name="Edit tuned").click()
    form = page.get_by_role("form", name="Create or replace a schedule")
    expect(form.get_by_label("name")).to_have_value("tuned")
    expect(form.get_by_label("overlap")).to_have_value("skip")
    form.get_by_label("cron").fill("30 5 * * *")
    form.get_by_role("button", name="Save schedule").click()
    expect(page.locator("#flash")).to_contain_text("Schedule tuned saved")
    kept = sql(dsn, "SELECT row(cron, timezone, params, priority, overlap, catch_up, "
                    "misfire_grace, task_type)::text FROM pgtasks.schedules "
                    "WHERE name = 'tuned'")  # fmt: skip
    assert kept == (
        '("30 5 * * *",Europe/Paris,"{""k"": [1, ""x""]}",7,skip,02:00:00,00:01:30,dash_quick)'
    )
    page.goto(f"{served}/workflows")
    expect(page.locator("main")).to_contain_text("No workflow yet")
    shoot(page, "workflows")


def test_login_with_the_token_then_act(dsn, tmp_path, page):
    """With PGTASKS_API_TOKEN: pages send the browser to the login form; after it, pages
    read through the cookie and the actions carry the token to the API."""
    with serving(dsn, tmp_path, PGTASKS_API_TOKEN="s3cret-token") as url:
        sql(dsn, "SELECT pgtasks.submit_task(task_type => 'dash_quick', queue => 'mail')")
        page.goto(f"{url}/queues")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        shoot(page, "login")
        keyboard_reaches_every_action(page)
        page.get_by_label("API token").fill("wrong")
        page.get_by_label("API token").press("Enter")
        expect(page.get_by_role("alert")).to_contain_text("not this server's token")
        page.get_by_label("API token").fill("s3cret-token")
        page.get_by_label("API token").press("Enter")
        expect(page).to_have_url(f"{url}/queues")
        page.get_by_role("button", name="Pause mail").click()
        expect(page.locator('section.qrow[data-queue="mail"] [data-field=state]')).to_contain_text(
            "paused"
        )
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto(f"{url}/")
        expect(page).to_have_url(re.compile(r"/login\?next="))


WORKFLOW = """{"name": "%s", "nodes": [
  {"name": "fetch", "type": "web_steps", "params": {"steps": 10, "pause": 0.05}},
  {"name": "left", "type": "dash_quick", "after": ["fetch"]},
  {"name": "right", "type": "dash_quick", "after": ["fetch"]},
  {"name": "join", "type": "dash_quick", "after": ["left", "right"]}]}"""


def test_workflow_graph_follows_the_workflow_and_cancels_it(dsn, served, page, fleet):
    """A workflow's graph (the workflows SQL): cancel one from its page; watch another's
    nodes turn DONE while a worker runs them."""
    doomed = sql(dsn, "SELECT (pgtasks.submit_workflow(%s::jsonb) ->> 'workflow_id')::bigint",
                 WORKFLOW % "doomed")  # fmt: skip
    page.goto(f"{served}/workflows/{doomed}")
    expect(page.locator("svg a.node")).to_have_count(4)
    expect(page.locator('svg a.node[data-node="join"]')).to_contain_text("WAITING")
    expect(page.locator("#cancel-workflow")).to_be_visible()
    keyboard_reaches_every_action(page)
    page.locator("#cancel-workflow").click()
    expect(page.locator('svg a.node[data-node="fetch"]')).to_contain_text("CANCELLED")
    expect(page.locator("#cancel-workflow")).to_have_count(0)

    etl = sql(dsn, "SELECT (pgtasks.submit_workflow(%s::jsonb) ->> 'workflow_id')::bigint",
              WORKFLOW % "etl")  # fmt: skip
    page.goto(f"{served}/workflows")
    expect(page.locator("main table")).to_contain_text("etl")
    page.get_by_role("link", name=str(etl), exact=True).click()
    expect(page.locator('svg a.node[data-node="fetch"]')).to_contain_text("PENDING")
    shoot(page, "workflow")
    page.evaluate("() => window.notReloaded = true")
    worker(fleet)
    expect(page.locator('svg a.node[data-node="join"]')).to_contain_text("DONE")
    expect(page.locator("#workflow .status-line")).to_contain_text("DONE")
    assert page.evaluate("() => window.notReloaded") is True  # redrawn in place
    page.locator('svg a.node[data-node="left"]').click()
    expect(page.locator("#task")).to_contain_text("node left")


#: axe-core, from npm (examples/node/package.json, `make node-deps`): injected into each page
#: from the disk, so the check needs no network.
AXE = ROOT / "examples" / "node" / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => `${v.impact} ${v.id}: ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)"
    )
    return [str(v) for v in found]


@pytest.mark.skipif(not AXE.exists(), reason="axe-core not installed: run `make node-deps`")
def test_every_page_has_no_serious_accessibility_violation(dsn, served, page, fleet):
    """axe-core on every page at desktop and phone width: 0 serious or critical violations."""
    submit_many(dsn, "dash_quick", 3)
    submit_many(dsn, "dash_flaky", 1, max_retries=0)
    worker(fleet)
    wait_sql(dsn, "SELECT count(*) = 1 FROM pgtasks.tasks WHERE status = 'FAILED'", fleet=fleet)
    failed = sql(dsn, "SELECT id FROM pgtasks.tasks WHERE status = 'FAILED'")
    flow = sql(dsn, "SELECT (pgtasks.submit_workflow(%s::jsonb) ->> 'workflow_id')::bigint",
               WORKFLOW % "axe")  # fmt: skip
    sql(dsn, "SELECT pgtasks.create_schedule(name => 'nightly', task_type => 'dash_quick',"
             " cron => '0 3 * * *')")  # fmt: skip
    # A parent with children (one of a type nobody runs, so it stays PENDING): its page
    # lists them, a child's page links its parent. No worker serves 'axe_parent'.
    sql(dsn, "SELECT pgtasks.submit_task('axe_parent')")
    kids = sql(dsn, "SELECT pgtasks.spawn_children(c.id, c.lease_token, 'spawn#1',"
                    " '[{\"type\": \"dash_quick\"}, {\"type\": \"axe_child\"}]')"
                    " FROM pgtasks.claim_tasks('axe', max_tasks => 1,"
                    " task_types => ARRAY['axe_parent']) c")  # fmt: skip
    assert isinstance(kids, list) and len(kids) == 2
    parent = sql(dsn, "SELECT spawned_by FROM pgtasks.tasks WHERE id = %s", kids[0])
    paths = ["/", "/tasks", f"/tasks/{failed}", "/failed", "/queues", "/schedules",
             "/workflows", f"/workflows/{flow}", f"/tasks/{parent}",
             f"/tasks/{kids[1]}"]  # fmt: skip
    found: list[str] = []
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        for path in paths:
            page.goto(f"{served}{path}")
            found += [f"{viewport['width']}px {path}: {v}" for v in axe_violations(page)]
    assert not found, "\n".join(found)
