"""Memory trackers: host RSS and GPU memory from NVML, each sampled in a background thread.

Facts behind the design (../shared/docs/BENCHMARKING.md): sample every <= 10 ms and keep the
peak; NVML ignores CUDA_VISIBLE_DEVICES, so map the logical device to the physical one by UUID;
report the process's own usage (may be empty inside containers) and the device-wide usage minus
the idle baseline taken before load.  The NVML module is injected so tests can pass a fake.
"""
from __future__ import annotations

import math
import os
import resource
import threading
import time
from dataclasses import dataclass

from .errors import BenchError

MB = 1024 * 1024
DEFAULT_INTERVAL_S = 0.005


def current_rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (from /proc; 0 where /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's RSS (VmHWM)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def children_peak_rss_bytes() -> int:
    """Largest peak RSS among this process's waited-for children."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


class _Sampler:
    """A daemon thread calling `sample()` every `interval_s` until stopped."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        if not 0 < interval_s <= 0.010:
            raise BenchError(f"sampling interval {interval_s * 1e3:g} ms: use 0 < interval <= 10 ms")
        self.interval_s = interval_s
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self.samples += 1
            self._stop.wait(self.interval_s)

    def start(self):
        self.sample()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # one last reading after the work ended
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RssSampler(_Sampler):
    """Peak resident memory of this process (sampled, and the kernel's VmHWM)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        super().__init__(interval_s)
        self.baseline_bytes = current_rss_bytes()
        self.peak_sampled_bytes = self.baseline_bytes

    def sample(self) -> None:
        self.peak_sampled_bytes = max(self.peak_sampled_bytes, current_rss_bytes())

    @property
    def peak_mb(self) -> float:
        return max(self.peak_sampled_bytes, peak_rss_bytes()) / MB

    @property
    def growth_mb(self) -> float:
        """Sampled peak above the RSS when the sampler was made."""
        return (self.peak_sampled_bytes - self.baseline_bytes) / MB


# --- GPU ----------------------------------------------------------------------------------

def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def physical_device(nvml, logical_index: int, uuid: str | None = None,
                    visible: str | None = None):
    """NVML handle and UUID of the device a framework calls `gpu:<logical_index>`.

    `uuid` (from the framework, when it can tell) wins.  Otherwise the logical index is
    looked up in CUDA_VISIBLE_DEVICES (indices or UUID prefixes), then resolved by UUID.
    """
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    if uuid is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
        if visible is None or visible.strip() == "":
            entries = [str(i) for i in range(count)] if visible is None else []
        else:
            entries = [e.strip() for e in visible.split(",") if e.strip()]
        if logical_index >= len(entries):
            raise BenchError(f"gpu:{logical_index} is not visible (CUDA_VISIBLE_DEVICES="
                             f"{visible!r}, {count} GPU(s) in NVML); use a visible index")
        entry = entries[logical_index]
        if entry.isdigit():
            if int(entry) >= count:
                raise BenchError(f"CUDA_VISIBLE_DEVICES names GPU {entry} but NVML sees {count}")
            uuid = uuids[int(entry)]
        else:
            uuid = entry
    want = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    matches = [i for i, u in enumerate(uuids) if u.startswith(want)]
    if len(matches) != 1:
        raise BenchError(f"no single NVML device matches UUID {uuid!r} (found {len(matches)}); "
                         "check CUDA_VISIBLE_DEVICES")
    return handles[matches[0]], uuids[matches[0]]


@dataclass
class GpuMemory:
    name: str
    uuid: str
    total_mb: float
    idle_mb: float  # device-wide used before load
    peak_device_mb: float  # device-wide peak minus idle
    peak_process_mb: float  # this process's own peak (nan when NVML lists no processes)
    samples: int
    interval_ms: float


class NvmlSampler(_Sampler):
    """Peak GPU memory: device-wide minus the idle baseline, and this process's own."""

    def __init__(self, logical_index: int = 0, nvml=None, interval_s: float = DEFAULT_INTERVAL_S,
                 uuid: str | None = None, pid: int | None = None):
        super().__init__(interval_s)
        if nvml is None:
            try:
                import pynvml as nvml  # from the nvidia-ml-py distribution
            except ImportError:
                raise BenchError("GPU memory needs NVML: pip install nvidia-ml-py") from None
        self.nvml = nvml
        self.pid = os.getpid() if pid is None else pid
        self._lock = threading.Lock()
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError: no driver or no GPU
            raise BenchError(f"NVML cannot start ({exc}); is the NVIDIA driver loaded?") from None
        self.handle, self.uuid = physical_device(nvml, logical_index, uuid)
        self.name = _text(nvml.nvmlDeviceGetName(self.handle))
        info = nvml.nvmlDeviceGetMemoryInfo(self.handle)
        self.total_bytes = info.total
        self.idle_bytes = info.used
        self.peak_used_bytes = info.used
        self.peak_process_bytes: int | None = None

    def _process_bytes(self) -> int | None:
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception:
            return None
        for proc in procs or ():
            if proc.pid == self.pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None

    def sample(self) -> None:
        used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        own = self._process_bytes()
        with self._lock:
            self.peak_used_bytes = max(self.peak_used_bytes, used)
            if own is not None:
                self.peak_process_bytes = max(self.peak_process_bytes or 0, own)

    def result(self) -> GpuMemory:
        with self._lock:
            own = self.peak_process_bytes
            return GpuMemory(
                name=self.name, uuid=self.uuid, total_mb=self.total_bytes / MB,
                idle_mb=self.idle_bytes / MB,
                peak_device_mb=(self.peak_used_bytes - self.idle_bytes) / MB,
                peak_process_mb=own / MB if own is not None else math.nan,
                samples=self.samples, interval_ms=self.interval_s * 1e3)

    def stop(self):
        super().stop()
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass
        return self


def gpu_inventory(nvml=None) -> list[dict]:
    """Name, UUID, memory and driver of every GPU NVML sees ([] without NVML or GPUs)."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception:
        return []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            out.append({"index": i, "name": _text(nvml.nvmlDeviceGetName(h)),
                        "uuid": _text(nvml.nvmlDeviceGetUUID(h)),
                        "memory_mb": nvml.nvmlDeviceGetMemoryInfo(h).total / MB,
                        "driver": driver})
        return out
    except Exception:
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def wait_for(predicate, timeout_s: float = 2.0) -> bool:
    """Poll `predicate` until true or the timeout (for tests and callers of samplers)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()
