"""Benchmark helpers: the machine, versions, memory and small statistics.

Private to :mod:`mtpstream.bench`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CpuSnapshot",
    "anon_rss_bytes",
    "available_cpus",
    "load_average",
    "machine_info",
    "paired_ratios",
    "peak_rss_bytes",
    "percentiles_us",
    "reset_peak_rss",
    "summarize",
    "trim_heap",
    "utc_now",
    "versions",
]

_PACKAGES = ("mtpstream", "llama-cpp-python", "numpy", "anyio", "trio", "pydantic", "matplotlib")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where unsupported)."""
    with contextlib.suppress(AttributeError, OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "mem_total_bytes": _mem_total_bytes(),
        "load_average_start": load_average(),
    }


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages that matter for the figures."""
    out: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def utc_now() -> str:
    """The current UTC time, ISO 8601, second precision."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class CpuSnapshot:
    """System-wide and own CPU time at one instant, to tell how busy the rest of the machine was."""

    wall: float
    busy_s: float
    """Non-idle CPU seconds of every process (``/proc/stat``: user, nice, system, irq, softirq)."""
    steal_s: float
    """CPU seconds the hypervisor gave to other guests."""
    own_s: float
    """CPU seconds of this process (every thread)."""

    @classmethod
    def take(cls) -> CpuSnapshot:
        """Read the counters now (zeros where ``/proc/stat`` is unavailable)."""
        busy = steal = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/stat") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
            hz = float(os.sysconf("SC_CLK_TCK"))
            busy = (f[0] + f[1] + f[2] + f[5] + f[6]) / hz
            steal = (f[7] if len(f) > 7 else 0) / hz
        t = os.times()
        return cls(wall=time.perf_counter(), busy_s=busy, steal_s=steal, own_s=t.user + t.system)

    def since(self, start: CpuSnapshot) -> dict[str, float]:
        """Other processes' CPU use (in cores, averaged over the interval) and steal."""
        wall = max(1e-9, self.wall - start.wall)
        foreign = max(0.0, (self.busy_s - start.busy_s) - (self.own_s - start.own_s))
        return {
            "wall_s": round(wall, 2),
            "own_cpu_cores": round((self.own_s - start.own_s) / wall, 3),
            "foreign_cpu_cores": round(foreign / wall, 3),
            "steal_cores": round((self.steal_s - start.steal_s) / wall, 3),
        }


def anon_rss_bytes() -> int:
    """Anonymous resident memory now: heap and buffers, not the mmapped model (0 without ``/proc``)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so that later growth
    of the resident set is not hidden by reuse of already-resident free pages."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (or process start)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and every value of a series of measurements."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "values": [round(v, digits) for v in values],
    }


def paired_ratios(num: Sequence[float], den: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Ratios of measurements taken in the same round (``num[i] / den[i]``), summarized.

    With interleaved rounds, pairing cancels slow drift of the machine's speed
    better than a ratio of medians.
    """
    return summarize([n / d for n, d in zip(num, den, strict=True) if d], digits)


def bootstrap_median_ci(
    values: Sequence[float], level: float = 0.95, n_boot: int = 4000, seed: int = 20261201
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the median of ``values`` (None when empty)."""
    if not values:
        return None
    import random

    rng = random.Random(seed)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(n_boot))
    lo = meds[int((1.0 - level) / 2 * n_boot)]
    hi = meds[min(n_boot - 1, int((1.0 + level) / 2 * n_boot))]
    return (round(lo, 4), round(hi, 4))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in [0, 100])."""
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, Any]:
    """p50 / p99 / max (and the sample count) of latencies given in nanoseconds, in µs."""
    if not samples_ns:
        return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None, "mean_us": None}
    s = sorted(samples_ns)
    return {
        "n": len(s),
        "p50_us": round(_percentile(s, 50) / 1000, 2),
        "p99_us": round(_percentile(s, 99) / 1000, 2),
        "max_us": round(s[-1] / 1000, 2),
        "mean_us": round(sum(s) / len(s) / 1000, 2),
    }
