"""Process-level behaviour of the engine: threads, signals, CPU settings, devices."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from engine import OptionError
from engine.runtime import check_dtype, compute_dtype_for, parse_device

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_load_in_one_thread_generate_in_others():
    proc = run_script("""
        import threading
        from engine import load, SamplingParams
        box = {}
        t = threading.Thread(target=lambda: box.update(gen=load("random:tiny")))
        t.start(); t.join()
        out = []
        w = threading.Thread(target=lambda: out.append(box["gen"].generate("a", SamplingParams(max_new_tokens=3))))
        w.start(); w.join()
        out.append(box["gen"].generate("b", SamplingParams(max_new_tokens=3)))
        print("tokens", [r.completion_tokens for r in out])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokens [3, 3]" in proc.stdout


def test_sigterm_handler_survives_loading():
    proc = run_script("""
        import os, signal, time
        ran = []
        signal.signal(signal.SIGTERM, lambda *a: ran.append(1))
        from engine import load
        load("random:tiny")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        print("handled", len(ran))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "handled 1" in proc.stdout


def test_cpu_settings_are_applied_and_reported():
    proc = run_script("""
        import os
        os.environ.pop("OMP_NUM_THREADS", None)
        from engine.runtime import import_paddle, applied_settings
        import_paddle()
        print(sorted(applied_settings()), os.environ["OMP_NUM_THREADS"])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OMP_NUM_THREADS" in proc.stdout
    assert "WISELY" not in proc.stderr  # Paddle's warning about the variable is not shown


@pytest.mark.parametrize("text,expected", [("cpu", "cpu"), ("gpu", "gpu:0"), ("GPU:1", "gpu:1"),
                                           ("cuda:2", "gpu:2")])
def test_parse_device(text, expected):
    assert str(parse_device(text)) == expected


@pytest.mark.parametrize("text", ["gpu:x", "tpu", "", "gpu:-1"])
def test_bad_device(text):
    with pytest.raises(OptionError, match="device"):
        parse_device(text)


def test_half_precision_on_cpu_only_as_storage():
    with pytest.raises(OptionError, match="needs a GPU"):
        check_dtype("bfloat16", parse_device("cpu"), impl="reference")
    assert check_dtype("float16", parse_device("cpu"), impl="fast") == "float16"
    assert check_dtype("float16", parse_device("gpu:0"), impl="reference") == "float16"
    assert compute_dtype_for("float16", parse_device("cpu")) == "float32"

