"""The converter's streaming writers: zero-copy source views, pieces, pdparams written without copies.

A conversion reads its source through read-only file mappings, transposes into reused buffers, and
writes .pdparams opcodes itself so array bytes go straight to the file.  These tests pin what must
not change: the bytes written (identical to the plain ``pickle.dump`` / whole-array path), what every
reader makes of them, the errors for truncated or corrupt sources, and that failures leave nothing.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import builders
import convert.mapping as mapping
import convert.output as output
from convert.cli import main
from convert.filemap import CrcCheck, map_range
from convert.hf import convert_hf
from convert.mapping import is_transposed
from convert.output import OutTensor, write_pdparams_stream, write_safetensors_stream
from convert.sources import read_safetensors_lazy
from convert.tensors import transpose2d, transpose_into
from engine.errors import WeightFileError
from engine.weights import NAME_TABLE, read_pdparams_raw, read_weights, write_safetensors

SMALL_PIECES = 4096  # bytes: every tensor of the tiny model in several pieces, and CRC parts


# ------------------------------------------------------------------ helpers

def _hf_dir(path: Path, source: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny Hugging Face-layout checkpoint (random weights); returns its state in Paddle layout."""
    builders.write_tokenizer(path)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    cfg = builders.tiny_config(330, vocab["<|endoftext|>"])  # lm_head is 84 KB: a large pickle item
    (path / "config.json").write_text(json.dumps(cfg))
    paddle_state = builders.random_state(cfg, seed)
    hf = {n: np.ascontiguousarray(a.T) if a.ndim == 2 and is_transposed(n) else a
          for n, a in paddle_state.items()}
    if source == "safetensors":
        write_safetensors(path / "model.safetensors", hf)
    else:
        torch = pytest.importorskip("torch")
        torch.save({n: torch.from_numpy(a) for n, a in hf.items()}, str(path / "pytorch_model.bin"))
    return paddle_state


