"""CPU time and resident memory of process groups, read from ``/proc`` every half second.

A group is either the process trees under some root pids (gunicorn's master and its workers, a
prefork worker and its children) or a predicate over ``/proc`` entries (every ``postgres``
process). Each process is keyed by ``(pid, starttime)`` so a reused pid is a new process; its CPU
is counted from its first sample (or from zero if it appeared after the start) to its last sample,
so a process that exits between samples loses at most one interval of CPU.

``postgres`` processes are split three ways: backends of the bench's database, the cluster's
shared machinery (postmaster, checkpointer, walwriter, …, which other databases' load also drives)
and backends of other databases. The ``postgres`` group is the first two; ``postgres_cluster`` is
all of them (what the machine's server spent, whoever asked).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# "postgres: 15/main: user dbname 127.0.0.1(51234) idle" (the cluster part is optional)
_BACKEND = re.compile(r"^postgres: (?:[^:]+: )?(\S+) (\S+) (\S+\(\d+\)|\[local\])")
_AUTOVACUUM_WORKER = re.compile(r"autovacuum worker (\S+)")


@dataclass(frozen=True)
class ProcEntry:
    pid: int
    ppid: int
    comm: str
    start: int  # starttime in clock ticks since boot: with pid, identifies the process
    cpu_ticks: int  # utime + stime


def read_proc_table() -> dict[int, ProcEntry]:
    table: dict[int, ProcEntry] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        lpar, rpar = raw.find("("), raw.rfind(")")
        fields = raw[rpar + 2 :].split()
        # fields[0] is field 3 (state): utime=14, stime=15, starttime=22 (1-based)
        try:
            table[int(name)] = ProcEntry(
                pid=int(name),
                ppid=int(fields[1]),
                comm=raw[lpar + 1 : rpar],
                start=int(fields[19]),
                cpu_ticks=int(fields[11]) + int(fields[12]),
            )
        except (IndexError, ValueError):
            continue
    return table


def read_statm_kib(pid: int) -> tuple[int, int]:
    """(resident, resident minus file-backed and shared memory) in KiB: VmRSS and RssAnon."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            parts = fh.read().split()
        resident, shared = int(parts[1]), int(parts[2])
    except (OSError, IndexError, ValueError):
        return 0, 0
    return resident * PAGE_KIB, (resident - shared) * PAGE_KIB


