"""numpy arrays <-> switchyard.v1.Tensor (row-major, little-endian).

numpy has no bfloat16: a bf16 tensor travels as its 16-bit patterns. `to_tensor(x, "bf16")` rounds float32 to
bf16 (round to nearest, ties to even, as the router and torch do); `from_tensor` widens bf16 back to float32.
Arrays of a 16-bit integer type (uint16 or int16, either byte order) given with dtype "bf16" are taken as bf16 bit
patterns already (e.g. a torch bf16 tensor's `.view(torch.int16).numpy()`), so nothing is rounded twice. A torch
tensor is taken as it is (detached, copied to the CPU), a bfloat16 one as its bit patterns (widened to float32 for
another dtype). Nothing else is cast: fp32, fp16 and bf16 take float arrays (numpy's, or ml_dtypes' bfloat16), and
refuse integer, bool and complex ones rather than take bf16 bit patterns, or anything else, for values.
Arrays read from a Tensor are the caller's own (writable; an engine may add its residual in place).
"""

from __future__ import annotations

import numpy as np

from switchyard.v1 import tensor_pb2

_DTYPES = {
    "fp32": (tensor_pb2.FLOAT32, np.dtype("<f4")),
    "f32": (tensor_pb2.FLOAT32, np.dtype("<f4")),
    "fp16": (tensor_pb2.FLOAT16, np.dtype("<f2")),
    "f16": (tensor_pb2.FLOAT16, np.dtype("<f2")),
    "bf16": (tensor_pb2.BFLOAT16, np.dtype("<u2")),
    "int32": (tensor_pb2.INT32, np.dtype("<i4")),
}
_I32 = np.iinfo(np.int32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns of float32 values: round to nearest, ties to even; NaN stays NaN (quiet)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out = rounded.astype("<u2")
    out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype("<u2")
    return out


def bf16_bits_to_float32(b: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(b, dtype="<u2").astype("<u4") << np.uint32(16)).view("<f4")


def _as_array(x, dtype: str) -> np.ndarray:
    """x as a numpy array. A torch tensor (recognised by its type's module: torch is never imported for anything
    else) is detached and copied to the CPU; a bfloat16 one, which numpy cannot hold, gives its bit patterns for bf16
    and its values widened to float32 for another dtype."""
    if isinstance(x, np.ndarray):
        return x
    if (type(x).__module__ or "").split(".")[0] == "torch" and hasattr(x, "dtype") and hasattr(x, "detach"):
        import torch  # already imported: x is one of its tensors

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            bits = t.view(torch.int16).numpy().view("<u2")
            return bits if dtype == "bf16" else bf16_bits_to_float32(bits)
        return t.numpy()
    return np.asarray(x)


def to_tensor(x: np.ndarray, dtype: str = "fp32") -> tensor_pb2.Tensor:
    """A Tensor of `x` in `dtype` (fp32, fp16, bf16 or int32); float input is converted, bf16 rounded. fp32, fp16
    and bf16 take float arrays only (and, for bf16, 16-bit integer arrays as bf16 bit patterns); int32 takes integer
    arrays only, with every value in int32's range (ValueError otherwise: nothing is cast)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    code, np_dtype = _DTYPES[dtype]
    a = _as_array(x, dtype)
    # "f": numpy's floats; "V": ml_dtypes' (bfloat16...), converted by their own casts where they have one
    if dtype != "int32" and a.dtype.kind not in "fV" and not (dtype == "bf16" and a.dtype.kind in "iu"
                                                              and a.dtype.itemsize == 2):
        what = "a float array or bf16 bit patterns (a 16-bit integer array)" if dtype == "bf16" else "a float array"
        hint = ""
        if a.dtype.kind in "iu":
            hint = (" (integer values: convert them first, e.g. .astype(np.float32)" +
                    ("; bf16 bit patterns: dtype='bf16')" if dtype != "bf16" else ")"))
        raise ValueError(f"expected {what} for {dtype}, got {a.dtype}: nothing is cast{hint}")
    if dtype == "bf16":
        if a.dtype.kind in "iu":
            # bit patterns already, whatever their integer type and byte order: reinterpreted, never converted
            bits = a.astype(a.dtype.newbyteorder("<"), copy=False).view("<u2")
        else:
            bits = float32_to_bf16_bits(a.astype(np.float32, copy=False))
        data = np.ascontiguousarray(bits, dtype="<u2").tobytes()
    elif dtype == "int32":
        # never cast: int64 2**32 + 3 would become 3 and -0.5 would become 0, silently another expert
        if a.dtype.kind not in "iu":
            raise ValueError(f"expected an integer array (sent as int32), got {a.dtype}: nothing is cast")
        if a.size and (a.min() < _I32.min or a.max() > _I32.max):
            bad = a[(a < _I32.min) | (a > _I32.max)].flat[0]
            raise ValueError(f"{bad} is out of int32's range [{_I32.min}, {_I32.max}]")
        data = np.ascontiguousarray(a, dtype=np_dtype).tobytes()
    else:
        data = np.ascontiguousarray(a, dtype=np_dtype).tobytes()
    return tensor_pb2.Tensor(dtype=code, shape=list(a.shape), data=data)


_ITEM = {tensor_pb2.FLOAT32: np.dtype("<f4"), tensor_pb2.FLOAT16: np.dtype("<f2"), tensor_pb2.INT32: np.dtype("<i4"),
         tensor_pb2.BFLOAT16: np.dtype("<u2")}


def from_tensor(t: tensor_pb2.Tensor, bf16_bits: bool = False, name: str = "tensor") -> np.ndarray:
    """The Tensor as a numpy array of the caller's own (writable): fp32, fp16 and int32 as they are, bf16 widened to
    float32 (or its bit patterns as uint16 with bf16_bits=True). A tensor this client cannot read raises ValueError
    naming it (`name`), its shape and its bytes."""
    shape = tuple(t.shape)
    item = _ITEM.get(t.dtype)
    if item is None:
        raise ValueError(f"{name}: tensor dtype {t.dtype} is not one this client reads")
    want = item.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(t.data) != want:
        raise ValueError(f"{name}: shape {list(shape)} of {tensor_pb2.DType.Name(t.dtype)} needs {want} bytes, "
                         f"got {len(t.data)} bytes")
    a = np.frombuffer(t.data, dtype=item).reshape(shape)
    if t.dtype == tensor_pb2.BFLOAT16 and not bf16_bits:
        return bf16_bits_to_float32(a).reshape(shape)
    return a.copy()  # frombuffer over the message's bytes is read-only
