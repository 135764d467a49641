"""Fixtures: tiny CodeGen model directories built on the fly (no downloads)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests import `builders` and run from a source tree too
sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import builders  # noqa: E402


PROJECT_SETTINGS = ("CGSERVE_", "CGBENCH_")  # the commands' environment variables


@pytest.fixture(scope="session", autouse=True)
def isolated_env():
    """The tests run without the commands' settings from the environment they were started in
    (a developer's CGSERVE_PREFIX_CACHE_MB, a CGBENCH_FAULT left exported, ...).  Session
    scope, so the session- and module-scoped fixtures (servers, sweeps) run without them too;
    what a test sets itself goes through monkeypatch or CliRunner(env=...)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(PROJECT_SETTINGS)]:
            patch.delenv(key)
        yield


def pytest_addoption(parser):
    parser.addoption("--bundle-full", action="store_true",
                     help="also build, install and run a full cpu bundle (tests marked bundle_full: "
                          "~400 MB of wheels from the package index, a few minutes)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bundle-full"):
        return
    skip = pytest.mark.skip(reason="the full wheel-set bundle runs with --bundle-full")
    for item in items:
        if "bundle_full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """The same tiny random model in three layouts: modern pdparams, legacy, safetensors."""
    base = tmp_path_factory.mktemp("models")
    dirs = {"modern": base / "modern", "legacy": base / "legacy", "safetensors": base / "st"}
    builders.write_model_dir(dirs["modern"])
    builders.write_model_dir(dirs["legacy"], legacy=True)
    builders.write_model_dir(dirs["safetensors"], fmt="safetensors")
    return dirs


@pytest.fixture(scope="session")
def tiny_gen(model_dirs):
    """The tiny BPE model on the engine's default (fast) forward."""
    from engine import load

    return load(model_dirs["modern"])


@pytest.fixture(scope="session")
def ref_gen(model_dirs):
    """The same model on PaddleNLP's CodeGenForCausalLM: the reference."""
    from engine import load

    return load(model_dirs["modern"], impl="reference")


@pytest.fixture(scope="session")
def random_tiny():
    from engine import load

    return load("random:tiny")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def captured(monkeypatch):
    """cgserve's server replaced by a recorder of the config it would have run with."""
    import serve.server

    seen = {}

    def fake_run(config, loader):
        seen["config"] = config
        return 0

    monkeypatch.setattr(serve.server, "run", fake_run)
    return seen