@pytest.fixture(scope="module")
def hf_sources(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    base = tmp_path_factory.mktemp("hf-stream")
    return {s: (base / s, _hf_dir(base / s, s)) for s in ("safetensors", "bin")}


def _small_pieces(monkeypatch) -> None:
    monkeypatch.setattr(output, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(mapping, "PIECE_BYTES", SMALL_PIECES)
    monkeypatch.setattr(output, "WRITEBACK_BYTES", 3 * SMALL_PIECES)


def _no_mapping(monkeypatch) -> None:
    """Every source tensor read into memory (the path casts take), for comparison."""
    import convert.sources
    import convert.torch_pickle

    monkeypatch.setattr(convert.sources, "_st_mapper", lambda *a: None)
    monkeypatch.setattr(convert.torch_pickle, "_mapper", lambda *a: None)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def _stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cgconvert-")]


# ------------------------------------------------------------------ transposes, maps, CRC parts

@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (70, 130), (2100, 3), (2500, 70), (64, 64)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16", "float64"])
def test_transpose_into_matches_numpy(shape, dtype):
    a = (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)
    want = np.ascontiguousarray(a.T)
    np.testing.assert_array_equal(transpose2d(a), want)
    panel = np.empty(output.PANEL_BYTES, np.uint8)
    out = np.full(shape[::-1], 7, dtype)
    assert transpose_into(a, out, panel) is out
    np.testing.assert_array_equal(out, want)
    if shape[1] > 4:  # a column slice, as the pieces of a transposed tensor are
        part = np.empty((shape[1] - 4, shape[0]), dtype)
        np.testing.assert_array_equal(transpose_into(a[:, 2:-2], part, panel), want[2:-2])
    with pytest.raises(ValueError, match="needs C-contiguous"):
        transpose_into(a, np.empty(shape, dtype) if shape[0] != shape[1] else np.empty(shape, "i1"))


def test_map_range_and_truncation(tmp_path):
    path = tmp_path / "f.bin"
    data = np.random.default_rng(0).integers(0, 256, 3 * 4096 + 123, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    for offset, n in [(0, 10), (4095, 4099), (5000, 7000), (len(data) - 1, 1), (17, 0)]:
        view = map_range(path, offset, n, "short")
        assert not view.flags.writeable
        np.testing.assert_array_equal(view, data[offset:offset + n])
    with pytest.raises(WeightFileError, match=r"f\.bin: tensor 'x' is short$"):
        map_range(path, 4096, len(data), "tensor 'x' is short")


def test_crc_check_in_parts():
    data = np.frombuffer(b"hello, crc world" * 100, np.uint8)
    import zlib

    good = CrcCheck(data, zlib.crc32(data), "bad")
    for i in range(7):
        good.part(i, 7)
    bad = CrcCheck(data, zlib.crc32(data) ^ 1, "storage 'x' fails its CRC check")
    bad.part(0, 2)
    with pytest.raises(WeightFileError, match="fails its CRC check"):
        bad.part(1, 2)
    with pytest.raises(AssertionError, match="out of order"):
        CrcCheck(data, 0, "bad").part(1, 3)


# ------------------------------------------------------------------ what is written

def _out_tensors(arrays: dict[str, np.ndarray], st_path: Path | None = None) -> list[OutTensor]:
    """OutTensors for `arrays`; those also in the safetensors file `st_path` come in mapped pieces."""
    mapped = read_safetensors_lazy(st_path) if st_path else {}
    out = []
    for name, arr in arrays.items():
        pieces = mapping._mapped_pieces(mapped[name], False, None) if name in mapped else None
        out.append(OutTensor(name, tuple(arr.shape), arr.dtype.name, lambda a=arr: a, pieces))
    return out


def _mixed_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"big": rng.standard_normal((300, 64)).astype(np.float32),  # 76.8 KB: outside frames
            "tiny": np.arange(10, dtype=np.float32),  # 40 bytes: SHORT_BINBYTES
            "mid": rng.standard_normal(1000).astype(np.float32),  # inside a frame
            "bf16": rng.integers(0, 2**16, (130, 300), dtype=np.uint16),
            "half": rng.standard_normal((7, 5)).astype(np.float16),
            "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32),
            "after": rng.standard_normal((20, 1000)).astype(np.float32)}


@pytest.mark.parametrize("pieces", ["default", "small"])
def test_pdparams_bytes_are_what_pickle_writes(tmp_path, monkeypatch, pieces):
    """The hand-written array opcodes are byte for byte numpy's protocol-4 pickle (fast mode)."""
    if pieces == "small":
        _small_pieces(monkeypatch)
    arrays = _mixed_arrays()
    st = tmp_path / "src.safetensors"
    write_safetensors(st, {k: v for k, v in arrays.items() if k in ("big", "bf16", "after")})
    path = tmp_path / "model_state.pdparams"
    write_pdparams_stream(path, _out_tensors(arrays, st))
    want = io.BytesIO()
    pickler = pickle.Pickler(want, protocol=4)  # what the writer did before: the C pickler, no memo
    pickler.fast = True
    pickler.dump({**arrays, NAME_TABLE: {k: k for k in arrays}})
    assert path.read_bytes() == want.getvalue()
    assert not _stream_threads()


def test_pdparams_loads_equal_everywhere(tmp_path):
    """pickle.load, the engine's allow-list reader and (when installed) paddle.load agree."""
    arrays = _mixed_arrays()
    st = tmp_path / "src.safetensors"
    write_safetensors(st, {k: arrays[k] for k in ("big", "after")})
    path = tmp_path / "model_state.pdparams"
    write_pdparams_stream(path, _out_tensors(arrays, st))
    with open(path, "rb") as f:
        loaded = pickle.load(f)  # trusted: written just above
    assert loaded.pop(NAME_TABLE) == {k: k for k in arrays}
    _assert_same(loaded, arrays)
    _assert_same(read_pdparams_raw(path), arrays)
    try:
        import paddle
    except ImportError:
        return
    got = paddle.load(str(path), return_numpy=True)
    _assert_same({k: np.asarray(v) for k, v in got.items() if k != "bf16"},
                 {k: v for k, v in arrays.items() if k != "bf16"})


def test_safetensors_stream_matches_whole_arrays(tmp_path, monkeypatch):
    _small_pieces(monkeypatch)
    arrays = {k: v for k, v in _mixed_arrays().items() if k != "scalar"}
    st = tmp_path / "src.safetensors"
    write_safetensors(st, {k: arrays[k] for k in ("big", "bf16")})
    path = tmp_path / "model.safetensors"
    write_safetensors_stream(path, _out_tensors(arrays, st))
    write_safetensors(tmp_path / "ref.safetensors", arrays)  # the engine's whole-array writer
    assert path.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


@pytest.mark.parametrize("fmt", ["safetensors", "pdparams"])
@pytest.mark.parametrize("source", ["safetensors", "bin"])
def test_from_hf_equals_source_arrays(hf_sources, tmp_path, monkeypatch, source, fmt):
    """Each converted tensor equals its source (transposed where Paddle wants [in, out]), whatever
    the piece size, and the file is the same as the in-memory path writes."""
    src, paddle_state = hf_sources[source]
    default = convert_hf(src, tmp_path / "default", fmt=fmt).weight_file
    with monkeypatch.context() as m:
        _small_pieces(m)
        small = convert_hf(src, tmp_path / "small", fmt=fmt).weight_file
    with monkeypatch.context() as m:
        _no_mapping(m)
        in_memory = convert_hf(src, tmp_path / "in-memory", fmt=fmt).weight_file
    assert _sha(default) == _sha(small) == _sha(in_memory)
    _assert_same(read_weights(default), paddle_state)
    if fmt == "pdparams":
        with open(default, "rb") as f:
            loaded = pickle.load(f)  # trusted: written by the test
        loaded.pop(NAME_TABLE)
        _assert_same(loaded, paddle_state)
    assert not _stream_threads()


# ------------------------------------------------------------------ damaged sources, failed writes

def test_source_truncated_after_its_header_was_read(hf_sources, tmp_path):
    """A file cut short after its index was read: mapping a tensor gives the same clear message as
    reading it (never a SIGBUS), and the tensors still inside the file map fine."""
    from convert.torch_pickle import read_torch_bin

    for source, reader, name in [("safetensors", read_safetensors_lazy, "model.safetensors"),
                                 ("bin", read_torch_bin, "pytorch_model.bin")]:
        path = tmp_path / name
        whole = (hf_sources[source][0] / name).read_bytes()
        path.write_bytes(whole)
        tensors = reader(path)
        path.write_bytes(whole[:len(whole) * 2 // 3])
        outcomes = {}
        for t in tensors.values():
            got = []
            for how in (t.map, t.load):
                try:
                    arr = how()
                    got.append(np.array_equal(getattr(arr, "array", arr), t.load()))
                except WeightFileError as e:
                    got.append(str(e))
            assert got[0] == got[1], t.name
            outcomes[t.name] = got[0]
        assert any(o is True for o in outcomes.values())
        short = [o for o in outcomes.values() if o is not True]
        assert any("file is truncated (" in o and "is short); copy it again" in o for o in short)
        assert all(o.startswith(f"{path}: ") and "\n" not in o for o in short)


@pytest.mark.parametrize("pieces", ["default", "small"])
def test_crc_mismatch_in_a_transposed_storage(hf_sources, tmp_path, monkeypatch, pieces):
    """The zip CRC is still checked (in parts, off the writer's thread): corruption -> one error."""
    from convert.torch_pickle import _TorchUnpickler

    if pieces == "small":
        _small_pieces(monkeypatch)
    src = tmp_path / "src"
    src.mkdir()
    for p in hf_sources["bin"][0].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    weights = src / "pytorch_model.bin"
    with zipfile.ZipFile(weights) as z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        key = _TorchUnpickler(io.BytesIO(z.read(pkl))).load()["lm_head.weight"].storage.key
        info = z.getinfo(pkl[:-len("data.pkl")] + "data/" + key)
    raw = bytearray(weights.read_bytes())
    h = info.header_offset
    start = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30],
                                                                                  "little")
    raw[start + info.file_size - 100] ^= 0x40  # near the end: found by the last CRC part
    weights.write_bytes(bytes(raw))
    res = CliRunner().invoke(main, ["from-hf", str(src), str(tmp_path / "out")])
    assert res.exit_code == 1
    assert f"storage '{key}' fails its CRC check" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not _stream_threads()


@pytest.mark.parametrize("fmt", ["safetensors", "pdparams"])
def test_disk_full_mid_stream_leaves_nothing(hf_sources, tmp_path, monkeypatch, fmt):
    _small_pieces(monkeypatch)
    calls = []
    real = output._write_array

    def fills_up(f, arr):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(f, arr)

    monkeypatch.setattr(output, "_write_array", fills_up)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["from-hf", str(hf_sources["bin"][0]), str(out), "--format", fmt])
    assert res.exit_code == 1
    assert "No space left on device" in res.output and len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert not _stream_threads()


@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
def test_paddlenlp_from_pretrained_loads_the_conversion(hf_sources, tmp_path, fmt):
    pytest.importorskip("paddle")
    tr = pytest.importorskip("paddlenlp.transformers")
    src, paddle_state = hf_sources["bin"]
    dst = tmp_path / "out"
    convert_hf(src, dst, fmt=fmt)
    model = tr.CodeGenForCausalLM.from_pretrained(str(dst))
    _assert_same({k: v.numpy() for k, v in model.state_dict().items()}, paddle_state)
