"""A Patroni cluster on loopback: one etcd member and two PostgreSQL members with synchronous
replication, for the failover test (tests/test_failover.py) and for trying a failover by hand.

    python -m tests.patroni_cluster up /tmp/pgtasks-ha

brings the cluster up in that folder, prints its connection URL and the commands that kill,
switch over and inspect it, and stops it on Ctrl-C (docs/high-availability.md).

The settings that make a crash a failover (`patroni_config` below):
* `primary_start_timeout: 0`. Patroni's default (300 s) restarts a crashed primary in place
  for up to 5 minutes; 0 hands the leader lock to a healthy synchronous standby at once.
* `synchronous_mode: true`: commits wait for the standby, and Patroni promotes only a
  standby it has recorded as synchronous, so a failover loses no acknowledged commit.
* `loop_wait: 1`: each Patroni looks at its PostgreSQL every second (default 10), so it
  sees the crash within a second; ttl 20 is the smallest ttl Patroni accepts, and
  retry_timeout 5 keeps its rule loop_wait + 2 * retry_timeout <= ttl with room.
* `use_pg_rewind` with `wal_log_hints`: the crashed primary rejoins as a standby by
  rewinding, not by a new base backup.

PostgreSQL refuses to run as root; as in pgtasks.embedded, each member then runs inside a
user namespace (`unshare --user`) where our uid maps to an ordinary one. The PostgreSQL
binaries are the embedded server's (the `embedded` extra), or those of
$PGTASKS_HA_BIN_DIR (e.g. Debian's /usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgtasks.embedded import NAMESPACE_UID, binaries

SCOPE = "pgtasks-ha"

#: The Patroni DCS settings that make a kill -9 of the primary's postmaster a failover.
FAILOVER_SETTINGS: dict[str, Any] = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    "primary_start_timeout": 0,
    "synchronous_mode": True,
    "postgresql": {
        "use_pg_rewind": True,
        "use_slots": True,
        "parameters": {
            "wal_log_hints": "on",
            "max_connections": 200,
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "hot_standby": "on",
            "wal_keep_size": "128MB",
        },
    },
}


def missing() -> str | None:
    """Why the cluster cannot run here (one line), or None when it can."""
    if sys.platform == "win32":
        return "Patroni and the embedded PostgreSQL do not run on Windows"
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: apt-get install etcd-server)"
    for module, pip in (("patroni", "patroni[etcd3]"), ("etcd", "patroni[etcd3]")):
        if importlib.util.find_spec(module) is None:
            return f"Patroni is not installed in this Python (pip install '{pip}')"
    if os.geteuid() == 0 and shutil.which("unshare") is None:
        return "running as root needs `unshare` (util-linux) to start PostgreSQL"
    try:
        bin_dir()
    except Exception as exc:
        return f"no PostgreSQL binaries: {exc}"
    return None


def bin_dir() -> Path:
    given = os.environ.get("PGTASKS_HA_BIN_DIR")
    path = Path(given) if given else binaries()
    if not (path / "pg_ctl").exists():
        raise FileNotFoundError(f"{path} holds no pg_ctl")
    return path


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _as_ordinary_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    assert unshare is not None, missing()
    return [unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]


@dataclass
class Member:
    name: str
    home: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def log(self) -> Path:
        return self.home / "patroni.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def status(self, path: str) -> int:
        """The HTTP status of a Patroni health endpoint (/primary, /sync, /replica), 0 when
        the REST API does not answer."""
        try:
            with urllib.request.urlopen(self.api + path, timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (OSError, ValueError):
            return 0


def patroni_config(member: Member, etcd_port: int, pg_bin: Path) -> dict[str, Any]:
    """One member's Patroni configuration (written as JSON, which YAML reads as is)."""
    addr = f"127.0.0.1:{member.pg_port}"
    return {
        "scope": SCOPE,
        "name": member.name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"127.0.0.1:{member.api_port}",
            "connect_address": f"127.0.0.1:{member.api_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": {
            "dcs": FAILOVER_SETTINGS,
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
        },
        "postgresql": {
            "listen": addr,
            "connect_address": addr,
            "data_dir": str(member.data_dir),
            "bin_dir": str(pg_bin),
            "pgpass": str(member.home / "pgpass"),
            # A throwaway cluster on loopback: trust, as the embedded server does.
            "authentication": {
                "superuser": {"username": "postgres", "password": "postgres"},
                "replication": {"username": "replicator", "password": "replicator"},
            },
            "pg_hba": [
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
            # TCP on loopback only; no Unix socket, so long folder paths are no problem.
            "parameters": {"unix_socket_directories": ""},
        },
    }


class Cluster:
    """etcd plus two Patroni members under `root`, each process logging to its own file."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        ports = free_ports(6)
        self.etcd_port, self.etcd_peer_port = ports[0], ports[1]
        self.members = [
            Member("pg1", self.root / "pg1", ports[2], ports[3]),
            Member("pg2", self.root / "pg2", ports[4], ports[5]),
        ]
        self.etcd: subprocess.Popen[bytes] | None = None
        self.pg_bin = bin_dir()

    # -- addresses ------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """Both members in one URL: libpq and asyncpg try them in turn and keep the one
        that accepts writes, so a client follows the primary across failovers."""
        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.members)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def member_url(self, member: Member, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{member.pg_port}/{dbname}"

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    # -- life cycle -----------------------------------------------------------------------

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = self._spawn(
            [
                "etcd", "--name", "e1", "--data-dir", str(self.root / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"e1={peer}", "--log-level", "warn",
            ],
            self.root / "etcd.log",
        )  # fmt: skip
        self._wait(lambda: _http_ok(client + "/health"), timeout, "etcd to answer")
        first, second = self.members
        self.start_member(first)
        self._wait(lambda: first.status("/primary") == 200, timeout, "pg1 to be primary")
        self.start_member(second)
        self._wait(lambda: second.status("/sync") == 200, timeout, "pg2 to be a sync standby")

    def start_member(self, member: Member) -> None:
        member.home.mkdir(parents=True, exist_ok=True)
        conf = patroni_config(member, self.etcd_port, self.pg_bin)
        member.config.write_text(json.dumps(conf, indent=2))
        cmd = [*_as_ordinary_user(), sys.executable, "-m", "patroni", str(member.config)]
        member.proc = self._spawn(cmd, member.log)

    def _wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f}s for {what}\n{self.tails()}")
            for p in [self.etcd, *(m.proc for m in self.members)]:
                if p is not None and p.poll() is not None:
                    raise AssertionError(f"a cluster process exited ({p.args})\n{self.tails()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop everything: Patroni stops its PostgreSQL; stragglers are killed."""
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(30)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(10)
            pid = m.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what the test does to it ---------------------------------------------------------

    def leader(self) -> Member | None:
        for m in self.members:
            if m.status("/primary") == 200:
                return m
        return None

    def other(self, member: Member) -> Member:
        return next(m for m in self.members if m is not member)

    def kill_postmaster(self, member: Member) -> float:
        """kill -9 the member's postmaster; the time.time() of the kill."""
        pid = member.postmaster_pid()
        assert pid is not None, f"{member.name} has no postmaster"
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        return at

    def switchover(self, leader: Member, candidate: Member) -> None:
        """A planned switchover through the leader's REST API (what `patronictl switchover`
        does); raises unless Patroni accepts it."""
        body = json.dumps({"leader": leader.name, "candidate": candidate.name}).encode()
        req = urllib.request.Request(
            leader.api + "/switchover",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200, r.read()

    def wait_sync(self, member: Member, timeout: float = 120) -> None:
        """Until `member` streams as the synchronous standby (a switchover needs one)."""
        self._wait(lambda: member.status("/sync") == 200, timeout, f"{member.name} to be sync")

    def wait_primary(self, member: Member, timeout: float = 120) -> float:
        """Until Patroni reports `member` as the primary; the time.time() it did."""
        self._wait(lambda: member.status("/primary") == 200, timeout, f"{member.name} primary")
        return time.time()

    def tails(self, lines: int = 12) -> str:
        out = []
        for name, path in [("etcd", self.root / "etcd.log")] + [
            (m.name, m.log) for m in self.members
        ]:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- {name} ({path}) ---")
            out.extend(text[-lines:])
        return "\n".join(out)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status) == 200
    except (OSError, ValueError):
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "up":
        print("usage: python -m tests.patroni_cluster up FOLDER", file=sys.stderr)
        return 2
    why = missing()
    if why:
        print(f"cannot start the cluster: {why}", file=sys.stderr)
        return 1
    cluster = Cluster(Path(argv[1]))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the cluster as Ctrl-C does
    try:
        cluster.start()
        first, second = cluster.members
        cfg = first.config
        print(f"URL:        {cluster.url()}")
        print(f"members:    {first.name} {first.api}, {second.name} {second.api}")
        print(f"logs:       {cluster.root}/*/patroni.log, {cluster.root}/etcd.log")
        ctl = Path(sys.executable).with_name("patronictl")
        ctl_cmd = str(ctl) if ctl.exists() else "patronictl"
        print(f"list:       {ctl_cmd} -c {cfg} list")
        print(f"kill -9:    kill -9 $(head -1 {first.data_dir}/postmaster.pid)")
        print(f"switchover: {ctl_cmd} -c {cfg} switchover --force")
        print("Ctrl-C stops the cluster (the folder stays; remove it by hand)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
