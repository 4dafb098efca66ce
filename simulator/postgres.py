"""A throw-away PostgreSQL cluster on a free loopback port, for the tests and the bench.

It uses Debian's cluster tools (package ``postgresql``, i.e. postgresql-common):
``pg_createcluster -p PORT VERSION NAME``, ``pg_ctlcluster VERSION NAME start`` and
``pg_dropcluster --stop VERSION NAME``. They need root and run the server as the
``postgres`` user (``initdb`` and ``pg_ctl`` themselves refuse to run as root, and the
tests run as root).

A cluster is named ``ykt-test-{pid}-{random}`` after the process that made it, so runs in
parallel never share one, and :func:`drop_stale_clusters` removes the clusters of
processes that are gone (a run killed before its teardown). The superuser ``postgres``
has a random password kept in a ``passfile`` (mode 0600) that the cluster's URL names
(``…?passfile=PATH``), so the password is neither in the URL nor in any command line.
The server runs with ``fsync=off`` (it holds test data only) unless made ``durable``
(the bench, which compares durable commits).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from agent.errors import YktError
from simulator.broker import free_port
from simulator.process import Service, wait_until

__all__ = ["CLUSTER_PREFIX", "PgCluster", "PgUnavailable", "drop_stale_clusters",
           "with_database", "with_search_path"]

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "ykt-test"
"""Name prefix of the clusters made here; :func:`drop_stale_clusters` touches no other."""

_PG_LIB = Path("/usr/lib/postgresql")
_NAME_RE = re.compile(rf"^{CLUSTER_PREFIX}-(\d+)-[0-9a-f]+$")


class PgUnavailable(YktError, RuntimeError):
    """No throw-away cluster can be made here (PostgreSQL not installed, not root, or the
    server would not start); the message says what to do."""


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (its query, e.g. ``passfile``, kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname)))


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose sessions use ``schema`` first (libpq ``options=-csearch_path=…``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _versions() -> list[str]:
    """Installed server versions, newest first (``/usr/lib/postgresql/N/bin/postgres``)."""
    if not _PG_LIB.is_dir():
        return []
    found = [p.name for p in _PG_LIB.iterdir() if (p / "bin" / "postgres").exists()]
    return sorted(found, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()],
                  reverse=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_stale_clusters() -> list[str]:
    """Drop (stopping them first) the ``ykt-test-{pid}-…`` clusters whose process is gone,
    and remove their password directories (``$TMPDIR/ykt-test-{pid}-….*``).

    Returns the ``VERSION/NAME`` of the clusters dropped. Never touches another cluster,
    nor one whose process still runs. Sessions running side by side take turns (a
    machine-wide ``flock``), so two never drop the same cluster at once.
    """
    with open(Path(tempfile.gettempdir()) / f"{CLUSTER_PREFIX}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _drop_stale_clusters()


def _drop_stale_clusters() -> list[str]:
    for leftover in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}-*.*"):
        m = _NAME_RE.match(leftover.name.partition(".")[0])
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)
    if shutil.which("pg_lsclusters") is None:
        return []
    listed = _run("pg_lsclusters", "--no-header")
    dropped = []
    for line in listed.stdout.splitlines():
        cols = line.split()
        if len(cols) < 2 or not (m := _NAME_RE.match(cols[1])) or _alive(int(m.group(1))):
            continue
        res = _run("pg_dropcluster", "--stop", cols[0], cols[1])
        if res.returncode == 0:
            dropped.append(f"{cols[0]}/{cols[1]}")
            log.info("dropped stale PostgreSQL cluster %s/%s", cols[0], cols[1])
        else:
            log.warning("could not drop stale cluster %s/%s: %s", cols[0], cols[1],
                        res.stderr.strip())
    return dropped


class PgCluster(Service):
    """A PostgreSQL cluster of its own on ``127.0.0.1:port``; :meth:`start` makes and starts
    it, :meth:`close` stops and drops it (safe twice, and after a failed start).

    :attr:`url` is the superuser's URL of database ``postgres`` (set by :meth:`start`).
    ``start`` raises :class:`PgUnavailable` with what to do when it cannot make one.
    ``durable=False`` (tests) turns ``fsync`` and ``full_page_writes`` off.
    """

    def __init__(self, *, version: str | None = None, durable: bool = False,
                 start_timeout: float = 60.0) -> None:
        self.version = version
        self.durable = durable
        self.start_timeout = start_timeout
        self.name = f"{CLUSTER_PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"
        self.port = 0
        self.url = ""
        self._created = False
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}."))
        self.passfile = self._dir / "pgpass"

    def start(self) -> None:
        """Create and start the cluster; wait until it accepts connections. On failure
        nothing is left behind."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise PgUnavailable("making a PostgreSQL cluster needs root (the Debian cluster "
                                "tools run the server as 'postgres')")
        if shutil.which("pg_createcluster") is None or not (versions := _versions()):
            raise PgUnavailable("PostgreSQL is not installed (apt-get install postgresql; "
                                "'make deb' does it)")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as err:
            raise PgUnavailable("PostgreSQL is installed without a 'postgres' user") from err
        self.version = self.version or versions[0]
        drop_stale_clusters()
        password = secrets.token_urlsafe(24)
        self._create(password, owner.pw_uid)
        self.passfile.write_text(f"*:{self.port}:*:postgres:{password}\n")
        self.passfile.chmod(0o600)
        self.url = (f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
                    f"?passfile={quote(str(self.passfile), safe='/')}")
        self.start_server()

    def _create(self, password: str, owner_uid: int) -> None:
        """``pg_createcluster`` on a free port (a few tries: a port may be taken meanwhile).
        The password file for ``initdb`` must be readable by ``postgres``."""
        pwfile = self._dir / "initdb-password"
        pwfile.write_text(password)
        pwfile.chmod(0o600)
        os.chown(pwfile, owner_uid, -1)
        self._dir.chmod(0o711)
        assert self.version is not None
        try:
            for _attempt in range(3):
                self.port = free_port()
                fast = [] if self.durable else ["-o", "fsync=off", "-o", "full_page_writes=off"]
                res = _run("pg_createcluster", "--quiet", "-p", str(self.port),
                           "--start-conf=manual", *fast, self.version, self.name, "--",
                           "--auth-host=scram-sha-256", "--auth-local=peer",
                           f"--pwfile={pwfile}")
                if res.returncode == 0:
                    self._created = True
                    return
                if "port" not in res.stderr:
                    break
            raise PgUnavailable(f"pg_createcluster {self.version} {self.name} failed: "
                                f"{res.stderr.strip()}")
        finally:
            pwfile.unlink(missing_ok=True)

    def _wait_accepting(self) -> None:
        import psycopg  # the 'pg' extra; only the cluster's users need it

        last: list[psycopg.OperationalError] = []

        def accepting() -> bool:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError as err:
                last[:] = [err]
                return False

        try:
            wait_until(accepting, timeout=self.start_timeout, interval=0.1, failure="")
        except TimeoutError:
            err = last[0] if last else None
            raise PgUnavailable(f"PostgreSQL cluster {self.version}/{self.name} "
                                f"accepts no connection: {err}\n"
                                f"{self._log_tail()}") from err

    def stop_server(self) -> None:
        """Stop the server (fast mode: sessions are cut), keeping the cluster: a database
        outage. Raises :class:`PgUnavailable` if it does not stop."""
        self._ctl("stop")

    def start_server(self) -> None:
        """Start the server again after :meth:`stop_server`; waits until it accepts
        connections (at once if it runs). Raises :class:`PgUnavailable` if it does not."""
        assert self.version is not None
        if _run("pg_ctlcluster", self.version, self.name, "status").returncode != 0:
            self._ctl("start")
        self._wait_accepting()

    def _ctl(self, action: str) -> None:
        assert self.version is not None and self._created, "start() the cluster first"
        res = _run("pg_ctlcluster", self.version, self.name, action,
                   timeout=self.start_timeout)
        if res.returncode != 0:
            raise PgUnavailable(f"pg_ctlcluster {self.version} {self.name} {action}: "
                                f"{res.stderr.strip()}\n{self._log_tail()}")

    def _log_tail(self) -> str:
        path = Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")
        try:
            return path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server and drop the cluster (data, config, log). Safe twice."""
        created, self._created = self._created, False
        if created and self.version is not None:
            res = _run("pg_dropcluster", "--stop", self.version, self.name)
            if res.returncode != 0:
                log.warning("could not drop PostgreSQL cluster %s/%s: %s (dropped by the "
                            "next run)", self.version, self.name, res.stderr.strip())
        shutil.rmtree(self._dir, ignore_errors=True)
