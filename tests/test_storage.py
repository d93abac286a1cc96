"""Redis connections: REDIS_URL against a real server, TLS rules, and the embedded server."""

from __future__ import annotations

import subprocess
import sys

import redis

from integration.storage import EmbeddedRedis, connect, resolve_redis_url


def test_connect_to_a_real_server(redis_url, redis_db):
    client = connect(f"{redis_url}/1", decode=True)
    client.set("greeting", "héllo")
    assert client.get("greeting") == "héllo"
    assert redis_db.get("greeting") == "héllo".encode()


def test_rediss_urls_skip_certificate_checks_plain_urls_do_not():
    tls = connect("rediss://:pw@redis.example.com:6380/0")
    plain = connect("redis://127.0.0.1:6379/0")
    assert tls.connection_pool.connection_kwargs["ssl_cert_reqs"] is None
    assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs
    tls.close()
    plain.close()


def test_redis_url_wins_over_the_embedded_server(tmp_path):
    url, embedded = resolve_redis_url("redis://127.0.0.1:1/0", tmp_path)
    assert (url, embedded) == ("redis://127.0.0.1:1/0", None)
    assert not (tmp_path / "redis").exists()


def test_embedded_server_persists_across_restarts(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    try:
        assert server.started_here
        client = redis.Redis.from_url(server.url)
        client.set("event:1", "stored")
        client.close()
        again = EmbeddedRedis(tmp_path).start()  # a second command reuses the running server
        assert (again.port, again.pid, again.started_here) == (server.port, server.pid, False)
    finally:
        server.stop()
    assert server.pid is not None
    # A stopped server leaves no pid or port file behind for `kill $(cat redis.pid)` to misuse.
    assert not (tmp_path / "redis" / "redis.pid").exists() and not (tmp_path / "redis" / "redis.port").exists()
    restarted = EmbeddedRedis(tmp_path).start()
    try:
        assert restarted.started_here and restarted.pid != server.pid
        assert redis.Redis.from_url(restarted.url).get("event:1") == b"stored"
        assert (tmp_path / "redis" / "appendonly.aof").exists() or (tmp_path / "redis" / "appendonlydir").exists()
    finally:
        restarted.stop()


def test_embedded_server_survives_its_starter(tmp_path):
    """A short-lived command (e.g. `revor-bridge check`) starting it must not take it down on exit."""
    code = ("from pathlib import Path; from integration.storage import EmbeddedRedis;"
            f"print(EmbeddedRedis(Path({str(tmp_path)!r})).start().url)")
    url = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=30).stdout.strip()
    server = EmbeddedRedis(tmp_path).start()
    try:
        assert not server.started_here and server.url == url
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()
