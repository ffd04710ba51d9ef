"""``llmq flower``'s rule: beyond loopback, basic auth or OAuth, or no Flower at all."""

from __future__ import annotations

import pytest

from llmq.config.flower import FlowerNotLocked, flower_command, is_loopback
from llmq.config.settings import Settings


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "10.0.0.5", "flower.example.com", "192.168.1.1"])
def test_addresses_beyond_loopback(address: str) -> None:
    assert not is_loopback(address)


def test_loopback_without_auth_runs_with_an_open_api() -> None:
    command = flower_command(Settings(flower_port=5600))
    assert command.args == ["--port=5600", "--address=127.0.0.1"]
    assert command.env == {"FLOWER_UNAUTHENTICATED_API": "true"}


@pytest.mark.parametrize("where", [{"flower_address": "0.0.0.0"}, {"flower_address": "10.1.2.3"}])
def test_beyond_loopback_without_auth_is_refused(where: dict[str, str]) -> None:
    with pytest.raises(FlowerNotLocked, match="FLOWER_BASIC_AUTH"):
        flower_command(Settings(**where))  # type: ignore[arg-type]


def test_the_address_option_wins_and_is_checked_too() -> None:
    with pytest.raises(FlowerNotLocked):
        flower_command(Settings(flower_address="127.0.0.1"), "0.0.0.0")


def test_basic_auth_listens_everywhere_by_default_and_locks_the_api() -> None:
    command = flower_command(Settings(flower_basic_auth="ops:s3cret"))
    assert command.args == ["--port=5555", "--address=0.0.0.0", "--basic-auth=ops:s3cret"]
    assert command.env == {}


def test_oauth_counts_as_a_lock() -> None:
    command = flower_command(Settings(flower_address="0.0.0.0", flower_auth=r".*@example\.com"))
    assert r"--auth=.*@example\.com" in command.args


@pytest.mark.parametrize("bad", ["nocolon", ":nopassword", "user:", "a:b,broken"])
def test_malformed_basic_auth_is_refused(bad: str) -> None:
    with pytest.raises(FlowerNotLocked, match="user:password"):
        flower_command(Settings(flower_basic_auth=bad))
