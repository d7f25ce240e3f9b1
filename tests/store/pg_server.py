"""A real, throw-away PostgreSQL server for tests: initdb into a temp dir, serve on a loopback port.

The Debian ``postgresql`` package provides the binaries (``.ci/setup-postgres.sh`` installs it).
PostgreSQL refuses to run as root, so under root the data directory is handed to the ``postgres``
user and the server runs through ``runuser``. In CI (``CI`` set) missing binaries fail the tests;
locally they are skipped with a message saying how to install them.

Use as a fixture (``from pg_server import pg_server``) or by hand::

    python tests/store/pg_server.py    # prints a URL, serves until Ctrl-C
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICE_USER = "postgres"


def find_bin(name: str) -> str | None:
    """Path of a PostgreSQL server binary (``PATH`` first, then the Debian layout)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One postgres process on 127.0.0.1:<port> with its data in ``root``; trust auth, no fsync.

    ``root`` is handed to the ``postgres`` user when running as root, so its parents must be
    traversable (``tempfile.mkdtemp()`` itself, not a folder inside it).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.as_root = os.geteuid() == 0

    def _cmd(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", SERVICE_USER, "--", *args] if self.as_root else args

    def start(self, timeout: float = 60.0) -> PostgresServer:
        initdb, postgres = find_bin("initdb"), find_bin("postgres")
        if not (initdb and postgres):
            raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)
            os.chmod(self.root, 0o700)
        done = subprocess.run(self._cmd([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                         "-E", "UTF8", "--no-sync", "--no-instructions"]),
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        self.log = open(self.root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self._cmd([postgres, "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                       "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off",
                       "-c", "full_page_writes=off", "-c", "max_connections=100"]),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg2.connect(self.url("postgres")).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if absent) and return its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} — CI must run .ci/setup-postgres.sh first")
    pytest.skip(f"{message}; install it with `sudo .ci/setup-postgres.sh` (Debian package postgresql)")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole test session, removed afterwards."""
    if not (find_bin("initdb") and find_bin("postgres")):
        _unavailable("PostgreSQL server binaries not found")
    try:
        import psycopg2  # noqa: F401
        from ase_db_backends import postgresql  # noqa: F401
    except ImportError as err:
        _unavailable(f"{err.name} missing (pip install -e '.[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="codani-pg-"))  # the server user must own it: no parent 0700 dir
    server = PostgresServer(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """URL of a fresh, empty database for one test."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50]
    return pg_server.create_database(name)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`/`kill` also stop the server
    with tempfile.TemporaryDirectory(prefix="codani-pg-") as tmp:
        server = PostgresServer(tmp).start()
        print(server.create_database("codani"), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