def descendants(table: dict[int, ProcEntry], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class PostgresClassifier:
    """Which ``postgres`` processes serve the bench's database (cached per process)."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self._kind: dict[tuple[int, int], str] = {}

    def kind(self, entry: ProcEntry) -> str:
        """``bench`` (a backend of our db), ``shared`` (cluster machinery) or ``other``."""
        key = (entry.pid, entry.start)
        if key not in self._kind:
            cmd = _cmdline(entry.pid)
            match = _BACKEND.match(cmd)
            if match:
                kind = "bench" if match.group(2) == self.dbname else "other"
            elif (vac := _AUTOVACUUM_WORKER.search(cmd)) is not None:
                kind = "bench" if vac.group(1) == self.dbname else "other"
            else:
                kind = "shared"
            self._kind[key] = kind
        return self._kind[key]


GroupSelector = Callable[[dict[int, ProcEntry]], set[int]]


def tree(roots: Callable[[], Iterable[int]]) -> GroupSelector:
    """The process trees under the pids ``roots()`` returns (read at each sample)."""
    return lambda table: descendants(table, roots())


def postgres_groups(dbname: str) -> dict[str, GroupSelector]:
    classifier = PostgresClassifier(dbname)

    def bench(table: dict[int, ProcEntry]) -> set[int]:
        return {
            e.pid
            for e in table.values()
            if e.comm == "postgres" and classifier.kind(e) in ("bench", "shared")
        }

    def cluster(table: dict[int, ProcEntry]) -> set[int]:
        return {e.pid for e in table.values() if e.comm == "postgres"}

    def backends(table: dict[int, ProcEntry]) -> set[int]:
        return {e.pid for e in table.values() if e.comm == "postgres" and classifier.kind(e) == "bench"}

    # postgres_backends: one process per connection to the bench's database (peak = peak connections)
    return {"postgres": bench, "postgres_cluster": cluster, "postgres_backends": backends}


def read_machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    # guest time is already included in user/nice
    total = sum(parts[:8])
    return total - idle, total


@dataclass
class _Track:
    first: int
    last: int
    groups: set[str] = field(default_factory=set)


@dataclass
class GroupFigures:
    cpu_s: float
    peak_rss_mib: float  # sum of VmRSS over the group's processes, at the sample where it peaked
    peak_anon_mib: float  # the same for RssAnon: shared pages (postgres' buffers) not counted
    processes: int  # distinct processes seen over the window
    peak_live: int  # most processes alive at one sample


class ProcessSampler:
    """Start with :meth:`start`, stop with :meth:`stop`; read :meth:`figures` afterwards.

    ``combined`` names sums of groups whose peak RSS is sampled together (e.g. the worker host).
    """

    def __init__(
        self,
        groups: dict[str, GroupSelector],
        interval_s: float = 0.5,
        combined: dict[str, list[str]] | None = None,
    ) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self.combined = combined or {}
        self._tracks: dict[tuple[int, int], _Track] = {}
        self._peak_rss_kib: dict[str, int] = {name: 0 for name in [*groups, *self.combined]}
        self._peak_anon_kib: dict[str, int] = dict(self._peak_rss_kib)
        self._members: dict[str, set[tuple[int, int]]] = {name: set() for name in groups}
        self._peak_live: dict[str, int] = {name: 0 for name in [*groups, *self.combined]}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started_at = 0.0
        self.ended_at = 0.0
        self._machine_start = (0, 0)
        self._machine_end = (0, 0)
        self.samples = 0

    def _sample(self, first: bool) -> None:
        table = read_proc_table()
        rss_now: dict[str, int] = {}
        anon_now: dict[str, int] = {}
        statm: dict[int, tuple[int, int]] = {}
        with self._lock:
            for name, select in self.groups.items():
                try:
                    pids = select(table)
                except Exception:  # a selector must never stop the sampling
                    pids = set()
                rss = anon = 0
                for pid in pids:
                    entry = table.get(pid)
                    if entry is None:
                        continue
                    key = (pid, entry.start)
                    track = self._tracks.get(key)
                    if track is None:
                        track = _Track(first=entry.cpu_ticks if first else 0, last=entry.cpu_ticks)
                        self._tracks[key] = track
                    track.last = entry.cpu_ticks
                    track.groups.add(name)
                    self._members[name].add(key)
                    if pid not in statm:
                        statm[pid] = read_statm_kib(pid)
                    rss += statm[pid][0]
                    anon += statm[pid][1]
                rss_now[name], anon_now[name] = rss, anon
                self._peak_live[name] = max(self._peak_live[name], len(pids))
                self._peak_rss_kib[name] = max(self._peak_rss_kib[name], rss)
                self._peak_anon_kib[name] = max(self._peak_anon_kib[name], anon)
            for name, parts in self.combined.items():
                total = sum(rss_now.get(p, 0) for p in parts)
                self._peak_rss_kib[name] = max(self._peak_rss_kib[name], total)
                total = sum(anon_now.get(p, 0) for p in parts)
                self._peak_anon_kib[name] = max(self._peak_anon_kib[name], total)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(first=False)

    def start(self) -> None:
        self.started_at = time.time()
        self._machine_start = read_machine_ticks()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample(first=False)
        self.ended_at = time.time()
        self._machine_end = read_machine_ticks()

    def figures(self) -> dict[str, GroupFigures]:
        out: dict[str, GroupFigures] = {}
        with self._lock:
            for name in self.groups:
                ticks = sum(self._tracks[k].last - self._tracks[k].first for k in self._members[name])
                out[name] = GroupFigures(
                    cpu_s=ticks / CLK_TCK,
                    peak_rss_mib=self._peak_rss_kib[name] / 1024,
                    peak_anon_mib=self._peak_anon_kib[name] / 1024,
                    processes=len(self._members[name]),
                    peak_live=self._peak_live[name],
                )
            for name in self.combined:
                parts = [out[p] for p in self.combined[name] if p in out]
                out[name] = GroupFigures(
                    cpu_s=sum(p.cpu_s for p in parts),
                    peak_rss_mib=self._peak_rss_kib[name] / 1024,
                    peak_anon_mib=self._peak_anon_kib[name] / 1024,
                    processes=sum(p.processes for p in parts),
                    peak_live=sum(p.peak_live for p in parts),
                )
        return out

    def machine(self) -> dict[str, Any]:
        """The whole machine's CPU over the sampled window: busy cores on average."""
        busy = self._machine_end[0] - self._machine_start[0]
        seconds = max(self.ended_at - self.started_at, 1e-9)
        return {
            "window_s": seconds,
            "busy_cores": busy / CLK_TCK / seconds,
            "cpus": os.cpu_count(),
            "samples": self.samples,
        }
