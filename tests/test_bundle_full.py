"""The real thing, once: a cpu bundle of this checkout (its full wheel set, ~400 MB, from the
package index, which pip's cache makes cheaper the second time) with the tiny model from a
loopback mirror, installed into a fresh venv with no network, then the engine run on the model.

Runs only with ``pytest --bundle-full`` (the README's test command and CI pass it): a few minutes.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import builders
from convert.cli import main
from loopback import FakeMirror
from bundle_fakes import BASE_PYTHON, no_network_prefix, offline_env

pytestmark = pytest.mark.bundle_full
ROOT = Path(__file__).resolve().parent.parent
TINY = "models/codegen-tiny"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    d = tmp_path_factory.mktemp("upstream")
    builders.write_model_dir(d, legacy=True)
    m = FakeMirror({p.name: p.read_bytes() for p in d.iterdir()})
    yield m
    m.close()


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory, mirror) -> Path:
    dest = tmp_path_factory.mktemp("full") / "bundle"
    res = CliRunner().invoke(main, ["bundle", str(dest), "--project", str(ROOT), "--target", "cpu",
                                    "--variant", "tiny", "--base-url", mirror.url])
    assert res.exit_code == 0, res.output
    return dest


@pytest.fixture(scope="module")
def installed(full_bundle, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "cgw"
    run = subprocess.run([*no_network_prefix(), "sh", str(full_bundle / "install.sh"), str(venv)],
                         env=offline_env(PYTHON=BASE_PYTHON), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return venv


def test_the_pinned_set(full_bundle):
    state = json.loads((full_bundle / "bundle.json").read_text())
    pins = {w["name"]: w["version"] for w in state["wheels"]}
    assert pins["codegen-workbench"] == "0.1.0" and pins["paddlepaddle"] == "3.3.1"
    assert pins["paddlenlp"] == "3.0.0b4" and pins["numpy"] == "1.26.4"
    assert pins["aistudio-sdk"] == "0.2.4"
    assert pins["seqeval"] == "1.2.2"  # built from its source, not an old release that has a wheel
    assert "torch" not in pins and "paddlepaddle-gpu" not in pins
    lock = (full_bundle / "requirements.lock").read_text()
    assert lock.count("--hash=sha256:") == len(pins)


def test_engine_runs_from_the_offline_install(installed, full_bundle):
    run = subprocess.run([*no_network_prefix(), str(installed / "bin/python"), "-m", "engine",
                          str(full_bundle / TINY), "--prompt", "def add(a, b):",
                          "--max-new-tokens", "4"],
                         env=offline_env(), capture_output=True, text=True, timeout=300,
                         cwd=installed)  # not the checkout: `-m engine` must find the installed one
    assert run.returncode == 0, run.stderr[-3000:]
    assert "completion_tokens=4" in run.stderr and "model=" in run.stderr
    run = subprocess.run([str(installed / "bin/python"), "-c", "import paddlenlp, engine, serve, "
                          "bench, convert; print(engine.__file__)"], env=offline_env(),
                         capture_output=True, text=True, timeout=300, cwd=installed)
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(installed) in run.stdout  # the installed workbench, not this checkout


def test_verify_from_the_offline_install(installed, full_bundle):
    run = subprocess.run([*no_network_prefix(), str(installed / "bin/cgconvert"), "verify",
                          str(full_bundle)], env=offline_env(), capture_output=True, text=True,
                         timeout=300, cwd=installed)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().startswith("result: OK")


def test_rerun_downloads_nothing_twice(full_bundle, mirror):
    victim = next((full_bundle / "wheels").glob("tornado-*.whl"))
    victim.unlink()
    mirror.requests.clear()
    res = CliRunner().invoke(main, ["bundle", str(full_bundle), "--variant", "tiny",
                                    "--base-url", mirror.url])
    assert res.exit_code == 0, res.output
    assert "1 fetched now" in res.output and victim.is_file()
    assert mirror.requests == []  # every model file was complete
