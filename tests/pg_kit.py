"""A throwaway PostgreSQL server for tests: initdb in a fresh temporary directory, Unix socket
only (no TCP port), stopped and removed at the end.

Debian's `postgresql` package keeps its server binaries off PATH, under
/usr/lib/postgresql/<version>/bin (PRIVTEXT_TEST_PG_BIN names another directory). initdb
refuses to run as root, so as root the cluster is created and run by the `postgres` OS user,
in a directory it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BIN_ENV = "PRIVTEXT_TEST_PG_BIN"

# A test server trades durability for speed: nothing here must survive a machine crash.
_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def in_ci() -> bool:
    """CI sets CI (to true); there a missing PostgreSQL fails the tests instead of skipping them."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _has_server(d: Path) -> bool:
    return (d / "initdb").is_file() and (d / "pg_ctl").is_file()


def find_bin_dir() -> Path | None:
    """$PRIVTEXT_TEST_PG_BIN if set, else the newest /usr/lib/postgresql/*/bin with initdb and
    pg_ctl, else the PATH's; None if none."""
    if os.environ.get(BIN_ENV):
        d = Path(os.environ[BIN_ENV])
        return d if _has_server(d) else None
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if _has_server(p):
            version = p.parent.name
            found.append((int(version) if version.isdigit() else 0, p))
    if found:
        return max(found)[1]
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


class PgServer:
    """One PostgreSQL cluster in a temporary directory; `url(db)` connects as its superuser."""

    def __init__(self, bin_dir: Path, user: str = "postgres") -> None:
        self.bin_dir = Path(bin_dir)
        self.as_root = os.geteuid() == 0
        # As root the server runs as `user`; otherwise as whoever runs the tests.
        self.os_user = pwd.getpwnam(user) if self.as_root else pwd.getpwuid(os.geteuid())
        self.db_user = user if self.as_root else self.os_user.pw_name
        # A short path under /tmp: a socket path is limited to ~107 bytes, and pytest's own
        # temporary directories are mode 0700 under root's, unreachable for the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="privtext-pg-", dir="/tmp"))
        os.chown(self.root, self.os_user.pw_uid, self.os_user.pw_gid)
        self.data_dir = self.root / "data"
        self.log = self.root / "server.log"
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", self.os_user.pw_name, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> PgServer:
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", self.db_user, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            settings = dict(_SETTINGS, unix_socket_directories=f"'{self.root}'")
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write("\n# privtext tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
            self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as e:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.remove()
            raise RuntimeError(f"could not start PostgreSQL from {self.bin_dir}: {e.stderr or e.stdout}\n{log}") from None
        self.started = True
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.root}&user={self.db_user}"

    def admin(self, sql: str) -> None:
        """Run one statement on the `postgres` database, outside a transaction."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("///", 1)[1].split("?", 1)[0]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def files(self) -> list[Path]:
        """Every file that holds the cluster's data at rest (tables, indexes, TOAST, WAL)."""
        return [p for p in self.data_dir.rglob("*") if p.is_file()]

    def pause(self) -> None:
        """Stop the server but keep its data (a database that goes away), for resume()."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60)

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60)
            finally:
                self.started = False
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> tuple[PgServer | None, str]:
    """(a running server, "") or (None, why there is none). Raises if the binaries exist but
    the server does not start: that is a broken setup, never a reason to skip."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, ("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on PATH; "
                      "install them with `apt-get install -y postgresql`")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed; `pip install -e '.[dev]'` (or the `postgres` extra)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no `postgres` OS user to run PostgreSQL as"
    return PgServer(bin_dir).start(), ""


def server_for_tests() -> PgServer:
    """A running server for a test session; without PostgreSQL the test is skipped, except in
    CI (CI=true), where it fails: CI must never pass by skipping the PostgreSQL store."""
    server, why = start_server()
    if server is None:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL for the PostgreSQL store tests: {why}", pytrace=False)
        pytest.skip(f"PostgreSQL store tests skipped: {why}")
    return server
