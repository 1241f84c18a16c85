"""The private PostgreSQL cluster of tests/pg.py: a fresh database per test,
psql, restarts, password authentication over TCP, a server in a network namespace."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

import pg
from pg import Cluster, find_bin, missing

# The fixtures, also when conftest.py does not register them; both share one cluster.
pg_cluster, pg_url = pg.pg_cluster, pg.pg_url

SEEN: list[str] = []  # the databases earlier tests of this module were given


def tcp_psql(url: str, password: str | None, sql: str = "SELECT current_database()",
             netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """psql over TCP to `url`, never prompting; PGPASSWORD only when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = os.devnull  # no ~/.pgpass either
    if password is not None:
        env["PGPASSWORD"] = password
    command = [str(find_bin("psql")), "-X", "-w", "-A", "-t", "-d", url, "-c", sql]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def dbname(url: str) -> str:
    return url.rpartition("/")[2]


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_an_empty_database_of_its_own(
        pg_cluster: Cluster, pg_url: str, turn: int) -> None:
    name = dbname(pg_url)
    assert name not in SEEN
    tables = pg_cluster.psql(name, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables.strip() == "0"
    pg_cluster.psql(name, "CREATE TABLE left_behind (n int); INSERT INTO left_behind VALUES (1)")
    # the database of the other turn, if it ran first, was dropped after it
    existing = pg_cluster.psql("postgres", "SELECT datname FROM pg_database").split()
    assert name in existing
    assert not set(SEEN) & set(existing)
    SEEN.append(name)


def test_create_database_gives_distinct_names(pg_cluster: Cluster) -> None:
    first, second = pg_cluster.create_database(), pg_cluster.create_database()
    try:
        assert first != second
        pg_cluster.psql(first, "CREATE TABLE only_here (n int)")
        assert pg_cluster.psql(second, "SELECT to_regclass('only_here') IS NULL") == "t\n"
    finally:
        pg_cluster.drop_database(first)
        pg_cluster.drop_database(second)
    existing = pg_cluster.psql("postgres", "SELECT datname FROM pg_database").split()
    assert first not in existing and second not in existing


def test_psql_returns_rows_and_raises_with_the_error(pg_cluster: Cluster, pg_url: str) -> None:
    name = dbname(pg_url)
    rows = pg_cluster.psql(name, """
        CREATE TABLE t (n int, word text);
        INSERT INTO t VALUES (1, 'één'), (2, 'two');
        SELECT n, word FROM t ORDER BY n;
    """)
    assert rows == "1|één\n2|two\n"
    with pytest.raises(RuntimeError, match='relation "missing" does not exist'):
        pg_cluster.psql(name, "SELECT * FROM missing")
    settings = pg_cluster.psql(name, "SHOW server_encoding; SHOW fsync; SHOW max_connections")
    assert settings.split() == ["UTF8", "on", "300"]


def test_restart_keeps_committed_data(pg_cluster: Cluster, pg_url: str) -> None:
    name = dbname(pg_url)
    started = pg_cluster.psql(name, "SELECT pg_postmaster_start_time()")
    pg_cluster.psql(name, "CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 100)")
    pg_cluster.restart()
    assert pg_cluster.psql(name, "SELECT pg_postmaster_start_time()") != started
    assert pg_cluster.psql(name, "SELECT count(*), sum(n) FROM kept") == "100|5050\n"


def test_tcp_needs_the_password(pg_cluster: Cluster, pg_url: str) -> None:
    assert pg_url == f"postgresql://gatepost@127.0.0.1:{pg_cluster.port}/{dbname(pg_url)}"
    assert ":gatepost-test@" not in pg_url  # the password travels apart from the URL
    good = tcp_psql(pg_url, pg_cluster.password)
    assert good.returncode == 0, good.stderr
    assert good.stdout == f"{dbname(pg_url)}\n"
    without = tcp_psql(pg_url, None)
    assert without.returncode != 0
    assert "no password supplied" in without.stderr
    wrong = tcp_psql(pg_url, "not-the-password")
    assert wrong.returncode != 0
    assert 'password authentication failed for user "gatepost"' in wrong.stderr


def test_pg_url_sets_pgpassword_for_the_code_under_test(pg_cluster: Cluster, pg_url: str) -> None:
    assert os.environ["PGPASSWORD"] == pg_cluster.env()["PGPASSWORD"] == "gatepost-test"
    result = subprocess.run([str(find_bin("psql")), "-X", "-w", "-At", "-d", pg_url,
                             "-c", "SELECT current_user"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "gatepost\n", "")


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own with its loopback up (needs root and `ip`)."""
    reason = missing() or ("network namespaces need root" if os.geteuid() != 0 else None)
    if reason is None and not any(os.access(f"{d}/ip", os.X_OK) for d in ("/usr/sbin", "/sbin",
                                                                          "/usr/bin", "/bin")):
        reason = "ip is not installed (apt-get install iproute2)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"gatepost-pg-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


def test_a_cluster_in_a_network_namespace(netns: str) -> None:
    with Cluster.start(listen="*", netns=netns) as cluster:
        name = cluster.create_database()  # through the unix socket, from here
        cluster.psql(name, "CREATE TABLE t (n int); INSERT INTO t VALUES (7)")
        url = cluster.url(name)
        inside = tcp_psql(url, cluster.password, "SELECT n FROM t", netns=netns)
        assert (inside.returncode, inside.stdout) == (0, "7\n"), inside.stderr
        with socket.socket() as probe:  # not listening in our namespace
            assert probe.connect_ex(("127.0.0.1", cluster.port)) != 0
        cluster.restart()  # back in the namespace
        again = tcp_psql(url, cluster.password, "SELECT n FROM t", netns=netns)
        assert (again.returncode, again.stdout) == (0, "7\n"), again.stderr
        folder = cluster.folder
    assert not folder.exists()
