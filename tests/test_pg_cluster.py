"""The throw-away PostgreSQL cluster of the tests (:mod:`simulator.postgres`): a cluster
left by a run killed before its teardown is dropped by the next run, and a running
session's cluster is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from simulator.postgres import drop_stale_clusters, with_database, with_search_path
from tests.fixtures.postgres import PG_URL_ENV

ROOT = Path(__file__).resolve().parents[1]

_ORPHAN = """
import sys
from simulator.postgres import PgCluster
c = PgCluster()
c.start()
print(c.version, c.name, c.passfile.parent, flush=True)
sys.stdin.read()  # alive until the test has seen its cluster; then killed (SIGKILL)
"""


def _clusters() -> set[tuple[str, str]]:
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                         check=True).stdout
    return {(c[0], c[1]) for c in (line.split() for line in out.splitlines()) if len(c) > 1}


def test_a_cluster_left_by_a_killed_run_is_dropped_and_a_live_one_is_kept(
        pg_server: str) -> None:
    if os.environ.get(PG_URL_ENV):
        pytest.skip(f"${PG_URL_ENV} is set: this session makes no cluster of its own")
    # The owner stays alive while its cluster is checked: a test session running beside
    # this one drops the clusters of dead owners, and once dropped this one could not be
    # seen (a flake the repeated runs found). Then it is killed before its teardown.
    orphan = subprocess.Popen([sys.executable, "-c", _ORPHAN], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert orphan.stdout is not None
        line = orphan.stdout.readline()
        assert line, orphan.stderr.read() if orphan.stderr else ""
        version, name, secrets_dir = line.split()
        assert (version, name) in _clusters()
        assert Path(secrets_dir).is_dir()
    finally:
        orphan.kill()
        orphan.communicate(timeout=60)

    drop_stale_clusters()

    # gone (this call or a test session running beside this one dropped it: they take
    # turns on a lock, either may be first)
    assert (version, name) not in _clusters()
    assert not Path(secrets_dir).exists()
    # the session's own server (its process, this one, is alive) still answers
    with psycopg.connect(pg_server, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_urls_keep_their_query_when_the_database_or_schema_changes() -> None:
    url = "postgresql://postgres@127.0.0.1:5555/postgres?passfile=/tmp/x/pgpass"
    db = with_database(url, "ykt_test_1")
    assert db == "postgresql://postgres@127.0.0.1:5555/ykt_test_1?passfile=/tmp/x/pgpass"
    s = with_search_path(with_search_path(db, "a"), "t_2")
    assert s.count("options=") == 1 and s.endswith("options=-csearch_path%3Dt_2")
    assert psycopg.conninfo.conninfo_to_dict(s)["passfile"] == "/tmp/x/pgpass"
