"""The ForwardRequest of one MoE layer call and the reading of its reply, shared by the data-path and gRPC clients."""

from __future__ import annotations

import math
import operator
from typing import Optional

import numpy as np

from switchyard.v1 import router_pb2

from .tensor import from_tensor, to_tensor

_U32 = (1 << 32) - 1  # layer and timeout_ms are uint32 on the wire

# google.rpc.Code names for the codes the router answers with
_CODES = {1: "CANCELLED", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 8: "RESOURCE_EXHAUSTED",
          13: "INTERNAL", 14: "UNAVAILABLE"}


class RouterError(Exception):
    """The router failed this request (the connection stays usable): code is a gRPC status code, message names the
    field at fault where the request was invalid."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{_CODES.get(code, code)}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):
        # pickled (a ProcessPoolExecutor's worker raising it) as its code and message: args holds the text only
        return type(self), (self.code, self.message), self.__dict__


def forward_request(pool: str, layer: int, hidden: np.ndarray, *, dtype: str = "fp32",
                    router_logits: Optional[np.ndarray] = None, expert_ids: Optional[np.ndarray] = None,
                    weights: Optional[np.ndarray] = None, routed_only: Optional[bool] = None,
                    timeout: Optional[float] = None, logits_dtype: str = "fp32") -> router_pb2.ForwardRequest:
    """hidden [T, d] sent as `dtype` (fp32, fp16 or bf16); the gate input is one of: nothing (the router gates from
    its checkpoint), router_logits [T, E] sent as `logits_dtype` (fp32; bf16 or fp16 as a half-precision gate gives
    them: the router then rounds Qwen's routing weights to that dtype, as transformers does), or expert_ids [T, k]
    (int32, -1 = empty slot) with weights
    [T, k] (float32). timeout (seconds) becomes the request's timeout_ms: past it the router answers
    DEADLINE_EXCEEDED. A value that cannot be sent raises ValueError (or TypeError) naming the argument."""
    if not isinstance(pool, str):
        raise TypeError(f"pool: the pool's name, a str, got {type(pool).__name__} {pool!r}")
    try:
        index = operator.index(layer)
    except TypeError:
        index = -1
    if not 0 <= index <= _U32:
        raise ValueError(f"layer: an integer in [0, {_U32}], got {layer!r}")
    req = router_pb2.ForwardRequest(pool=pool, layer=index, hidden=_tensor("hidden", hidden, dtype))
    if router_logits is not None:
        if expert_ids is not None or weights is not None:
            raise ValueError("gate: router_logits or an assignment (expert_ids, weights), not both")
        if logits_dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"logits_dtype: fp32, bf16 or fp16, got {logits_dtype!r}")
        req.router_logits.CopyFrom(_tensor("router_logits", router_logits, logits_dtype))
    elif expert_ids is not None or weights is not None:
        if expert_ids is None or weights is None:
            raise ValueError("assignment: expert_ids and weights go together")
        req.assignment.expert_ids.CopyFrom(_tensor("expert_ids", expert_ids, "int32"))
        req.assignment.weights.CopyFrom(_tensor("weights", weights, "fp32"))
    if routed_only is not None:
        req.routed_only = routed_only
    if timeout is not None:
        if not (timeout > 0 and timeout * 1000 <= _U32):
            raise ValueError(f"timeout: seconds in (0, {_U32 // 1000}], got {timeout!r}")
        req.timeout_ms = max(1, math.ceil(timeout * 1000))
    return req


def _tensor(name: str, x, dtype: str):
    """to_tensor, with the argument's name on the error of a value it refuses (a string, an integer array for a
    float dtype) or numpy cannot convert."""
    try:
        return to_tensor(x, dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        msg = str(e)
        if name == "router_logits":  # its dtype is the logits_dtype argument
            msg = msg.replace("dtype='bf16'", "logits_dtype='bf16'")
        raise (TypeError if isinstance(e, TypeError) else ValueError)(f"{name}: {msg}") from e


def reply_hidden(res: router_pb2.ForwardResponse, bf16_bits: bool = False) -> np.ndarray:
    """The reply's hidden states, or RouterError where the router answered with an error."""
    if res.HasField("error") and res.error.code != 0:
        raise RouterError(res.error.code, res.error.message)
    return from_tensor(res.hidden, bf16_bits=bf16_bits, name="hidden")
