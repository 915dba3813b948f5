"""Reads float32 bit patterns (hex, one per line) on stdin and prints, per value, the bf16 bits of
float32_to_bf16_bits, the fp16 bits numpy rounds to, and the float32 bits of those bf16 bits widened again, for the
vitest beside the router's data path to compare with the TypeScript codec (packages/protocol/src/tensor.ts).
Before it prints, it asserts what needs no router: bf16 bit patterns taken as they are whatever their 16-bit integer
type and byte order, answers an engine can write into, int32 (expert_ids) never cast, integer, bool and complex arrays
never taken as float values, torch tensors (bfloat16 too, on a GPU) taken as they are, and errors naming the argument
or the tensor at fault."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import tensor_pb2  # noqa: E402
from switchyard_client import (  # noqa: E402
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    forward_request,
    from_tensor,
    to_tensor,
)

u = np.array([int(line, 16) for line in sys.stdin.read().split()], dtype="<u4")
f = u.view("<f4")
bf = float32_to_bf16_bits(f)
via_tensor = from_tensor(to_tensor(f, "bf16"), bf16_bits=True)
f16 = to_tensor(f, "fp16")

# bf16 bit patterns as torch hands them over: t.view(torch.int16).numpy() is int16, and a big-endian uint16 array is
# the same bits too; none of them may be taken for numbers and rounded again (silently wrong hidden states)
bits = float32_to_bf16_bits(np.array([[1.0, -2.5, 3.140625], [0.0, -0.0, 65280.0]], np.float32))
for name, given in (("uint16", bits), ("int16", bits.view(np.int16)), (">u2", bits.astype(">u2")),
                    (">i2", bits.view(np.int16).astype(">i2")), ("uint16, non-contiguous", np.asfortranarray(bits)),
                    ("int16 column", bits.view(np.int16)[:, ::2])):
    want = bits if name != "int16 column" else bits[:, ::2]
    got = to_tensor(given, "bf16")
    assert got.data == want.astype("<u2").tobytes() and list(got.shape) == list(want.shape), \
        f"bf16 bits given as {name} were changed: {np.frombuffer(got.data, '<u2')} != {want.ravel()}"

# an answer is an array the engine may write into (y += residual), whatever its dtype: not a read-only view
for dtype in ("fp32", "fp16", "int32"):
    a = from_tensor(to_tensor(np.arange(6, dtype=np.float32 if dtype != "int32" else np.int64).reshape(2, 3), dtype))
    assert a.flags.writeable, f"from_tensor of {dtype} is read-only"
    a += 1
assert from_tensor(to_tensor(np.ones((2, 3), np.float32), "bf16"), bf16_bits=True).flags.writeable

# int32 (an assignment's expert_ids) is never cast: int64 2**32 + 3 is not expert 3, -0.5 is not expert 0. Values of
# any integer type in int32's range go as they are; anything else is refused naming the argument
for given in (np.array([[0, 3], [-1, 2**31 - 1]], np.int64), np.array([[0, 3], [-1, 2**31 - 1]], ">i8"),
              np.array([[0, 3]], np.uint8), [[-2**31, 5]], np.array([[1, 2]], np.int32)[:, ::-1]):
    want = np.asarray(given).astype(np.int64)
    assert np.array_equal(from_tensor(to_tensor(given, "int32")), want), f"int32 of {given!r} changed"
for given, why in ((np.array([[2**32 + 3]], np.int64), "4294967299"), (np.array([[-2**31 - 1]], np.int64), "range"),
                   (np.array([[2**63]], np.uint64), "range"), (np.array([[-0.5, 1.0]]), "float64"),
                   (np.array([[3.0]], np.float32), "float32"), ([[True]], "bool"), ([["a"]], "<U1")):
    try:
        forward_request("p", 0, np.zeros((1, 4), np.float32), expert_ids=given, weights=np.ones((1, 1), np.float32))
        raise AssertionError(f"expert_ids {given!r} were sent")
    except ValueError as e:
        assert str(e).startswith("expert_ids: ") and why in str(e), str(e)

# fp32 and fp16 take float arrays only: bf16 bit patterns sent without dtype="bf16" (uint16, int16) would otherwise go
# as their integer values (0x7F80 as 32640.0), and int32, bool or complex arrays as values silently cast. Refused,
# naming the argument; integers with the hint that bit patterns go as bf16. bf16 refuses all but floats and 16-bit
# patterns the same way.
for dtype in ("fp32", "fp16", "bf16"):
    for given in (bits, bits.view(np.int16), np.ones((2, 3), np.int32), np.ones((2, 3), bool),
                  np.ones((2, 3), np.complex64), np.array([["a"]]), [[1, 2, 3]]):
        if dtype == "bf16" and np.asarray(given).dtype.itemsize == 2 and np.asarray(given).dtype.kind in "iu":
            continue  # bit patterns, above
        for name, kw in (("hidden", {"hidden": given, "dtype": dtype}),
                         ("router_logits", {"hidden": np.zeros((2, 3), np.float32), "router_logits": given,
                                            "logits_dtype": dtype})):
            try:
                forward_request("p", 0, **kw)
                raise AssertionError(f"{name} {np.asarray(given).dtype} was sent as {dtype}")
            except ValueError as e:
                assert str(e).startswith(f"{name}: ") and "nothing is cast" in str(e), str(e)
                hint = "logits_dtype='bf16'" if name == "router_logits" else "dtype='bf16'"
                if np.asarray(given).dtype.kind in "iu" and dtype != "bf16":
                    assert hint in str(e), f"no hint for bit patterns: {e}"
# floats of any width and byte order, and Python floats, go as values
for given in (np.ones((2, 3), np.float64), np.ones((2, 3), ">f4"), np.ones((2, 3), np.float16), [[1.0, 2.0, 3.0]]):
    for dtype in ("fp32", "fp16", "bf16"):
        got = from_tensor(to_tensor(given, dtype))
        assert np.array_equal(got, np.asarray(given, np.float32)), (given, dtype, got)
# ml_dtypes' bfloat16 (kind "V"), where installed, is converted by its own casts
if importlib.util.find_spec("ml_dtypes") is not None:
    import ml_dtypes

    x = np.array([[1.0, -2.5, 3.140625]], np.float32).astype(ml_dtypes.bfloat16)
    for dtype in ("fp32", "fp16", "bf16"):
        assert np.array_equal(from_tensor(to_tensor(x, dtype)), x.astype(np.float32)), dtype

# the pool's name is a str: anything else is refused naming it, not protobuf's TypeError
for pool in (5, None, ["p"]):
    try:
        forward_request(pool, 0, np.zeros((1, 4), np.float32))
        raise AssertionError(f"pool {pool!r} was sent")
    except TypeError as e:
        assert str(e).startswith("pool: "), str(e)

# torch tensors, bfloat16 included (numpy has no bfloat16: Tensor.numpy() refuses it with "Got unsupported ScalarType
# BFloat16"), on a GPU or requiring grad: detached, copied to the CPU, a bf16 one taken as its bit patterns (for bf16)
# or widened to float32 (for another dtype). torch is imported for none of the above (numpy arrays, lists). Where torch
# is not installed (this build machine), a stand-in module "torch" with the few members used stands for it.
assert "torch" not in sys.modules, "torch was imported for numpy arrays"
if importlib.util.find_spec("torch") is None:
    fake = types.ModuleType("torch")
    for name in ("bfloat16", "int16", "float32", "int64"):
        setattr(fake, name, f"torch.{name}")

    class Tensor:
        """torch.Tensor as far as the client uses it: detach, cpu, view(dtype), numpy, and __array__ as torch's
        (which calls numpy(): a GPU tensor or a bfloat16 one cannot be converted)."""

        def __init__(self, a, dtype, device="cuda:0", grad=True):
            self._a, self.dtype, self.device, self.requires_grad = a, dtype, device, grad

        def detach(self):
            return Tensor(self._a, self.dtype, self.device, False)

        def cpu(self):
            return Tensor(self._a, self.dtype, "cpu", self.requires_grad)

        def view(self, dtype):
            assert (self.dtype, dtype) == (fake.bfloat16, fake.int16), (self.dtype, dtype)
            return Tensor(self._a.view(np.int16), dtype, self.device, self.requires_grad)

        def numpy(self):
            if self.device != "cpu":
                raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy "
                                "the tensor to host memory first.")
            if self.requires_grad:
                raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy()")
            if self.dtype == fake.bfloat16:
                raise TypeError("Got unsupported ScalarType BFloat16")
            return self._a

        def __array__(self, dtype=None):
            return self.numpy()

    Tensor.__module__ = "torch"
    fake.Tensor = Tensor
    sys.modules["torch"] = fake
    try:
        x = np.array([[1.0, -2.5, 3.140625], [0.0, -0.0, 65280.0]], np.float32)  # exact in bf16
        xb = float32_to_bf16_bits(x)
        cpu = Tensor(xb, fake.bfloat16, "cpu", False)  # held as its bit patterns, as torch does
        assert to_tensor(cpu, "bf16").data == xb.tobytes(), "a torch bf16 tensor's bits were changed"
        t = Tensor(xb, fake.bfloat16)  # on the GPU, requiring grad
        assert to_tensor(t, "bf16").data == xb.tobytes(), "a torch bf16 tensor's bits were changed"
        assert np.array_equal(from_tensor(to_tensor(t, "fp32")), x), "a torch bf16 tensor sent as fp32"
        assert np.array_equal(from_tensor(to_tensor(t, "fp16")), x.astype(np.float16)), "a torch bf16 sent as fp16"
        req = forward_request("p", 0, Tensor(x, fake.float32), dtype="fp16",
                              expert_ids=Tensor(np.zeros((2, 1), np.int64), fake.int64),
                              weights=Tensor(np.ones((2, 1), np.float32), fake.float32))
        assert np.array_equal(from_tensor(req.hidden), x.astype(np.float16)), "a torch fp32 tensor on a GPU"
        assert from_tensor(req.assignment.expert_ids).tolist() == [[0], [0]], "torch int64 expert ids"
    finally:
        del sys.modules["torch"]

# a tensor whose bytes do not match its shape: the error says which tensor, its shape and the bytes
for data in (bytes(4), bytes(5), bytes(28)):
    try:
        from_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2, 3], data=data), name="hidden")
        raise AssertionError(f"a [2, 3] float32 tensor of {len(data)} bytes was read")
    except ValueError as e:
        assert str(e).startswith("hidden: ") and "[2, 3]" in str(e) and f"{len(data)} bytes" in str(e), str(e)

print(json.dumps({
    "bf16": [int(b) for b in bf],
    "bf16_via_tensor": [int(b) for b in via_tensor],
    "f16": [int(b) for b in np.frombuffer(f16.data, dtype="<u2")],
    "widened": [int(x) for x in bf16_bits_to_float32(bf).view("<u4")],
}))
