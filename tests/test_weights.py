"""Tests for engine.weights: safe .pdparams / .safetensors reading and atomic writing."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from engine import weights as W
from engine.errors import WeightFileError
from engine.weights import (NAME_TABLE, SPLIT_TABLE, TensorInfo, describe_weights, read_pdparams,
                            read_safetensors, read_weights, write_pdparams, write_safetensors)

TINY = dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, vocab_size=300, n_positions=64)


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4)).astype(np.float32),
            "h": rng.standard_normal(5).astype(np.float16),
            "d": rng.standard_normal(3),
            "i": np.arange(6, dtype=np.int64).reshape(2, 3),
            "j": np.array([-3, 7], np.int32), "q": np.array([-3, 7], np.int8),
            "u": np.array([0, 255], np.uint8), "b": np.array([True, False]),
            "s": np.array(2.5, np.float32), "e": np.zeros((0, 3), np.float32)}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


def _raw_st(path: Path, header: dict, data: bytes, hlen: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) if hlen is None else hlen).to_bytes(8, "little") + raw + data)
    return path


# ---------------------------------------------------------------- round trips

def test_pdparams_round_trip_and_paddle_load(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    p = tmp_path / "model_state.pdparams"
    write_pdparams(p, _sample())
    _assert_same(read_pdparams(p), _sample())
    _assert_same(read_weights(p), _sample())
    loaded = paddle.load(str(p), return_numpy=True)
    _assert_same({k: np.asarray(v) for k, v in loaded.items()}, _sample())
    assert os.listdir(tmp_path) == ["model_state.pdparams"]


def test_safetensors_round_trip_and_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file
    p = tmp_path / "model.safetensors"
    write_safetensors(p, _sample(), metadata={"note": "x"})
    _assert_same(read_safetensors(p), _sample())
    _assert_same(read_weights(p), _sample())
    _assert_same(load_file(str(p)), _sample())
    with st.safe_open(str(p), framework="np") as f:
        assert f.metadata() == {"format": "np", "note": "x"}
    info = describe_weights(p)
    assert info["i"] == TensorInfo("i", (2, 3), "int64") and info["b"].dtype == "bool"


# ---------------------------------------------------------------- files written by Paddle

@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_save_state_dict(tmp_path: Path, protocol: int) -> None:
    paddle = pytest.importorskip("paddle")
    lin = paddle.nn.Linear(3, 2)
    p = tmp_path / "lin.pdparams"
    paddle.save(lin.state_dict(), str(p), protocol=protocol)
    assert NAME_TABLE.encode() in p.read_bytes()
    got = read_pdparams(p)
    _assert_same(got, {k: v.numpy() for k, v in lin.state_dict().items()})
    assert describe_weights(p)["weight"] == TensorInfo("weight", (3, 2), "float32")


def test_paddle_generic_pickler_tuples(tmp_path: Path) -> None:
    """Paddle's generic pickler writes tensors as builtins.tuple((param_name, ndarray))."""
    paddle = pytest.importorskip("paddle")
    from paddle.framework.io import _pickle_save
    lin = paddle.nn.Linear(3, 2)
    p = tmp_path / "lin.pdparams"
    with open(p, "wb") as f:
        _pickle_save(lin.state_dict(), f, 4)
    assert b"builtins" in p.read_bytes() and b"OrderedDict" in p.read_bytes()
    _assert_same(read_pdparams(p), {k: v.numpy() for k, v in lin.state_dict().items()})


class _FakeDtype:
    itemsize = 2**28  # makes Paddle's split threshold (2**30 - 1) // itemsize == 3 elements


class _LooksBig(np.ndarray):
    @property
    def dtype(self):  # type: ignore[override]
        return _FakeDtype


