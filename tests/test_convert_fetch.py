"""cgconvert fetch against a local HTTP server on loopback (Range requests, interruptions)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import builders
from loopback import FakeMirror, closed_port
from convert.cli import main
from convert.fetch import FETCH_FILES, fetch_variant

WEIGHTS = "model_state.pdparams"


@pytest.fixture(scope="module")
def served_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("upstream")
    builders.write_model_dir(d, legacy=True)
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(files) == sorted(FETCH_FILES)
    return files


@pytest.fixture
def mirror(served_files):
    m = FakeMirror(dict(served_files))
    yield m
    m.close()


def _fetch(mirror, dest: Path, *extra: str):
    return CliRunner().invoke(main, ["fetch", "tiny", str(dest), "--base-url", mirror.url, *extra])


def test_fetch_complete(mirror, served_files, tmp_path):
    dest = tmp_path / "codegen-tiny"
    res = _fetch(mirror, dest)
    assert res.exit_code == 0, res.output
    assert "result: OK" in res.output
    for name, body in served_files.items():
        assert (dest / name).read_bytes() == body
    assert not list(dest.glob("*.part"))
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["variant"] == "codegen-tiny"
    assert manifest["files"][WEIGHTS] == {"bytes": len(served_files[WEIGHTS]),
                                          "sha256": hashlib.sha256(served_files[WEIGHTS]).hexdigest()}
    assert json.loads((dest / "config.json").read_text())["n_layer"] == 2  # derived config
    assert all(rng is None for _, rng in mirror.requests)


def test_interrupted_download_resumes(mirror, served_files, tmp_path):
    dest = tmp_path / "d"
    mirror.cut_after[WEIGHTS] = 200_000
    res = _fetch(mirror, dest)
    assert res.exit_code == 1
    assert "interrupted at 200,000 of" in res.output and "run the same command again" in res.output
    assert not (dest / WEIGHTS).exists()
    assert (dest / f"{WEIGHTS}.part").stat().st_size == 200_000
    assert not (dest / "manifest.json").exists()

    mirror.requests.clear()
    res = _fetch(mirror, dest)
    assert res.exit_code == 0, res.output
    assert (WEIGHTS, "bytes=200000-") in mirror.requests
    assert [n for n, _ in mirror.requests] == [WEIGHTS]  # complete files are not fetched again
    assert (dest / WEIGHTS).read_bytes() == served_files[WEIGHTS]
    assert not (dest / f"{WEIGHTS}.part").exists()
    assert "resumed at 200,000 bytes" in res.output
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["files"][WEIGHTS]["sha256"] == hashlib.sha256(served_files[WEIGHTS]).hexdigest()


def test_server_without_range_support_restarts(mirror, served_files, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / f"{WEIGHTS}.part").write_bytes(b"garbage that must not survive")
    mirror.ignore_range = True
    res = _fetch(mirror, dest)
    assert res.exit_code == 0, res.output
    assert (dest / WEIGHTS).read_bytes() == served_files[WEIGHTS]


def test_part_already_complete(mirror, served_files, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / f"{WEIGHTS}.part").write_bytes(served_files[WEIGHTS])
    res = _fetch(mirror, dest)
    assert res.exit_code == 0, res.output
    assert (dest / WEIGHTS).read_bytes() == served_files[WEIGHTS]


def test_progress_reported(mirror, served_files, tmp_path):
    seen: list[tuple[str, int, int | None]] = []
    fetch_variant("tiny", tmp_path / "d", mirror.url, progress=lambda *a: seen.append(a))
    last = [s for s in seen if s[0] == WEIGHTS][-1]
    assert last == (WEIGHTS, len(served_files[WEIGHTS]), len(served_files[WEIGHTS]))


def test_missing_file_on_mirror(mirror, tmp_path):
    del mirror.files["vocab.json"]
    res = _fetch(mirror, tmp_path / "d")
    assert res.exit_code == 1
    assert "HTTP 404" in res.output and "--base-url" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_damaged_download_is_flagged_by_inspect(mirror, served_files, tmp_path):
    mirror.files[WEIGHTS] = served_files[WEIGHTS][:-1000]  # a mirror holding a truncated copy
    res = _fetch(mirror, tmp_path / "d")
    assert res.exit_code == 1 and "bad-weights" in res.output


def test_unknown_variant_and_unreachable_server(tmp_path):
    res = CliRunner().invoke(main, ["fetch", "350M-mnoo", str(tmp_path / "d")])
    assert res.exit_code == 1 and "did you mean '350M-mono'" in res.output
    res = CliRunner().invoke(main, ["fetch", "tiny", str(tmp_path / "d"), "--base-url",
                                    f"http://127.0.0.1:{closed_port()}", "--timeout", "5"])
    assert res.exit_code == 1 and "cannot download" in res.output
