"""The store reaches PostgreSQL over TLS as the URL's sslmode says: verified
against the CA the operator names, and refused when the server's certificate
is not the one it claims to be. A cluster of its own with TLS on (tests/pg.py),
its certificate made by trustme for "localhost"."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trustme

from gatepost.store import NewMessage, NewRecipient, open_store
from pg import Cluster, missing


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    reason = missing()
    if reason:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(reason)
    ca = trustme.CA()
    cluster = Cluster.start()
    try:
        cert, key = cluster.folder / "server.pem", cluster.folder / "server.key"
        issued = ca.issue_cert("localhost")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        for path in (cert, key):
            path.chmod(0o600)
            cluster._own(path)
        with (cluster.data / "gatepost.conf").open("a") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
        cluster.restart()
        ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        yield cluster, ca_file
    finally:
        cluster.stop()


def url(cluster: Cluster, host: str, query: str) -> str:
    return f"postgresql://{cluster.user}@{host}:{cluster.port}/postgres?{query}"


def enqueue_once(store_url: str, staging: Path) -> str:
    async def body() -> str:
        store = open_store(store_url, password="gatepost-test", staging=staging)
        try:
            new = NewMessage("a@x.example", (NewRecipient("b@y.example", None),), b"hi\r\n",
                             "HQ", "HQ", "test")
            return await store.enqueue(new)
        finally:
            await store.aclose()

    return asyncio.run(body())


def test_the_store_speaks_tls_verified_against_the_ca_it_is_given(
    tls_cluster: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, ca = tls_cluster
    verified = url(cluster, "localhost", f"sslmode=verify-full&sslrootcert={ca}")
    assert enqueue_once(verified, tmp_path)
    with psycopg.connect(verified, password=cluster.password) as conn:
        assert conn.info.pgconn.ssl_in_use
        in_use = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert in_use.fetchone() == (True,)


def test_a_certificate_for_another_name_is_refused(
    tls_cluster: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, ca = tls_cluster
    wrong_name = url(cluster, "127.0.0.1", f"sslmode=verify-full&sslrootcert={ca}")
    with pytest.raises(psycopg.OperationalError, match="certificate|does not match"):
        enqueue_once(wrong_name, tmp_path)


def test_an_unknown_ca_is_refused(
    tls_cluster: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, _ = tls_cluster
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    unknown = url(cluster, "localhost", f"sslmode=verify-full&sslrootcert={other}")
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        enqueue_once(unknown, tmp_path)
