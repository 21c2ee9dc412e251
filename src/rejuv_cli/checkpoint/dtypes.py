"""safetensors dtype codes, their sizes, and their torch names (no torch import here)."""

# code -> bytes per element
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1,
}  # fmt: skip

FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# The floats rejuv fuses, in any mix. FP8 is quantized storage (codes that need their scale
# tensors), refused before planning: checkpoint/quantization.py.
FUSABLE_CODES = frozenset({"F64", "F32", "F16", "BF16"})

# code -> attribute name on the torch module
TORCH_NAME = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool",
}  # fmt: skip

# What users type for --dtype / output.dtype, and what config.json calls it. fp8 applies only to
# the tensors that are block-scaled FP8 in an input (re-quantized, checkpoint/fp8.py); the others
# are written as under auto.
USER_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp8": "F8_E4M3"}
CONFIG_NAME = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def torch_dtype(code: str):
    """The torch dtype for a safetensors code (imports torch)."""
    import torch

    return getattr(torch, TORCH_NAME[code])


def code_of(torch_dtype_) -> str:
    """The safetensors code of a torch dtype."""
    name = str(torch_dtype_).removeprefix("torch.")
    for code, tname in TORCH_NAME.items():
        if tname == name:
            return code
    raise ValueError(f"no safetensors dtype for {torch_dtype_}")
