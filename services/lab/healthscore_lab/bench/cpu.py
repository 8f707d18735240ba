"""CPU seconds of the processes of the stack, from Linux's /proc.

Events/s swing by a third from run to run on a shared 2-core machine; CPU time
per applied event does not, so the bench reports both. PostgreSQL's share is
the postmaster and all its children: a backend that exits during the window
is reaped by the postmaster, whose `cutime`/`cstime` then hold its time, so
the difference of two samples counts every backend once.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (and of its reaped children, with `reaped_children`)."""
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """`pid` with its reaped children, plus its live children."""
    total = process_cpu_seconds(pid, reaped_children=True)
    for child in children_of(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += process_cpu_seconds(child)
    return total


@dataclass(frozen=True)
class StackCpu:
    """CPU seconds of the service processes, PostgreSQL and the broker at one instant."""

    service: float
    postgres: float | None
    broker: float | None

    def minus(self, earlier: StackCpu) -> StackCpu:
        def diff(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return StackCpu(
            self.service - earlier.service,
            diff(self.postgres, earlier.postgres),
            diff(self.broker, earlier.broker),
        )


def sample(service_pids: list[int], postgres_pid: int | None, broker_pid: int | None) -> StackCpu:
    service = 0.0
    for pid in service_pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            service += process_cpu_seconds(pid)
    postgres = broker = None
    if postgres_pid is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            postgres = tree_cpu_seconds(postgres_pid)
    if broker_pid is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            broker = tree_cpu_seconds(broker_pid)
    return StackCpu(service, postgres, broker)


@dataclass(frozen=True)
class MachineCpu:
    """Seconds of CPU time the whole machine spent busy, and had stolen by its host,
    since boot (the first line of /proc/stat)."""

    busy: float
    steal: float

    def minus(self, earlier: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - earlier.busy, self.steal - earlier.steal)


def machine() -> MachineCpu:
    # cpu user nice system idle iowait irq softirq steal ...
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return MachineCpu((user + nice + system + irq + softirq) / _TICKS, steal / _TICKS)
