"""The one table of dtype facts: weight dtypes the engine stores, and file-format element codes.

Weight dtypes (`--dtype` of the engine, cgserve, cgbench and `cgconvert cast`):
- float32, float16, bfloat16: the weights as such; numpy has no bfloat16, so it is held as its
  uint16 bit pattern (Paddle's convention, safetensors "U16" from PaddleNLP, "BF16" elsewhere);
- int8: weight-only quantisation, one symmetric float32 scale per output channel (see
  engine/quant.py for the on-disk layout); activations, KV cache and accumulation stay float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WeightDType:
    name: str
    itemsize: int  # bytes per stored weight (int8: the scales, one per output channel, aside)
    numpy: str  # the numpy dtype its data is held in
    quantized: bool = False  # stored values need a scale tensor to mean anything
    cache: str = ""  # the KV cache's dtype at most (float32 on CPU and older GPUs); "": `name`

    @property
    def cache_dtype(self) -> str:
        return self.cache or self.name


WEIGHT_DTYPES: dict[str, WeightDType] = {d.name: d for d in (
    WeightDType("float32", 4, "float32"),
    WeightDType("float16", 2, "float16"),
    WeightDType("bfloat16", 2, "uint16"),
    WeightDType("int8", 1, "int8", quantized=True, cache="float32"),
)}
DTYPE_NAMES = tuple(WEIGHT_DTYPES)  # for option choices, in this order
DTYPE_HELP = ("How weight matrices are stored: float32; float16/bfloat16 (half the memory; on CPU "
              "read by kernels that widen in registers); int8 (weight-only, one scale per output "
              "channel: a quarter of float32's memory). Activations and the KV cache stay float32 "
              "on CPU.")
DTYPE_BYTES = {name: d.itemsize for name, d in WEIGHT_DTYPES.items()}
BF16 = "bfloat16"

# safetensors element codes -> numpy dtype (little-endian); BF16 and U16 are bfloat16 bits
SAFETENSORS_TO_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "U16": "<u2",
                        "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
                        "BOOL": "?"}
BF16_CODES = ("BF16", "U16")
# numpy dtype name -> the code written (uint16 as "U16": PaddleNLP's bfloat16 convention)
NUMPY_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "uint16": "U16",
                        "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
                        "uint8": "U8", "bool": "BOOL"}


def stored_name(numpy_name: str) -> str:
    """The weight dtype a stored numpy dtype stands for (uint16 is Paddle's bfloat16)."""
    return BF16 if numpy_name == "uint16" else numpy_name


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Exact widening of bfloat16 bit patterns (uint16) to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16): round to nearest even, NaN kept NaN (as torch and
    Paddle do)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))))
               >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded
