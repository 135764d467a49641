"""Process-level settings: CPU math libraries, devices and dtypes.

`configure_cpu_threads()` must run before `import paddle`: Paddle's CPU wheel
bundles Intel MKL, which takes a slow generic path on AMD processors unless
`MKL_DEBUG_CPU_TYPE=5` is set (5x faster matmul measured on this project's AMD
EPYC machines).  We only fill in variables the user has not set, and we say
what we set (`applied_settings()`), so a benchmark can record it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass

from .dtypes import DTYPE_NAMES
from .errors import OptionError

log = logging.getLogger("engine")
_KEPT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DTYPES = DTYPE_NAMES
_APPLIED: dict[str, str] = {}


def user_cache_dir() -> "Path":
    """Where the project keeps what it can rebuild (compiled kernels, a trained tokenizer):
    $XDG_CACHE_HOME/codegen-workbench, else ~/.cache/codegen-workbench."""
    from pathlib import Path

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codegen-workbench"


def cpuinfo_field(name: str) -> str:
    """The first value of `name` in /proc/cpuinfo ("" when absent or unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_vendor() -> str:
    return cpuinfo_field("vendor_id")


def configure_cpu_threads() -> dict[str, str]:
    """Set MKL/OpenMP variables the user left unset; returns what was set."""
    if "paddle" in sys.modules or os.environ.get("CGW_NO_CPU_TUNING") == "1":
        return dict(_APPLIED)
    wanted = {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}
    if _cpu_vendor() == "AuthenticAMD":
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            _APPLIED[key] = value
    return dict(_APPLIED)


def applied_settings() -> dict[str, str]:
    """Environment settings the workbench chose for this process (for reports)."""
    return dict(_APPLIED)


def import_paddle():
    """Import paddle after the CPU settings (the only place the engine imports it)."""
    configure_cpu_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading never goes to a hub
    if "paddle" in sys.modules:
        return ensure_dygraph(sys.modules["paddle"])
    # Paddle prints a warning whenever OMP_NUM_THREADS > 1; we set it on purpose.
    caught = io.StringIO()
    with keep_signal_handlers(), contextlib.redirect_stderr(caught), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddle
    rest = [ln for ln in caught.getvalue().splitlines()
            if "OMP_NUM_THREADS" not in ln and "WISELY" not in ln]
    if rest:
        print("\n".join(rest), file=sys.stderr)
    if _APPLIED:
        log.info("set %s for Paddle's CPU math (CGW_NO_CPU_TUNING=1 turns this off)",
                 ", ".join(f"{k}={v}" for k, v in _APPLIED.items()))
    return ensure_dygraph(paddle)


@contextlib.contextmanager
def keep_signal_handlers():
    """Paddle and PaddleNLP replace the C-level SIGTERM/SIGINT handlers at import (Paddle's
    aborts with a crash report); put the process's own back, so servers stop gracefully.
    Only possible in the main thread; elsewhere the caller must re-install its handlers."""
    main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in _KEPT_SIGNALS} if main else {}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def ensure_dygraph(paddle):
    """Paddle's eager mode is per thread (on in the importing thread only): turn it on here."""
    if not paddle.in_dynamic_mode():
        paddle.disable_static()
    return paddle


def import_paddlenlp_transformers():
    """`paddlenlp.transformers`, imported quietly (its import warns about unrelated tools)."""
    import_paddle()
    with keep_signal_handlers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddlenlp.transformers as transformers
        from paddlenlp.utils.log import logger as paddlenlp_logger

        paddlenlp_logger.set_level("WARNING")  # it logs every added token at INFO
    return transformers


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "gpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"


def parse_device(text: str) -> Device:
    """`cpu`, `gpu` or `gpu:N` (also accepts `cuda:N`)."""
    value = text.strip().lower()
    if value == "cpu":
        return Device("cpu")
    kind, _, index = value.partition(":")
    if kind in ("gpu", "cuda") and (index == "" or index.isdigit()):
        return Device("gpu", int(index or 0))
    raise OptionError(f"device {text!r} is not understood; use cpu, gpu or gpu:N (e.g. gpu:0)")


def check_dtype(dtype: str, device: Device, impl: str = "fast") -> str:
    if dtype not in DTYPES:
        raise OptionError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if dtype == "int8" and impl != "fast":
        raise OptionError(f"dtype int8 works with impl fast only (PaddleNLP's model has no int8 "
                          f"weights); use impl fast, or --dtype float32 with impl {impl}")
    if device.kind == "cpu" and dtype != "float32" and impl != "fast":
        raise OptionError(f"dtype {dtype} with impl {impl} needs a GPU: Paddle's CPU build has no "
                          f"{dtype} matmul; use --dtype float32 on cpu, or impl fast (stores "
                          f"{dtype}, computes float32)")
    return dtype


def compute_dtype_for(dtype: str, device: Device) -> str:
    """The dtype the arithmetic runs in for weights stored as `dtype`.

    float32 on CPU (Paddle has no half-precision CPU matmul) and on GPUs older than
    compute capability 7.0, such as the P40 (6.1), whose fp16 arithmetic runs at 1/64
    of the fp32 rate: there weights stay float16 (half the memory) and everything
    else runs in float32.  Newer GPUs compute in the stored dtype.
    """
    if dtype in ("float32", "int8") or device.kind == "cpu":  # int8: weights only
        return "float32"
    paddle = import_paddle()
    major, _ = paddle.device.cuda.get_device_capability(device.index)
    return "float32" if major < 7 else dtype


def activate_device(device: Device, dtype: str) -> None:
    """Make `device` Paddle's current device, or explain why it cannot be used."""
    paddle = import_paddle()
    if device.kind == "cpu":
        paddle.set_device("cpu")
        return
    if not paddle.is_compiled_with_cuda():
        raise OptionError(f"device {device} requested but this Paddle build has no CUDA support; "
                          "install paddlepaddle-gpu (see README) or use --device cpu")
    count = paddle.device.cuda.device_count()
    if device.index >= count:
        raise OptionError(f"device {device} does not exist: {count} GPU(s) visible "
                          "(check CUDA_VISIBLE_DEVICES); use gpu:0 to gpu:{count - 1}")
    paddle.set_device(str(device))
    if dtype == "bfloat16":
        major, _ = paddle.device.cuda.get_device_capability(device.index)
        if major < 8:
            raise OptionError(f"dtype bfloat16 needs compute capability 8.0 or newer; {device} has "
                              f"{major}.x: use --dtype float16 or float32")


def available_memory_bytes(device: Device) -> int | None:
    """Memory free for KV caches on `device` now: MemAvailable on CPU, the GPU's free memory
    (NVML) on a GPU; None when it cannot be read."""
    if device.kind == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (driver, library): the caller falls back
        return None
