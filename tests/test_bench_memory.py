"""bench/memory.py: the memory trackers (fake NVML, real RSS growth)."""
from __future__ import annotations

import math
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bench.errors import BenchError
from bench.memory import MB, NvmlSampler, RssSampler, gpu_inventory, physical_device, wait_for


class FakeNvml:
    """Enough of pynvml for the sampler: devices with a scripted memory-used timeline."""

    def __init__(self, uuids, used_mb, total_mb=24 * 1024, procs=None):
        self.uuids = uuids
        self.used = {u: used_mb for u in uuids}
        self.total = total_mb * MB
        self.procs = procs if procs is not None else {}
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.uuids[i]

    def nvmlDeviceGetUUID(self, h):
        return h.encode()  # older pynvml returns bytes

    def nvmlDeviceGetName(self, h):
        return "Tesla P40"

    def nvmlSystemGetDriverVersion(self):
        return "515.105.01"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.used[h] * MB, total=self.total, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=mb * MB if mb is not None else None)
                for pid, mb in self.procs.get(h, {}).items()]


UUIDS = ["GPU-aaaa-0000", "GPU-bbbb-1111", "GPU-cccc-2222"]


@pytest.mark.parametrize("visible, logical, expected", [
    (None, 1, "GPU-bbbb-1111"),                      # unset: logical = physical
    ("2,0", 0, "GPU-cccc-2222"),                      # indices are remapped
    ("2,0", 1, "GPU-aaaa-0000"),
    ("GPU-bbbb", 0, "GPU-bbbb-1111"),                 # UUID prefixes are allowed
])
def test_device_found_by_uuid_honouring_cuda_visible_devices(visible, logical, expected,
                                                             monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    handle, uuid = physical_device(FakeNvml(UUIDS, 100), logical, visible=visible)
    assert uuid == expected and handle == expected


def test_device_from_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert physical_device(FakeNvml(UUIDS, 100), 0)[1] == "GPU-bbbb-1111"
    # a framework-reported UUID (no GPU- prefix, as torch gives it) wins over the variable
    assert physical_device(FakeNvml(UUIDS, 100), 0, uuid="cccc-2222")[1] == "GPU-cccc-2222"


@pytest.mark.parametrize("visible, logical", [("1", 1), ("7", 0), ("GPU-zzzz", 0)])
def test_invisible_devices_are_one_line_errors(visible, logical):
    with pytest.raises(BenchError) as err:
        physical_device(FakeNvml(UUIDS, 100), logical, visible=visible)
    assert "\n" not in str(err.value)


def test_nvml_sampler_peak_minus_idle_and_own_process(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    pid = os.getpid()
    nvml = FakeNvml(UUIDS, used_mb=500, procs={})
    sampler = NvmlSampler(1, nvml=nvml, interval_s=0.002).start()  # logical 1 -> GPU-bbbb
    target = "GPU-bbbb-1111"
    # the load and a short spike, then memory falls back: the sampler must catch the spike
    nvml.used[target] = 3500
    nvml.procs[target] = {pid: 2800, pid + 1: 9000}
    assert wait_for(lambda: sampler.samples >= 3)
    nvml.used[target] = 6500
    nvml.procs[target] = {pid: 5800, pid + 1: 9000}
    nvml.used["GPU-cccc-2222"] = 20000  # another device: must not count
    start = sampler.samples
    assert wait_for(lambda: sampler.samples >= start + 3)
    nvml.used[target] = 3000
    nvml.procs[target] = {pid: 2500}
    sampler.stop()
    got = sampler.result()
    assert got.uuid == target and got.name == "Tesla P40"
    assert got.idle_mb == pytest.approx(500)
    assert got.peak_device_mb == pytest.approx(6000)
    assert got.peak_process_mb == pytest.approx(5800)
    assert got.total_mb == pytest.approx(24 * 1024)
    assert got.samples >= 6 and got.interval_ms == pytest.approx(2)
    assert nvml.shutdowns == 1


def test_nvml_sampler_without_process_list_reports_nan():
    nvml = FakeNvml(UUIDS[:1], used_mb=100)  # containers: NVML lists no processes
    with NvmlSampler(0, nvml=nvml) as sampler:
        nvml.used[UUIDS[0]] = 900
        assert wait_for(lambda: sampler.peak_used_bytes >= 900 * MB)
    got = sampler.result()
    assert math.isnan(got.peak_process_mb)
    assert got.peak_device_mb == pytest.approx(800)


def test_sampling_slower_than_10ms_is_refused():
    with pytest.raises(BenchError, match="10 ms"):
        NvmlSampler(0, nvml=FakeNvml(UUIDS, 1), interval_s=0.05)


def test_gpu_inventory_from_fake_and_without_nvml():
    inv = gpu_inventory(FakeNvml(UUIDS[:2], 100))
    assert [g["uuid"] for g in inv] == UUIDS[:2]
    assert inv[0]["driver"] == "515.105.01" and inv[0]["memory_mb"] == pytest.approx(24 * 1024)

    class Broken:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert gpu_inventory(Broken()) == []


def test_rss_sampler_sees_real_growth():
    """A 300 MB array touched then freed inside the sampled window shows in the peak."""
    sampler = RssSampler(interval_s=0.002).start()
    block = np.ones(300 * MB // 8)  # touched pages: resident
    deadline = time.monotonic() + 2
    while sampler.growth_mb < 250 and time.monotonic() < deadline:
        time.sleep(0.005)
    del block
    sampler.stop()
    assert sampler.growth_mb >= 250
    assert sampler.peak_mb >= sampler.baseline_bytes / MB + 250
    assert sampler.samples > 1


def test_rss_sampler_thread_stops():
    sampler = RssSampler().start()
    sampler.stop()
    assert not any(t.name == "RssSampler" and t.is_alive() for t in threading.enumerate())
