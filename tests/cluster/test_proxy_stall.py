"""The test proxy's stall (tests/cluster/proxy.py), the model of a pulled cable that the chaos
suite's `cut-redis` fault and the lease tests' "answer lost" days rely on: a request sent into
it times out at its sender, and still reaches the server once it heals."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .proxy import ProxyThread


def test_a_request_given_up_in_a_stall_reaches_the_server_when_it_heals(redis_url: str) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = ProxyThread(port).start()
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    through = redis.Redis(port=proxy.port, socket_timeout=0.5, decode_responses=True,
                          retry=Retry(NoBackoff(), 0))  # no retry: one request, given up
    try:
        assert through.ping()  # a connection made before the cable was pulled
        proxy.stall()
        with pytest.raises(redis.TimeoutError):
            through.rpush("sent-into-the-cut", "yes")
        through.close()  # the sender gave up on it and closed its socket
        assert direct.llen("sent-into-the-cut") == 0
        proxy.unstall()
        # Redis itself waits for it (a blocking pop), 10 s at most
        assert direct.blpop(["sent-into-the-cut"], timeout=10) == ("sent-into-the-cut", "yes"), \
            "the request sent into the stall never reached Redis"
    finally:
        through.close()
        direct.close()
        proxy.stop()
