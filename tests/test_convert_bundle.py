"""cgconvert bundle / verify on a stand-in checkout, hand-made wheels and a loopback model mirror.

These run in seconds and offline (pip with --no-index and --find-links); the real wheel set from
PyPI is built, installed and run once in test_bundle_full.py (--bundle-full).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import builders
from bundle_fakes import (BASE_PYTHON, make_project, make_wheel, make_wheelhouse,
                          no_network_prefix, offline_env)
from convert.bundle_layout import files_in, read_sums
from convert.cli import main
from convert.wheels import expand_platform
from convert import bundle as bundle_module
from loopback import FakeIndex, FakeMirror

WEIGHTS = "model_state.pdparams"
TINY = "models/codegen-tiny"


@pytest.fixture(scope="module")
def served_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("upstream")
    builders.write_model_dir(d, legacy=True)
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture
def mirror(served_files):
    m = FakeMirror(dict(served_files))
    yield m
    m.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inputs")
    return {"project": make_project(base / "project"),
            "native_project": make_project(base / "native", ("fakenative==1.0",)),
            "wheels": make_wheelhouse(base / "wheelhouse")}


def bundle(inputs, dest: Path, *extra: str, mirror: FakeMirror | None = None,
           project: str = "project"):
    args = ["bundle", str(dest), "--no-index", "--find-links", str(inputs["wheels"]),
            "--project", str(inputs[project]), *extra]
    if mirror is not None:
        args += ["--variant", "tiny", "--base-url", mirror.url]
    return CliRunner().invoke(main, args)


def verify(dest: Path, *extra: str):
    return CliRunner().invoke(main, ["verify", str(dest), *extra])


@pytest.fixture(scope="module")
def made(inputs, served_files, tmp_path_factory) -> Path:
    """One finished bundle (fake wheels + the tiny model); tests that change it work on a copy."""
    m = FakeMirror(dict(served_files))
    try:
        dest = tmp_path_factory.mktemp("made") / "bundle"
        res = bundle(inputs, dest, mirror=m)
        assert res.exit_code == 0, res.output
    finally:
        m.close()
    return dest


@pytest.fixture
def copy(made, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(made, dest)
    return dest


def _problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith("result:")]


def test_bundle_contents(made, served_files):
    names = set(files_in(made))
    assert {"README.txt", "install.sh", "requirements.lock", "bundle.json", "Dockerfile",
            "wheels/fakebench-0.1.0-py3-none-any.whl", "wheels/fakecpu-2.0-py3-none-any.whl",
            "wheels/fakedep-1.0-py3-none-any.whl", f"{TINY}/{WEIGHTS}",
            f"{TINY}/manifest.json", f"{TINY}/config.json"} <= names
    assert not any(n.startswith(".partial") or n.endswith((".part", ".tmp")) for n in names)
    assert set(read_sums(made)) == names  # every file but SHA256SUMS itself
    assert (made / f"{TINY}/{WEIGHTS}").read_bytes() == served_files[WEIGHTS]
    lock = (made / "requirements.lock").read_text().splitlines()[1:]
    assert [line.split(" ")[0] for line in lock] == ["fakebench==0.1.0", "fakecpu==2.0",
                                                      "fakedep==1.0"]
    assert all("--hash=sha256:" in line for line in lock)
    state = json.loads((made / "bundle.json").read_text())
    assert state["target"] == {"name": "cpu", "python": "3.11", "platform": "manylinux2014_x86_64"}
    assert state["models"]["codegen-tiny"]["variant"] == "codegen-tiny"
    assert {w["name"]: w["source"] for w in state["wheels"]} == {
        "fakebench": "built", "fakecpu": "given", "fakedep": "given"}
    readme = (made / "README.txt").read_text()
    assert "3 wheels" in readme and "models/codegen-tiny/" in readme and "sh install.sh" in readme
    assert "paddlepaddle.org.cn" in readme  # where Paddle's GPU wheels are
    assert os.access(made / "install.sh", os.X_OK)
    if shutil.which("sha256sum"):  # the file is in sha256sum's own format
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=made, check=True)


def test_verify_ok(made):
    res = verify(made)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == ("result: OK (19 files, 3 wheels, 1 model(s): codegen-tiny)")


def test_install_with_no_network(made, tmp_path):
    venv = tmp_path / "venv"
    run = subprocess.run([*no_network_prefix(), "sh", str(made / "install.sh"), str(venv)],
                         env=offline_env(PYTHON=BASE_PYTHON), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "every file matches SHA256SUMS" in run.stdout
    out = subprocess.run([str(venv / "bin/python"), "-c",
                          "import fakebench, fakecpu, fakedep; print(fakebench.VALUE)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr


def test_install_refuses_a_damaged_copy(copy, tmp_path):
    _flip_byte(copy / "wheels/fakedep-1.0-py3-none-any.whl")
    venv = tmp_path / "venv"
    run = subprocess.run(["sh", str(copy / "install.sh"), str(venv)],
                         env=offline_env(PYTHON=BASE_PYTHON), capture_output=True, text=True)
    assert run.returncode == 1
    assert "fakedep-1.0-py3-none-any.whl: checksum mismatch" in run.stderr
    assert "nothing was installed" in run.stderr and not venv.exists()


def _flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["wheels/fakecpu-2.0-py3-none-any.whl", f"{TINY}/{WEIGHTS}",
                                    "requirements.lock"])
def test_verify_names_a_flipped_byte(copy, victim):
    _flip_byte(copy / victim, at=min(100, (copy / victim).stat().st_size - 1))
    res = verify(copy, "--no-install-check")
    assert res.exit_code == 1
    problems = _problems(res.output)
    assert problems[0] == (f"{victim}: checksum mismatch: damaged in copying or since; fix: copy it "
                           "again from the bundle on the connected machine (there, `cgconvert "
                           "bundle` with the same options fetches a damaged file again)")


def test_verify_missing_extra_and_leftover_files(copy):
    (copy / "wheels/fakedep-1.0-py3-none-any.whl").unlink()
    (copy / "notes.txt").write_text("mine")
    (copy / TINY / f"{WEIGHTS}.part").write_bytes(b"half")
    res = verify(copy)
    assert res.exit_code == 1
    problems = _problems(res.output)
    assert "wheels/fakedep-1.0-py3-none-any.whl: missing (copied only in part?); fix: copy it again" \
        in problems[0]
    assert any(p.startswith("notes.txt: not part of the bundle") and "remove it" in p
               for p in problems)
    assert any(p.startswith(f"{TINY}/{WEIGHTS}.part: left by an interrupted") for p in problems)
    assert any(p.startswith("requirements.lock: pip cannot install the wheel set here")
               and "fakedep" in p for p in problems)  # the set is incomplete without it


def test_interrupted_bundle_resumes(inputs, mirror, served_files, tmp_path):
    dest = tmp_path / "b"
    mirror.cut_after[WEIGHTS] = 200_000
    res = bundle(inputs, dest, mirror=mirror)
    assert res.exit_code == 1
    assert "interrupted at 200,000 of" in res.output and "run the same command again" in res.output
    assert not (dest / "SHA256SUMS").exists()  # not finished
    res = verify(dest, "--no-install-check")
    assert res.exit_code == 1
    problems = _problems(res.output)
    assert problems[0].startswith("SHA256SUMS: missing: the bundle was not finished")
    wheel = dest / "wheels/fakedep-1.0-py3-none-any.whl"
    before = wheel.stat()

    mirror.requests.clear()
    res = bundle(inputs, dest, mirror=mirror)
    assert res.exit_code == 0, res.output
    assert [r for r in mirror.requests] == [(WEIGHTS, "bytes=200000-")]  # only the rest
    assert "0 fetched now" in res.output  # no wheel copied twice
    assert wheel.stat().st_ino == before.st_ino and wheel.stat().st_mtime_ns == before.st_mtime_ns
    assert (dest / TINY / WEIGHTS).read_bytes() == served_files[WEIGHTS]
    assert verify(dest).exit_code == 0


def test_rerun_fetches_damaged_files_again(inputs, mirror, served_files, copy):
    _flip_byte(copy / "wheels/fakecpu-2.0-py3-none-any.whl")
    _flip_byte(copy / TINY / WEIGHTS)
    res = bundle(inputs, copy, mirror=mirror)
    assert res.exit_code == 0, res.output
    assert "wheels/fakecpu-2.0-py3-none-any.whl: damaged" in res.output
    assert "1 fetched now" in res.output
    assert [name for name, _ in mirror.requests] == [WEIGHTS]
    assert (copy / TINY / WEIGHTS).read_bytes() == served_files[WEIGHTS]
    assert verify(copy).exit_code == 0


def test_no_wheel_for_the_target(inputs, tmp_path):
    dest = tmp_path / "b"
    res = bundle(inputs, dest, "--python", "3.13", project="native_project")
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("Error: fakenative==1.0: no wheel for target cpu, Python 3.13 (cp313)")
    assert "pass --wheel FILE" in line
    assert not dest.exists()  # a failed resolution writes nothing


def test_wheel_for_another_python(inputs, tmp_path):
    dest = tmp_path / "b"
    res = bundle(inputs, dest, "--python", "3.12", project="native_project")
    assert res.exit_code == 0, res.output
    assert (dest / "wheels/fakenative-1.0-cp312-cp312-manylinux2014_x86_64.whl").is_file()
    res = verify(dest)  # this interpreter is 3.11
    assert res.exit_code == 1
    problems = _problems(res.output)
    assert len(problems) == 1
    assert problems[0].startswith("wheels/fakenative-1.0-cp312-cp312-manylinux2014_x86_64.whl: "
                                  "does not install on this interpreter (Python 3.11")
    assert "--python 3.11" in problems[0]
    run = subprocess.run(["sh", str(dest / "install.sh"), str(tmp_path / "venv")],
                         env=offline_env(PYTHON=BASE_PYTHON), capture_output=True, text=True)
    assert run.returncode == 1
    assert "this bundle's wheels are for Python 3.12: set PYTHON=/path/to/python3.12" in run.stderr


def test_gpu_target_needs_a_paddle_wheel(inputs, tmp_path):
    dest = tmp_path / "b"
    res = bundle(inputs, dest, "--target", "gpu")
    assert res.exit_code == 1
    assert "Paddle's GPU wheels are not on PyPI" in res.output and "--wheel FILE" in res.output
    assert not dest.exists()
    paddle = make_wheel(tmp_path / "mine", "paddlepaddle-gpu", "3.3.1")
    res = bundle(inputs, dest, "--target", "gpu", "--wheel", str(paddle))
    assert res.exit_code == 0, res.output
    wheels = {w["name"]: w for w in json.loads((dest / "bundle.json").read_text())["wheels"]}
    assert wheels["paddlepaddle-gpu"]["source"] == "given"
    assert wheels["paddlepaddle-gpu"]["url"] == paddle.resolve().as_uri()
    assert "fakecpu" not in wheels
    res = bundle(inputs, dest)  # the cpu target into the gpu bundle
    assert res.exit_code == 1 and "holds a bundle for target gpu" in res.output


def test_full_disk_leaves_nothing_half_written(inputs, made, tmp_path, monkeypatch):
    dest = tmp_path / "b"
    shutil.copytree(made, dest)
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".SHA256SUMS."):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = bundle(inputs, dest, "--variant", "tiny")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        f"Error: {dest}/SHA256SUMS: writing failed (No space left on device); check free space "
        "and permissions, the old file (if any) is untouched")
    assert not (dest / "SHA256SUMS").exists()
    assert not [n for n in files_in(dest) if n.endswith(".tmp")]
    monkeypatch.undo()
    res = bundle(inputs, dest)
    assert res.exit_code == 0, res.output
    assert verify(dest).exit_code == 0


@pytest.mark.parametrize("args,message", [
    (["--python", "3"], "--python 3: give the target's Python as MAJOR.MINOR"),
    (["--platform", "Linux x86"], "--platform Linux x86: not a pip platform tag"),
    (["--variant", "350M-mnoo"], "did you mean '350M-mono'"),
])
def test_bad_options(inputs, tmp_path, args, message):
    res = bundle(inputs, tmp_path / "b", *args)
    assert res.exit_code == 1 and message in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_refuses_a_directory_that_is_not_a_bundle(inputs, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "photo.jpg").write_bytes(b"x")
    res = bundle(inputs, tmp_path / "b")
    assert res.exit_code == 1 and "not empty and not a bundle" in res.output


def test_verify_something_that_is_not_a_bundle(tmp_path):
    res = verify(tmp_path)
    assert res.exit_code == 1
    problems = _problems(res.output)
    assert problems[0].startswith("bundle.json: missing:") and problems[1].startswith("SHA256SUMS: missing")
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "nope")]).exit_code == 2


def test_expand_platform():
    tags = expand_platform("manylinux2014_x86_64")
    assert tags[:2] == ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
    assert "manylinux1_x86_64" in tags and tags[-1] == "linux_x86_64"
    assert "manylinux_2_28_x86_64" not in tags
    assert expand_platform("manylinux_2_28_aarch64")[0] == "manylinux_2_28_aarch64"
    assert expand_platform("win_amd64") == ("win_amd64",)


def test_a_model_with_problems_leaves_the_bundle_unfinished(inputs, mirror, served_files, tmp_path):
    mirror.files[WEIGHTS] = served_files[WEIGHTS][:-1000]  # a mirror holding a truncated copy
    dest = tmp_path / "b"
    res = bundle(inputs, dest, mirror=mirror)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert any(line.startswith(f"{TINY}/{WEIGHTS}: ") and "fix:" in line for line in lines)
    assert lines[-1].startswith(f"Error: {dest}: not finished (")
    assert not (dest / "SHA256SUMS").exists()


def test_wheels_from_an_http_index_survive_an_interruption(inputs, tmp_path, monkeypatch):
    index = FakeIndex(sorted(inputs["wheels"].glob("*.whl")))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))  # this test's own cache
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setattr(bundle_module, "DOWNLOAD_BATCH", 1)
    dest = tmp_path / "b"
    args = ["bundle", str(dest), "--index-url", f"{index.url}/simple", "--project",
            str(inputs["project"])]
    real_download, calls = bundle_module.download, []

    def download(batch, *args, **kwargs):  # the connection drops in the first run's download
        calls.append([w.name for w in batch])
        if calls == [["fakecpu"], ["fakedep"]]:
            index.broken.add("fakedep-1.0-py3-none-any.whl")
        return real_download(batch, *args, **kwargs)

    monkeypatch.setattr(bundle_module, "download", download)
    try:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1
        last = res.output.strip().splitlines()[-1]
        assert last.startswith("Error: pip failed while downloading 1 wheel(s): ")
        assert last.endswith("then run the same command again")
        assert (dest / "wheels/fakecpu-2.0-py3-none-any.whl").is_file()  # its batch was complete
        assert not (dest / "wheels/fakedep-1.0-py3-none-any.whl").exists()
        assert not (dest / "SHA256SUMS").exists()
        wheels = {w["name"]: w for w in json.loads((dest / "bundle.json").read_text())["wheels"]}
        assert wheels["fakedep"]["url"] == f"{index.url}/files/fakedep-1.0-py3-none-any.whl"

        index.broken.clear()
        index.requests.clear()
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert index.requests == ["/files/fakedep-1.0-py3-none-any.whl"]  # no new resolution
        assert calls[-1] == ["fakedep"]
        assert "1 fetched now" in res.output
        assert verify(dest).exit_code == 0
    finally:
        index.close()


def test_the_project_packages_come_from_setup_cfg_find_or_list(tmp_path):
    from convert.bundle import BundleError
    from convert.wheels import project_packages

    for name in ("engine", "serve"):
        (tmp_path / name).mkdir()
    (tmp_path / "setup.cfg").write_text("[options]\npackages = find:\n\n[options.packages.find]\n"
                                       "include = engine, engine.*, serve, serve.*\n")
    assert project_packages(tmp_path) == ["engine", "serve"]
    (tmp_path / "setup.cfg").write_text("[options]\npackages = engine, serve, bench\n")
    with pytest.raises(BundleError, match="bench"):
        project_packages(tmp_path)
