"""`cgconvert inspect`: is a model directory complete, which variant is it, will it load?

Everything is read without executing anything (the engine's allow-list unpickler for .pdparams, the
header of .safetensors).  Each problem carries its fix; notes are facts that need no action.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.config import (CONFIG_FILE, LEGACY_CONFIG_FILE, ModelConfig, config_from_dict,
                           flatten_legacy_config)
from engine.errors import EngineError
from engine.model import PARTIAL_SUFFIXES, WEIGHT_FILES
from engine.dtypes import DTYPE_NAMES
from engine.variants import ARCHITECTURES, DATA, DTYPE_BYTES, MASK_BUFFER_SUFFIXES, get_variant
from engine.quant import split_scales
from engine.weights import TensorInfo, describe_weights

from .tokenizer_files import TOKENIZER_FILES

MANIFEST_FILE = "manifest.json"
HF_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors.index.json")
LEFTOVER_SUFFIXES = PARTIAL_SUFFIXES + (".lock",)
OFFICIAL_TOKENIZER_IDS = 50295
_DATA_RE = re.compile(r"(?:^|[-_])(" + "|".join(DATA) + r")(?:$|[-_.])", re.IGNORECASE)
_LAYER_RE = re.compile(r"^transformer\.h\.(\d+)\.")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    fix: str
    file: str | None = None

    def line(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"[{self.code}] {where}{self.message}; fix: {self.fix}"


@dataclass
class FileInfo:
    name: str
    bytes: int
    sha256: str | None = None


@dataclass
class WeightSummary:
    file: str
    format: str
    dtype: str
    tensors: int
    param_count: int
    bytes: int


@dataclass
class InspectReport:
    directory: str
    size: str | None = None
    data: str | None = None
    variant: str | None = None
    identified_by: list[str] = field(default_factory=list)
    config_file: str | None = None
    weights: WeightSummary | None = None
    tokenizer_ids: int | None = None
    embedding_rows: int | None = None
    files: list[FileInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, code: str, message: str, fix: str, file: str | None = None) -> None:
        self.problems.append(Problem(code, message, fix, file))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _list_files(report: InspectReport, root: Path, hash_files: bool) -> None:
    for path in sorted(root.iterdir()):
        if not path.is_file():
            continue
        size = path.stat().st_size
        report.files.append(FileInfo(path.name, size, sha256_file(path) if hash_files else None))
        if path.name.endswith(LEFTOVER_SUFFIXES) or (path.name.startswith(".") and
                                                    path.name.endswith(".tmp")):
            report.problem("leftover", "left by an interrupted copy or download (loading can hang "
                           "on such files)", "delete it, then copy or fetch the file again", path.name)
        elif size == 0:
            report.problem("empty-file", "the file is empty (an interrupted copy?)",
                           "copy it again", path.name)


def _check_json(report: InspectReport, root: Path) -> dict[str, object]:
    parsed = {}
    for path in sorted(root.glob("*.json")):
        if path.stat().st_size == 0:
            continue  # already reported as empty
        try:
            parsed[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            report.problem("bad-json", f"not valid JSON ({reason})",
                           "the file is truncated or damaged: copy it again", path.name)
    return parsed


def _check_expected(report: InspectReport, root: Path) -> None:
    for name in TOKENIZER_FILES:
        if not (root / name).is_file():
            report.problem("missing-file", "tokenizer file missing",
                           f"copy {name} from the model's download (or `cgconvert fetch`)", name)
    has_modern, has_legacy = (root / CONFIG_FILE).is_file(), (root / LEGACY_CONFIG_FILE).is_file()
    if not has_modern and not has_legacy:
        report.problem("missing-file", f"neither {CONFIG_FILE} nor {LEGACY_CONFIG_FILE}",
                       "copy the model's config files into the directory", CONFIG_FILE)
    elif not has_modern:
        report.notes.append(f"only the legacy {LEGACY_CONFIG_FILE}: it loads, but `cgconvert "
                            f"config DIR` writes the {CONFIG_FILE} newer tools expect")
    present = [n for n in WEIGHT_FILES if (root / n).is_file()]
    if not present:
        hf = [n for n in HF_WEIGHT_FILES if (root / n).is_file()]
        if hf:
            report.problem("hf-checkpoint", f"a Hugging Face checkpoint ({hf[0]}), not a PaddleNLP "
                           "directory", "convert it: `cgconvert from-hf DIR NEW_DIR`", hf[0])
        else:
            report.problem("missing-file", f"no weight file ({' or '.join(WEIGHT_FILES)})",
                           "copy the model's weights into the directory", WEIGHT_FILES[1])
    elif len(present) == 2:
        report.notes.append(f"both {present[0]} and {present[1]}: the engine loads {present[0]}")


def _load_config(report: InspectReport, root: Path, parsed: dict) -> ModelConfig | None:
    config, modern_arch = None, None
    for name in (CONFIG_FILE, LEGACY_CONFIG_FILE):
        raw = parsed.get(name)
        if raw is None:
            continue
        try:
            flat = flatten_legacy_config(raw) if name == LEGACY_CONFIG_FILE else raw
            if not isinstance(flat, dict):
                raise EngineError(f"{root / name}: expected a JSON object")
            found = config_from_dict(flat, str(root / name))
        except EngineError as exc:
            report.problem("bad-config", str(exc).split(": ", 1)[-1],
                           "use the config that came with the weights (or regenerate config.json "
                           "with `cgconvert config DIR --force`)", name)
            continue
        if config is None:
            config, report.config_file = found, name
            modern_arch = found.arch
        elif found.arch != modern_arch:
            report.problem("config-mismatch", f"{LEGACY_CONFIG_FILE} and {CONFIG_FILE} describe "
                           "different architectures", "regenerate config.json with `cgconvert "
                           "config DIR --force` (if model_config.json matches the weights)", name)
    return config


def _identify(report: InspectReport, root: Path, parsed: dict, config: ModelConfig | None) -> None:
    if config is not None:
        for size, arch in ARCHITECTURES.items():
            if (arch.n_layer, arch.n_embd, arch.n_head, arch.rotary_dim, arch.vocab_size) == (
                    config.arch.n_layer, config.arch.n_embd, config.arch.n_head,
                    config.arch.rotary_dim, config.arch.vocab_size):
                report.size = size
                report.identified_by.append(f"size from {report.config_file}")
        if report.size is None:
            a = config.arch
            report.notes.append(f"not an official size (n_layer {a.n_layer}, n_embd {a.n_embd}, "
                                f"n_head {a.n_head}): a custom or test model")
    manifest = parsed.get(MANIFEST_FILE)
    if isinstance(manifest, dict) and isinstance(manifest.get("variant"), str):
        try:
            variant = get_variant(manifest["variant"])
        except EngineError:
            variant = None
        if variant is not None:
            report.data = variant.data
            report.identified_by.append(f"data from {MANIFEST_FILE}")
            if report.size and variant.size != report.size:
                report.problem("config-mismatch", f"{MANIFEST_FILE} names {variant.name} but the "
                               f"config is {report.size}", "use the files of one download only",
                               MANIFEST_FILE)
    if report.data is None:
        match = _DATA_RE.search(root.resolve().name)
        if match:
            report.data = match.group(1).lower()
            report.identified_by.append("data from the directory name")
    if report.size:
        report.variant = f"codegen-{report.size}-{report.data}" if report.data else f"codegen-{report.size}"


def _weights_arch_hint(infos: dict[str, TensorInfo]) -> str | None:
    """The official size the tensors themselves belong to, if they differ from the config."""
    wte = infos.get("transformer.wte.weight")
    layers = {int(m.group(1)) for n in infos if (m := _LAYER_RE.match(n))}
    if wte is None or len(wte.shape) != 2:
        return None
    for size, arch in ARCHITECTURES.items():
        if arch.n_embd == wte.shape[1] and arch.n_layer == len(layers):
            return size
    return None


def check_tensors(report: InspectReport, infos: dict[str, TensorInfo], config: ModelConfig,
                  file: str) -> None:
    infos, scale_problems = split_scales(infos)  # int8 files: data + <name>.scale
    for message in scale_problems[:3]:
        report.problem("bad-scale", message, "cast the model again with `cgconvert cast "
                       "--dtype int8`", file)
    masks, missing, extra = config.arch.match_names(infos)
    if masks:
        report.notes.append(f"{len(masks)} old attention-mask buffer(s) in {file}: tolerated, "
                            "dropped when loading")
    infos = {n: i for n, i in infos.items() if n not in masks}
    expected = config.arch.tensor_shapes()
    wrong = [n for n in expected if n in infos and tuple(infos[n].shape) != expected[n]]
    other = _weights_arch_hint(infos)
    if (extra or wrong) and other and other != report.size:
        report.problem("config-mismatch", f"the weights are a {other} model but "
                       f"{report.config_file} describes {report.size or 'another architecture'}",
                       f"use the config files of the {other} download", file)
        return
    transposed = [n for n in wrong if len(expected[n]) == 2 and tuple(infos[n].shape) == expected[n][::-1]]
    if transposed and len(transposed) == len(wrong):
        report.problem("hf-layout", f"{len(wrong)} Linear weights are [out, in] (PyTorch layout)",
                       "convert the original checkpoint with `cgconvert from-hf`", file)
    else:
        for n in wrong[:3]:
            report.problem("wrong-shape", f"{n} has shape {list(infos[n].shape)}, the config "
                           f"implies {list(expected[n])}", "use the config that came with these "
                           "weights, or copy the weight file again", file)
        if len(wrong) > 3:
            report.problem("wrong-shape", f"{len(wrong) - 3} more tensors with wrong shapes",
                           "use the config that came with these weights", file)
    if missing:
        report.problem("missing-tensor", f"{len(missing)} tensor(s) missing, first {missing[0]!r}",
                       "the weight file is incomplete or not CodeGen's: copy it again", file)
    if extra:
        report.problem("unexpected-tensor", f"{len(extra)} unexpected tensor(s), first {extra[0]!r}",
                       "use the config that came with these weights", file)
    quantized = any(i.dtype == "int8" for i in infos.values())  # its vectors stay float32
    dtypes = sorted({i.dtype for n, i in infos.items()
                     if n in expected and (len(i.shape) == 2 or not quantized)})
    if len(dtypes) > 1:
        report.problem("mixed-dtype", f"tensors of several dtypes ({', '.join(dtypes)})",
                       "re-create the file with `cgconvert cast`", file)
    elif dtypes and dtypes[0] not in DTYPE_BYTES:
        report.problem("bad-dtype", f"weights are {dtypes[0]}, the engine loads "
                       f"{', '.join(DTYPE_NAMES)}", "convert with `cgconvert cast DIR NEW --dtype float16`", file)


def _check_weights(report: InspectReport, root: Path, config: ModelConfig | None) -> None:
    present = [n for n in WEIGHT_FILES if (root / n).is_file() and (root / n).stat().st_size]
    if not present:
        return
    name = present[0]
    try:
        infos = describe_weights(root / name)
    except EngineError as exc:
        report.problem("bad-weights", str(exc).split(": ", 1)[-1].split("; ")[0],
                       "copy the weight file again (never load it with paddle.load/torch.load)", name)
        return
    body = {n: i for n, i in infos.items() if not n.endswith(MASK_BUFFER_SUFFIXES)}
    dtypes = sorted({i.dtype for i in body.values()})
    count = sum(math.prod(i.shape) for i in body.values())
    nbytes = sum(math.prod(i.shape) * DTYPE_BYTES.get(i.dtype, 4) for i in body.values())
    report.weights = WeightSummary(name, name.rsplit(".", 1)[-1], "/".join(dtypes), len(body),
                                   count, nbytes)
    wte = body.get("transformer.wte.weight")
    if wte is not None and wte.shape:
        report.embedding_rows = wte.shape[0]
    if config is not None:
        check_tensors(report, infos, config, name)


def _check_tokenizer(report: InspectReport, root: Path, parsed: dict, config: ModelConfig | None) -> None:
    vocab, added = parsed.get("vocab.json"), parsed.get("added_tokens.json", {})
    if not isinstance(vocab, dict) or not isinstance(added, dict):
        return
    ids = [i for i in (*vocab.values(), *added.values()) if isinstance(i, int)]
    report.tokenizer_ids = max(ids) + 1 if ids else 0
    rows = report.embedding_rows or (config.arch.vocab_size if config else None)
    if rows is not None and report.tokenizer_ids > rows:
        report.problem("tokenizer-size", f"the tokenizer has {report.tokenizer_ids} ids but the "
                       f"embedding has {rows} rows", "the tokenizer files belong to another model: "
                       "copy the matching vocab.json, merges.txt and added_tokens.json", "vocab.json")
    elif report.size and report.tokenizer_ids != OFFICIAL_TOKENIZER_IDS:
        report.notes.append(f"the tokenizer has {report.tokenizer_ids} ids; official CodeGen "
                            f"tokenizers have {OFFICIAL_TOKENIZER_IDS}")


def _check_manifest(report: InspectReport, parsed: dict) -> None:
    manifest = parsed.get(MANIFEST_FILE)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return
    have = {f.name: f for f in report.files}
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict):
            continue
        info = have.get(name)
        if info is None:
            report.problem("missing-file", f"listed in {MANIFEST_FILE} but absent",
                           "copy it (or fetch again)", name)
        elif entry.get("bytes") not in (None, info.bytes):
            report.problem("size-mismatch", f"{info.bytes} bytes, {MANIFEST_FILE} says "
                           f"{entry['bytes']}", "the copy is incomplete: copy it again", name)
        elif info.sha256 and entry.get("sha256") not in (None, info.sha256):
            report.problem("hash-mismatch", f"sha256 differs from {MANIFEST_FILE}",
                           "the file is damaged or from another download: copy it again", name)


def inspect_dir(root: Path, hash_files: bool = False) -> InspectReport:
    """Check a model directory; never modifies it."""
    report = InspectReport(str(root))
    _list_files(report, root, hash_files)
    parsed = _check_json(report, root)
    _check_expected(report, root)
    config = _load_config(report, root, parsed)
    _identify(report, root, parsed, config)
    _check_weights(report, root, config)
    _check_tokenizer(report, root, parsed, config)
    _check_manifest(report, parsed)
    if hash_files and not isinstance(parsed.get(MANIFEST_FILE), dict):
        report.notes.append("no manifest.json: keep these sha256 sums to check later copies")
    return report


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def render_text(report: InspectReport) -> str:
    lines = [f"directory  {report.directory}"]
    how = f" ({', '.join(report.identified_by)})" if report.identified_by else ""
    lines.append(f"variant    {report.variant or 'unknown'}{how}")
    if report.config_file:
        lines.append(f"config     {report.config_file}")
    w = report.weights
    if w:
        lines.append(f"weights    {w.file}: {w.tensors} tensors, {w.param_count:,} parameters, "
                     f"{w.dtype}, {_human_bytes(w.bytes)}")
    if report.tokenizer_ids is not None:
        rows = f" (embedding rows {report.embedding_rows})" if report.embedding_rows else ""
        lines.append(f"tokenizer  {report.tokenizer_ids} ids{rows}")
    width = max([len(f.name) for f in report.files] + [4])
    lines += ["", f"{'FILE':<{width}}  {'BYTES':>14}" + ("  SHA256" if any(f.sha256 for f in report.files) else "")]
    for f in report.files:
        lines.append(f"{f.name:<{width}}  {f.bytes:>14,}" + (f"  {f.sha256}" if f.sha256 else ""))
    if report.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in report.notes]
    if report.problems:
        lines += ["", f"problems ({len(report.problems)}):"] + [f"  - {p.line()}" for p in report.problems]
    lines += ["", "result: OK, the directory is complete and consistent" if report.ok else
              f"result: {len(report.problems)} problem(s) found"]
    return "\n".join(lines)