def test_split_big_params_from_paddle_code(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    from paddle.framework.io_utils import _unpack_saved_dict
    w = np.arange(10, dtype=np.float32).reshape(2, 5)
    b = np.ones(2, np.float32)
    saved = _unpack_saved_dict({"w": w.view(_LooksBig), "b": b, NAME_TABLE: {"w": "w0", "b": "b0"}}, 2)
    assert saved[SPLIT_TABLE]["w"]["slices"] == ["w@@.0", "w@@.1", "w@@.2", "w@@.3"]
    saved = {k: np.asarray(v) if isinstance(v, np.ndarray) else v for k, v in saved.items()}
    p = tmp_path / "big.pdparams"
    p.write_bytes(pickle.dumps(saved, protocol=2))
    got = read_pdparams(p)
    _assert_same(got, {"w": w, "b": b})
    _assert_same({k: np.asarray(v) for k, v in paddle.load(str(p), return_numpy=True).items()}, got)


def test_split_table_malformed(tmp_path: Path) -> None:
    flat = np.arange(6, dtype=np.float32)
    good = {"w@@.0": flat[:4], "w@@.1": flat[4:],
            SPLIT_TABLE: {"w": {"OriginShape": (2, 3), "slices": ["w@@.0", "w@@.1"]}}}
    p = tmp_path / "s.pdparams"
    p.write_bytes(pickle.dumps(good, protocol=2))
    np.testing.assert_array_equal(read_pdparams(p)["w"], flat.reshape(2, 3))
    assert list(read_pdparams(p)) == ["w"]
    del good["w@@.1"]
    p.write_bytes(pickle.dumps(good, protocol=2))
    with pytest.raises(WeightFileError, match=r"split tensor 'w' is incomplete"):
        read_pdparams(p)


def _tiny_model(dtype: str = "float32"):
    pytest.importorskip("paddle")
    tr = pytest.importorskip("paddlenlp.transformers")
    model = tr.CodeGenForCausalLM(tr.CodeGenConfig(**TINY))
    if dtype != "float32":
        model.to(dtype=dtype)
    return model


def test_save_pretrained_tiny_codegen(tmp_path: Path) -> None:
    model = _tiny_model()
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    assert len(want) == 5 + 8 * TINY["n_layer"]
    model.save_pretrained(str(tmp_path / "pd"))
    assert sorted(os.listdir(tmp_path / "pd")) == ["config.json", "generation_config.json",
                                                   "model_state.pdparams"]
    _assert_same(read_weights(tmp_path / "pd" / "model_state.pdparams"), want)
    model.save_pretrained(str(tmp_path / "st"), safe_serialization=True)
    st = tmp_path / "st" / "model.safetensors"
    _assert_same(read_weights(st), want)
    info = describe_weights(st)
    assert {k: (i.shape, i.dtype) for k, i in info.items()} == \
        {k: (v.shape, "float32") for k, v in want.items()}


def test_save_pretrained_bf16_is_uint16(tmp_path: Path) -> None:
    model = _tiny_model("bfloat16")
    want = {k: v.astype("float32").numpy() for k, v in model.state_dict().items()}
    model.save_pretrained(str(tmp_path / "pd"))
    model.save_pretrained(str(tmp_path / "st"), safe_serialization=True)
    pd, st = tmp_path / "pd" / "model_state.pdparams", tmp_path / "st" / "model.safetensors"
    raw = pickle.loads(pd.read_bytes())  # trusted: we just wrote it
    assert raw["lm_head.weight"].dtype == np.uint16  # how Paddle stores bf16
    assert b'"U16"' in st.read_bytes()[:4096]
    for path in (pd, st):
        _assert_same(read_weights(path), want)
        assert describe_weights(path)["lm_head.weight"].dtype == "bfloat16"


# ---------------------------------------------------------------- bfloat16 safetensors

BF16_BITS = np.array([0x3F80, 0xC049, 0x7F80, 0x0001, 0x8000], np.uint16)
BF16_VALUES = np.array([1.0, -3.140625, np.inf, 2.0**-133, -0.0], np.float32)


def test_bf16_safetensors_exact(tmp_path: Path) -> None:
    p = _raw_st(tmp_path / "b.safetensors",
                {"x": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}, BF16_BITS.tobytes())
    got = read_safetensors(p)["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, BF16_VALUES)
    assert np.signbit(got[4]) and got[3] > 0
    assert describe_weights(p)["x"] == TensorInfo("x", (5,), "bfloat16")


def test_bf16_safetensors_from_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    t = torch.tensor([[1e30, -3.14159, 1e-39], [65504.0, 7.0, 0.1]], dtype=torch.bfloat16)
    save_file({"t": t}, str(tmp_path / "t.safetensors"))
    got = read_safetensors(tmp_path / "t.safetensors")["t"]
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, t.float().numpy())


# ---------------------------------------------------------------- malicious pickles

def _global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle of ``{"w": <module.name>(arg)}`` built opcode by opcode."""
    a = arg.encode()
    return (b"\x80\x02}X\x01\x00\x00\x00wc" + f"{module}\n{name}\n".encode()
            + b"X" + len(a).to_bytes(4, "little") + a + b"\x85Rs.")


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.exec", "builtins.eval",
                                  "builtins.open", "subprocess.getoutput", "reduce_system",
                                  "reduce_exec", "protocol0"])
def test_malicious_pickle_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    payloads = {
        "os.system": _global_call("os", "system", f"touch {marker}"),
        "posix.system": _global_call("posix", "system", f"touch {marker}"),
        "builtins.exec": _global_call("builtins", "exec", code),
        "builtins.eval": _global_call("builtins", "eval", code),
        "builtins.open": b"\x80\x02cbuiltins\nopen\nX" + len(str(marker)).to_bytes(4, "little")
                         + str(marker).encode() + b"X\x01\x00\x00\x00w\x86R.",
        "subprocess.getoutput": _global_call("subprocess", "getoutput", f"touch {marker}"),
        "reduce_system": pickle.dumps({"ok": np.zeros(2), "w": _Evil(os.system, f"touch {marker}")}, 4),
        "reduce_exec": pickle.dumps({"w": _Evil(exec, code)}, 4),
        "protocol0": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
    }
    data = payloads[kind]
    if kind in ("os.system", "reduce_exec", "builtins.open"):  # prove the payload is live
        pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    p = tmp_path / "evil.pdparams"
    p.write_bytes(data)
    for fn in (read_pdparams, describe_weights, read_weights):
        with pytest.raises(WeightFileError) as exc:
            fn(p)
        msg = str(exc.value)
        assert str(p) in msg and "\n" not in msg
        if kind != "protocol0":
            assert "refusing to load" in msg
        if "." in kind:
            assert f"asks for {kind}" in msg
    assert not marker.exists()


def test_persistent_id_refused(tmp_path: Path) -> None:
    import io

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, bytes) else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"w": b"abc"})
    (tmp_path / "p.pdparams").write_bytes(buf.getvalue())
    with pytest.raises(WeightFileError, match="refusing to load.*persistent"):
        read_pdparams(tmp_path / "p.pdparams")


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    p = tmp_path / "c.pdparams"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(WeightFileError, match="_codecs.encode with encoding 'rot13'"):
        read_pdparams(p)


# ---------------------------------------------------------------- damaged pdparams

def test_truncated_and_empty_pdparams(tmp_path: Path) -> None:
    good = tmp_path / "good.pdparams"
    write_pdparams(good, _sample())
    data = good.read_bytes()
    p = tmp_path / "bad.pdparams"
    for cut in (1, 2, 20, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=r"bad\.pdparams: file is truncated \(read .*copy"):
            read_pdparams(p)
    p.write_bytes(b"")
    with pytest.raises(WeightFileError, match="file is empty"):
        read_pdparams(p)
    p.write_bytes(data + b"junk")
    with pytest.raises(WeightFileError, match="after the end of the pickle"):
        read_pdparams(p)


@pytest.mark.parametrize("content,pattern", [
    (b"hello, I am text", "not a .pdparams file"),
    (b"PK\x03\x04zip", "not a .pdparams file"),
    (pickle.dumps([np.zeros(2)], 4), "holds a list, not a dict"),
    (pickle.dumps({"w": np.zeros(2), "epoch": 3}, 4), "entry 'epoch' is a int, not a tensor"),
    (pickle.dumps({"w": {"nested": np.zeros(2)}}, 4), "entry 'w' is a dict"),
    (pickle.dumps({"w": np.array([1, "x"], dtype=object)}, 4), "dtype object"),
    (pickle.dumps({"w": np.zeros(2, dtype=np.complex64)}, 4), "dtype complex64"),
    (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff.", "file is corrupt"),
])
def test_not_a_weight_pickle(tmp_path: Path, content: bytes, pattern: str) -> None:
    p = tmp_path / "x.pdparams"
    p.write_bytes(content)
    with pytest.raises(WeightFileError, match=pattern):
        read_pdparams(p)


def test_big_endian_pdparams_made_native(tmp_path: Path) -> None:
    p = tmp_path / "be.pdparams"
    p.write_bytes(pickle.dumps({"w": np.arange(4, dtype=">f4")}, 4))
    got = read_pdparams(p)["w"]
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, np.arange(4, dtype=np.float32))


# ---------------------------------------------------------------- damaged safetensors

def test_truncated_safetensors(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    write_safetensors(good, _sample())
    data = good.read_bytes()
    hlen = int.from_bytes(data[:8], "little")
    p = tmp_path / "bad.safetensors"
    for cut in (0, 5, 8 + hlen // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=r"bad\.safetensors: .*truncated.*copy"):
            read_safetensors(p)
    p.write_bytes(data[:-1])
    with pytest.raises(WeightFileError, match=f"has {len(data) - 9 - hlen} data bytes"):
        describe_weights(p)


@pytest.mark.parametrize("entry,data,pattern", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}, bytes(16), "out of range"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}, bytes(16), "needs 16 bytes"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, bytes(16), "needs 16 bytes"),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, bytes(16), "malformed"),
    ({"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}, bytes(16), "malformed"),
    ({"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, bytes(16), "malformed"),
    ({"dtype": "F32", "shape": [4]}, bytes(16), "malformed"),
    ({"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}, bytes(4), "unsupported dtype"),
])
def test_bad_safetensors_entries(tmp_path: Path, entry: dict, data: bytes, pattern: str) -> None:
    p = _raw_st(tmp_path / "x.safetensors", {"__metadata__": {"format": "np"}, "x": entry}, data)
    with pytest.raises(WeightFileError, match=pattern):
        read_safetensors(p)


def test_bad_safetensors_headers(tmp_path: Path) -> None:
    p = _raw_st(tmp_path / "x.safetensors", {}, b"", hlen=2**40)
    with pytest.raises(WeightFileError, match="not plausible"):
        read_safetensors(p)
    p.write_bytes((4).to_bytes(8, "little") + b"\xff{[x")
    with pytest.raises(WeightFileError, match="not valid JSON"):
        read_safetensors(p)
    p.write_bytes((2).to_bytes(8, "little") + b"[]")
    with pytest.raises(WeightFileError, match="not a JSON object"):
        read_safetensors(p)


def test_describe_safetensors_reads_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "m.safetensors"
    write_safetensors(p, _sample())

    def boom(*a, **k):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(np, "empty", boom)
    assert describe_weights(p)["w"] == TensorInfo("w", (3, 4), "float32")
    with pytest.raises(AssertionError):
        read_safetensors(p)


# ---------------------------------------------------------------- writers

@pytest.mark.parametrize("writer", [write_pdparams, write_safetensors])
def test_writers_refuse_bad_arrays(tmp_path: Path, writer) -> None:
    p = tmp_path / "out.bin"
    with pytest.raises(ValueError, match="dtype object"):
        writer(p, {"w": np.array([1, None], dtype=object)})
    with pytest.raises(ValueError, match="not a numpy array"):
        writer(p, {"w": [1.0, 2.0]})
    with pytest.raises(ValueError, match="reserved"):
        writer(p, {NAME_TABLE: np.zeros(1)})
    assert not p.exists() and os.listdir(tmp_path) == []


def test_write_safetensors_refuses_non_contiguous(tmp_path: Path) -> None:
    p = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="not C-contiguous"):
        write_safetensors(p, {"w": np.zeros((3, 4), np.float32).T})
    with pytest.raises(ValueError, match="metadata must map str to str"):
        write_safetensors(p, {"w": np.zeros(2)}, metadata={"n": 1})  # type: ignore[dict-item]
    assert not p.exists()
    write_pdparams(tmp_path / "t.pdparams", {"w": np.arange(12.0).reshape(3, 4).T})  # pickle is fine
    np.testing.assert_array_equal(read_pdparams(tmp_path / "t.pdparams")["w"],
                                  np.arange(12.0).reshape(3, 4).T)


@pytest.mark.parametrize("writer,name", [(write_pdparams, "m.pdparams"),
                                         (write_safetensors, "m.safetensors")])
def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer, name: str) -> None:
    dest = tmp_path / name
    dest.write_bytes(b"old contents")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(W.os, "fsync", no_space)
    with pytest.raises(WeightFileError, match="No space left on device.*untouched"):
        writer(dest, _sample())
    assert dest.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == [name]
    monkeypatch.undo()
    writer(dest, _sample())
    _assert_same(read_weights(dest), _sample())
    assert os.listdir(tmp_path) == [name]


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="directory exists"):
        write_safetensors(tmp_path / "nope" / "m.safetensors", {"w": np.zeros(2)})


def test_read_weights_dispatch(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK")
    with pytest.raises(WeightFileError, match="unknown weight file type '.bin'"):
        read_weights(tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightFileError, match="not found"):
        read_weights(tmp_path / "missing.safetensors")
    with pytest.raises(WeightFileError, match="unknown weight file type"):
        describe_weights(tmp_path / "pytorch_model.bin")
