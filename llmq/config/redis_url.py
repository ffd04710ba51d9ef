"""``REDIS_URL``, read once: which Redis (one server, or a Sentinel set), which database, which
credentials, and whether to speak TLS. Every client of llmq is built from the one parsed value
(``llmq/workers/redis_client.py`` builds the ``redis.Redis``; :meth:`RedisTarget.celery_broker`
gives Celery and Flower the broker URL and options in kombu's own form), so the broker, the
limiter, the breakers, the cache, the cancel channel and the sweeper's lock never disagree on
where Redis is.

The accepted forms::

    redis://[[user]:password@]host[:6379][/db]
    rediss://[[user]:password@]host[:6379][/db][?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem
                                                 &ssl_certfile=…&ssl_keyfile=…&ssl_check_hostname=true]
    redis+sentinel://[[user]:password@]host1[:26379],host2[:26379],…[/db]?master=NAME
                     [&sentinel_password=…&sentinel_username=…]
    rediss+sentinel://…same…[&ssl_…][&sentinel_ssl=false]

The user and password of a Sentinel URL are the data nodes' (the master's and replicas'); the
Sentinels' own, when they have one, are ``sentinel_username``/``sentinel_password``.
``rediss+sentinel`` speaks TLS to the data nodes and, unless ``sentinel_ssl=false``, to the
Sentinels too, with the same CA and client certificate.

kombu spells a Sentinel set differently (``sentinel://:pw@h1:26379/0;sentinel://:pw@h2:26379/0``
plus ``broker_transport_options={"master_name": …, "sentinel_kwargs": {…}}`` and TLS in
``broker_use_ssl``); :meth:`RedisTarget.celery_broker` writes that form, and a ``sentinel://`` URL
given here is refused with the form to use instead, because the master's name cannot travel in it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_PORT = 6379
SENTINEL_PORT = 26379
FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://… (TLS), "
    "redis+sentinel://[[user]:password@]host1[:26379],host2[:26379][/db]?master=NAME, "
    "rediss+sentinel://… (TLS)"
)
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_TLS_KEYS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
_SENTINEL_KEYS = {"master", "sentinel_password", "sentinel_username", "sentinel_ssl"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class RedisUrlError(ValueError):
    """A ``REDIS_URL`` that llmq cannot use; the message says what is wrong and the forms it takes."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"REDIS_URL: {problem} (accepted forms: {FORMS})")


@dataclass(frozen=True)
class TlsOptions:
    """TLS towards Redis. Certificates are verified unless ``ssl_cert_reqs=none`` says otherwise
    (kombu alone would fall back to no verification for a bare ``rediss://``: llmq does not)."""

    cert_reqs: str = "required"
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool | None = None

    def redis_kwargs(self) -> dict[str, Any]:
        """The ``ssl_*`` keyword arguments of redis-py (and of kombu's ``broker_use_ssl``)."""
        kwargs: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[self.cert_reqs]}
        for key, value in (
            ("ssl_ca_certs", self.ca_certs),
            ("ssl_certfile", self.certfile),
            ("ssl_keyfile", self.keyfile),
        ):
            if value is not None:
                kwargs[key] = value
        check = self.check_hostname
        if check is None and self.cert_reqs == "none":
            check = False  # nothing is verified, the name neither (redis-py would refuse the pair)
        if check is not None:
            kwargs["ssl_check_hostname"] = check
        return kwargs


