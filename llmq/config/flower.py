"""How ``llmq flower`` runs Flower: on loopback it may go without auth; beyond loopback it must
have basic auth or Flower's OAuth, or it does not start at all.

Flower shows every task's arguments and lets whoever reaches it shut workers down, so an open
Flower on a public interface is an open door. The rule is decided here, once, from the settings,
and ``llmq flower`` refuses with a clear message rather than start an unlocked Flower."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from llmq.config.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


class FlowerNotLocked(ValueError):
    """Flower would listen beyond loopback without auth, or its auth is malformed."""


@dataclass(frozen=True)
class FlowerCommand:
    """The arguments after ``celery -A llmq.tasks.app flower`` and the extra environment."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"


def is_loopback(address: str) -> bool:
    host = address.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (all interfaces): not provably loopback


def _check_basic_auth(value: str) -> None:
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user.strip() or not password:
            raise FlowerNotLocked(
                "FLOWER_BASIC_AUTH must be user:password (several: user1:pass1,user2:pass2)"
            )


def flower_command(settings: Settings, address: str | None = None) -> FlowerCommand:
    """Flower's arguments for these settings; ``address`` (``--address``) wins over
    FLOWER_ADDRESS. Without either, Flower listens on 127.0.0.1 — or on 0.0.0.0 when basic auth
    is set (docker-compose relies on that)."""
    basic_auth = settings.flower_basic_auth
    locked = bool(basic_auth or settings.flower_auth)
    where = address or settings.flower_address or ("0.0.0.0" if basic_auth else "127.0.0.1")
    args = [f"--port={settings.flower_port}", f"--address={where}"]
    if basic_auth:
        _check_basic_auth(basic_auth)
        args.append(f"--basic-auth={basic_auth}")
    if settings.flower_auth:
        args.append(f"--auth={settings.flower_auth}")
    if locked:
        return FlowerCommand(args, {}, where)
    if not is_loopback(where):
        raise FlowerNotLocked(
            f"refusing to start Flower on {where!r} without auth: anyone who reaches it could read "
            "every task and shut workers down. Set FLOWER_BASIC_AUTH=user:password (or Flower's "
            "OAuth: FLOWER_AUTH with FLOWER_AUTH_PROVIDER), or listen on 127.0.0.1."
        )
    # Loopback only, so its JSON API may answer without credentials (Flower refuses otherwise).
    return FlowerCommand(args, {"FLOWER_UNAUTHENTICATED_API": "true"}, where)
