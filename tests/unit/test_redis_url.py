"""``REDIS_URL``: every form llmq takes, what Celery is given for each, and the errors that say
what is wrong with a URL it cannot use (without repeating its secrets)."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from llmq.config.redis_url import RedisTarget, RedisUrlError, parse_redis_url
from llmq.config.settings import Settings
from llmq.tasks.app import celery_config


def test_a_plain_url_is_one_server_database_and_password() -> None:
    target = parse_redis_url("redis://:s%40cret@cache.internal:6380/3")
    assert (target.host, target.port, target.db) == ("cache.internal", 6380, 3)
    assert (target.username, target.password) == (None, "s@cret")
    assert target.tls is None and not target.is_sentinel
    assert target.celery_broker().url == "redis://:s%40cret@cache.internal:6380/3"


def test_defaults_are_port_6379_and_database_0() -> None:
    target = parse_redis_url("redis://localhost")
    assert (target.host, target.port, target.db) == ("localhost", 6379, 0)
    assert target.celery_broker().url == "redis://localhost:6379/0"


def test_an_acl_user_and_password() -> None:
    target = parse_redis_url("redis://llmq:pw@h/1")
    assert (target.username, target.password) == ("llmq", "pw")
    assert target.node_kwargs() == {"db": 1, "username": "llmq", "password": "pw"}


def test_rediss_verifies_certificates_by_default() -> None:
    target = parse_redis_url("rediss://h:6380/0")
    assert target.tls is not None
    assert target.node_kwargs()["ssl"] is True
    assert target.node_kwargs()["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    broker = target.celery_broker()
    assert broker.url == "rediss://h:6380/0"
    assert broker.use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_rediss_options_reach_the_clients_and_celery() -> None:
    url = (
        "rediss://:pw@h:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem&ssl_check_hostname=false"
    )
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/c.pem",
        "ssl_keyfile": "/etc/k.pem",
        "ssl_check_hostname": False,
    }
    target = parse_redis_url(url)
    assert {k: v for k, v in target.node_kwargs().items() if k.startswith("ssl_")} == expected
    assert target.celery_broker().use_ssl == expected


@pytest.mark.parametrize("value", ["none", "CERT_NONE"])
def test_rediss_without_verification_is_said_explicitly(value: str) -> None:
    tls = parse_redis_url(f"rediss://h?ssl_cert_reqs={value}").node_kwargs()
    assert tls["ssl_cert_reqs"] == ssl.CERT_NONE
    assert tls["ssl_check_hostname"] is False  # nothing verified, the name neither


def test_a_sentinel_set_becomes_kombus_form() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/4?master=mymaster")
    assert target.is_sentinel
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.master, target.db, target.password) == ("mymaster", 4, "pw")
    broker = target.celery_broker(socket_timeout=10, socket_connect_timeout=2)
    assert broker.url == "sentinel://:pw@s1:26379/4;sentinel://:pw@s2:26379/4;sentinel://:pw@[::1]:26380/4"
    assert broker.transport_options["master_name"] == "mymaster"
    sentinel_kwargs = broker.transport_options["sentinel_kwargs"]
    assert (sentinel_kwargs["socket_timeout"], sentinel_kwargs["socket_connect_timeout"]) == (10, 2)
    assert sentinel_kwargs["retry"].get_retries() == 0, "a dead Sentinel is skipped at once"
    assert "password" not in sentinel_kwargs
    assert broker.use_ssl is None


def test_the_sentinels_own_password_is_apart_from_the_masters() -> None:
    target = parse_redis_url(
        "redis+sentinel://:data-pw@s1/0?master=m&sentinel_password=sent-pw&sentinel_username=watch"
    )
    assert target.password == "data-pw"
    kwargs = target.sentinel_kwargs(5, 2)
    assert kwargs["password"] == "sent-pw" and kwargs["username"] == "watch"
    assert "data-pw" not in str(kwargs)


def test_rediss_sentinel_speaks_tls_to_the_sentinels_too_unless_told_not_to() -> None:
    both = parse_redis_url("rediss+sentinel://s1/0?master=m&ssl_ca_certs=/ca.pem")
    assert both.sentinel_kwargs(5, 2)["ssl"] is True
    assert both.sentinel_kwargs(5, 2)["ssl_ca_certs"] == "/ca.pem"
    assert both.celery_broker().use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    data_only = parse_redis_url("rediss+sentinel://s1/0?master=m&sentinel_ssl=false")
    assert "ssl" not in data_only.sentinel_kwargs(5, 2)
    assert data_only.node_kwargs()["ssl"] is True


def test_celery_is_configured_from_the_same_url() -> None:
    settings = Settings(redis_url="rediss+sentinel://:pw@s1:26379,s2:26379/6?master=m&ssl_cert_reqs=none")
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:pw@s1:26379/6;sentinel://:pw@s2:26379/6"
    assert config["broker_transport_options"]["master_name"] == "m"
    assert config["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout_s
    assert config["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_NONE
    plain = celery_config(Settings(redis_url="redis://h:6379/1"))
    assert plain["broker_url"] == "redis://h:6379/1" and plain["broker_use_ssl"] is None


def test_display_hides_every_secret() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1/0?master=m&sentinel_password=spw")
    assert "pw" not in target.display().replace("***", "")
    assert target.display() == "redis+sentinel://***@s1:26379/0?master=m"
    assert RedisTarget("redis").display() == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("cache:6379", "no scheme"),
        ("http://cache:6379", "unknown scheme 'http'"),
        ("unix:///tmp/redis.sock", "Unix sockets"),
        ("sentinel://:pw@s1:26379;sentinel://s2:26379", "redis+sentinel://h1:26379,h2:26379/0?master=NAME"),
        ("redis+sentinel://s1:26379,s2:26379/0", "needs ?master=NAME"),
        ("redis+sentinel://s1/0?master=", "needs ?master=NAME"),
        ("redis://h1:6379,h2:6379/0", "need redis+sentinel://"),
        ("redis://h:port/0", "bad port"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h/zero", "must be a number"),
        ("redis://:pw@/0", "no host"),
        ("redis+sentinel://s1,,s2/0?master=m", "empty host"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "need rediss://"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "required, optional or none"),
        ("rediss://h/0?ssl_check_hostname=perhaps", "true or false"),
        ("redis://h/0?socket_timeout=1", "unknown option"),
        ("redis+sentinel://s1/0?master=m&master=n", "given twice"),
        ("redis://:pa#ss@h/0", "percent-encode"),
    ],
)
def test_a_url_llmq_cannot_use_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError) as raised:
        parse_redis_url(url)
    assert says in str(raised.value)
    assert "accepted forms" in str(raised.value)


def test_errors_do_not_repeat_the_password() -> None:
    with pytest.raises(RedisUrlError) as raised:
        parse_redis_url("redis+sentinel://:hunter2@s1/0?master=m&master=n&sentinel_password=hunter3")
    assert "hunter2" not in str(raised.value) and "hunter3" not in str(raised.value)


def test_settings_refuse_a_malformed_url_at_start() -> None:
    with pytest.raises(ValidationError, match="needs \\?master=NAME"):
        Settings(redis_url="redis+sentinel://s1:26379/0")
    assert Settings(redis_url="").redis_url is None  # an empty REDIS_URL means the embedded Redis