@dataclass(frozen=True)
class CeleryBroker:
    """What Celery (and Flower, which reads the same configuration) is given."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    use_ssl: dict[str, Any] | None = None


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is. ``sentinels`` is empty for a single server (``host``/``port``); otherwise
    ``master`` names the set the Sentinels watch."""

    scheme: str
    db: int = 0
    host: str = "127.0.0.1"
    port: int = REDIS_PORT
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def node_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a ``redis.Redis`` for a data node (db, credentials, TLS)."""
        kwargs: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.tls is not None:
            kwargs["ssl"] = True
            kwargs.update(self.tls.redis_kwargs())
        return kwargs

    def sentinel_kwargs(self, socket_timeout: float, socket_connect_timeout: float) -> dict[str, Any]:
        """Keyword arguments of the connections to the Sentinels themselves. Without them redis-py
        would give those connections no credentials (and kombu no timeouts). A Sentinel that does
        not answer is skipped at once for the next one (no retry), so finding the master never
        waits on a dead Sentinel."""
        kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.sentinel_tls and self.tls is not None:
            kwargs["ssl"] = True
            kwargs.update(self.tls.redis_kwargs())
        return kwargs

    def celery_broker(self, socket_timeout: float = 10, socket_connect_timeout: float = 2) -> CeleryBroker:
        """The broker in kombu's spelling: ``sentinel://…;sentinel://…`` with ``master_name`` and
        ``sentinel_kwargs`` in the transport options, and TLS in ``broker_use_ssl``."""
        use_ssl = self.tls.redis_kwargs() if self.tls is not None else None
        auth = _userinfo(self.username, self.password)
        if self.is_sentinel:
            urls = ";".join(f"sentinel://{auth}{_hostport(h, p)}/{self.db}" for h, p in self.sentinels)
            options = {
                "master_name": self.master,
                "sentinel_kwargs": self.sentinel_kwargs(socket_timeout, socket_connect_timeout),
            }
            return CeleryBroker(urls, options, use_ssl)
        scheme = "rediss" if self.tls is not None else "redis"
        return CeleryBroker(f"{scheme}://{auth}{_hostport(self.host, self.port)}/{self.db}", {}, use_ssl)

    def display(self) -> str:
        """The URL without its secrets, for logs and banners."""
        auth = "***@" if self.password or self.sentinel_password else ""
        if self.is_sentinel:
            hosts = ",".join(_hostport(h, p) for h, p in self.sentinels)
            return f"{self.scheme}://{auth}{hosts}/{self.db}?master={self.master}"
        return f"{self.scheme}://{auth}{_hostport(self.host, self.port)}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``REDIS_URL``; :class:`RedisUrlError` (a ``ValueError``) says what is wrong."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise RedisUrlError(f"{_mask(url)!r} has no scheme")
    if scheme == "sentinel" or ";" in url:
        raise RedisUrlError(
            "kombu's 'sentinel://h1;sentinel://h2' form cannot carry the master's name: write "
            "redis+sentinel://h1:26379,h2:26379/0?master=NAME (llmq translates it for Celery)"
        )
    if scheme == "unix":
        raise RedisUrlError("Unix sockets are not supported by the broker transport: use redis://host:port")
    if scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
        raise RedisUrlError(f"unknown scheme {scheme!r}")
    netloc, path, query = _split(rest)
    params = _query(query, url)
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    tls = _tls(params) if scheme.startswith("rediss") else None
    if tls is None and params.keys() & _TLS_KEYS:
        raise RedisUrlError(
            f"TLS options {sorted(params.keys() & _TLS_KEYS)} need rediss:// or rediss+sentinel://"
        )
    if not scheme.endswith("+sentinel"):
        unknown = params.keys() - _TLS_KEYS
        if unknown:
            raise RedisUrlError(f"unknown option(s) {sorted(unknown)}")
        [(host, port)] = _hosts(hosts, REDIS_PORT, single=True)
        return RedisTarget(scheme, _db(path), host, port, username=username, password=password, tls=tls)
    unknown = params.keys() - _TLS_KEYS - _SENTINEL_KEYS
    if unknown:
        raise RedisUrlError(f"unknown option(s) {sorted(unknown)}")
    master = params.get("master")
    if not master:
        raise RedisUrlError("a Sentinel URL needs ?master=NAME (the name the Sentinels monitor)")
    sentinel_tls = tls is not None and _flag(params.get("sentinel_ssl", "true"), "sentinel_ssl")
    return RedisTarget(
        scheme,
        _db(path),
        username=username,
        password=password,
        tls=tls,
        sentinels=tuple(_hosts(hosts, SENTINEL_PORT, single=False)),
        master=master,
        sentinel_username=params.get("sentinel_username"),
        sentinel_password=params.get("sentinel_password"),
        sentinel_tls=sentinel_tls,
    )


def _split(rest: str) -> tuple[str, str, str]:
    before_query, _, query = rest.partition("?")
    if "#" in query or "#" in before_query:
        raise RedisUrlError("a fragment ('#…') has no meaning here; percent-encode '#' in a password as %23")
    netloc, slash, path = before_query.partition("/")
    return netloc, slash + path, query


def _query(query: str, url: str) -> dict[str, str]:
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise RedisUrlError(f"option {key!r} given twice in {_mask(url)!r}")
        params[key] = value
    return params


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _hosts(hosts: str, default_port: int, *, single: bool) -> list[tuple[str, int]]:
    if not hosts:
        raise RedisUrlError("no host given")
    parts = hosts.split(",")
    if single and len(parts) > 1:
        raise RedisUrlError(f"several hosts {hosts!r} need redis+sentinel:// (one server per redis:// URL)")
    found = []
    for part in parts:
        parsed = urlsplit(f"//{part}")
        try:
            port = parsed.port
        except ValueError:
            raise RedisUrlError(f"bad port in {part!r}") from None
        if not parsed.hostname:
            raise RedisUrlError(f"empty host in {hosts!r}")
        found.append((parsed.hostname, port or default_port))
    return found


def _db(path: str) -> int:
    number = path.strip("/")
    if not number:
        return 0
    if not number.isdigit():
        raise RedisUrlError(f"the database must be a number, as in /0, not {path!r}")
    return int(number)


def _tls(params: dict[str, str]) -> TlsOptions:
    reqs = params.get("ssl_cert_reqs", "required").lower()
    reqs = {"cert_required": "required", "cert_optional": "optional", "cert_none": "none"}.get(reqs, reqs)
    if reqs not in _CERT_REQS:
        raise RedisUrlError(f"ssl_cert_reqs must be required, optional or none, not {reqs!r}")
    check = params.get("ssl_check_hostname")
    return TlsOptions(
        cert_reqs=reqs,
        ca_certs=params.get("ssl_ca_certs") or None,
        certfile=params.get("ssl_certfile") or None,
        keyfile=params.get("ssl_keyfile") or None,
        check_hostname=None if check is None else _flag(check, "ssl_check_hostname"),
    )


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise RedisUrlError(f"{name} must be true or false, not {value!r}")


def _userinfo(username: str | None, password: str | None) -> str:
    if username is None and password is None:
        return ""
    user = quote(username or "", safe="")
    return f"{user}:{quote(password or '', safe='')}@" if password is not None else f"{user}@"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _mask(url: str) -> str:
    """``url`` without its credentials and options: error messages must not show secrets."""
    scheme, sep, rest = url.partition("://")
    rest = rest.partition("?")[0]
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{tail}"
