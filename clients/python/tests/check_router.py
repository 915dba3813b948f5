"""Drives a running router's data path with the Python client and prints what it saw, one JSON object, for the
vitest beside it (test/src/python-client/python-client.test.ts) to replay through the Node client and compare byte
for byte. Usage: python3 tests/check_router.py HOST DATA_PORT GRPC_PORT POOL D E."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import router_pb2, tensor_pb2  # noqa: E402
from switchyard_client import RouterDataClient, RouterError, float32_to_bf16_bits, to_tensor  # noqa: E402
from switchyard_client.grpc_client import RouterGrpcClient  # noqa: E402

host, port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pool, D, E = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
rng = np.random.default_rng(1234)
out: dict = {"cases": [], "errors": [], "checks": {}}


def record(name: str, req: router_pb2.ForwardRequest, result: np.ndarray, bf16: bool = False) -> None:
    req.request_id = 0
    raw = float32_to_bf16_bits(result) if bf16 else result
    out["cases"].append({
        "name": name,
        "request": base64.b64encode(req.SerializeToString()).decode(),
        "hidden": base64.b64encode(np.ascontiguousarray(raw).tobytes()).decode(),
        "shape": list(result.shape),
    })


def request(layer: int, hidden: np.ndarray, dtype: str, **gate) -> router_pb2.ForwardRequest:
    r = router_pb2.ForwardRequest(pool=pool, layer=layer, hidden=to_tensor(hidden, dtype))
    if "router_logits" in gate:
        r.router_logits.CopyFrom(to_tensor(gate["router_logits"], "fp32"))
    if "expert_ids" in gate:
        r.assignment.expert_ids.CopyFrom(to_tensor(gate["expert_ids"], "int32"))
        r.assignment.weights.CopyFrom(to_tensor(gate["weights"], "fp32"))
    return r


with RouterDataClient(host, port) as c:
    for dtype, T in (("fp32", 3), ("bf16", 5), ("fp16", 2)):
        h = rng.standard_normal((T, D), dtype=np.float32)
        y = c.forward(pool, 0, h, dtype=dtype, timeout=10)
        assert y.shape == (T, D), y.shape
        record(f"hidden {dtype}", request(0, h, dtype), y, bf16=dtype == "bf16")
    # bf16 given as bit patterns comes back as bit patterns: the same answer as from float32 input
    h = rng.standard_normal((4, D), dtype=np.float32)
    bits = c.forward(pool, 0, float32_to_bf16_bits(h), dtype="bf16", bf16_bits=True, timeout=10)
    out["checks"]["bf16 bits round trip"] = bool(
        np.array_equal(bits, float32_to_bf16_bits(c.forward(pool, 0, h, dtype="bf16", timeout=10))))
    h = rng.standard_normal((4, D), dtype=np.float32)
    logits = rng.standard_normal((4, E), dtype=np.float32)
    record("router logits", request(0, h, "fp32", router_logits=logits),
           c.forward(pool, 0, h, router_logits=logits, timeout=10))
    h = rng.standard_normal((2, D), dtype=np.float32)
    ids = np.array([[0, 2], [1, -1]], dtype=np.int32)
    w = np.array([[0.75, 0.25], [1.0, 0.0]], dtype=np.float32)
    record("assignment", request(0, h, "fp32", expert_ids=ids, weights=w),
           c.forward(pool, 0, h, expert_ids=ids, weights=w, timeout=10))

    # many in flight from several threads on the one connection
    results: list = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        g = np.random.default_rng(seed)
        futs = []
        for i in range(16):
            h = g.standard_normal((1 + i % 7, D), dtype=np.float32)
            futs.append((h, c.forward_async(pool, 0, h)))
        for h, f in futs:
            y = f.result(10)
            with lock:
                results.append((h, y))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (h, y) in enumerate(results):
        record(f"concurrent {i}", request(0, h, "fp32"), y)
    out["checks"]["in flight after"] = c.in_flight

    # asyncio, as an engine's event loop would await it (the README's use): 8 calls gathered, the same answers
    async def gathered(hs):
        return await asyncio.gather(*(asyncio.wrap_future(c.forward_async(pool, 0, x)) for x in hs))

    hs = [rng.standard_normal((1 + i % 3, D), dtype=np.float32) for i in range(8)]
    ys = asyncio.run(gathered(hs))
    same = all(y.tobytes() == c.forward(pool, 0, x, timeout=10).tobytes() for x, y in zip(hs, ys))

    # a task that stops waiting (asyncio.wait_for's timeout, a cancelled request) cancels the Future that
    # wrap_future wraps; its reply comes all the same and must not break the connection for the rest
    async def abandoned(x):
        try:
            await asyncio.wait_for(asyncio.wrap_future(c.forward_async(pool, 0, x)), timeout=0)
        except asyncio.TimeoutError:
            pass

    for x in hs:
        asyncio.run(abandoned(x))
    out["checks"]["asyncio"] = same and c.forward(pool, 0, hs[0], timeout=10).tobytes() == ys[0].tobytes()

    # bad requests: an error naming the field, the connection kept
    for name, call in (
        ("wrong hidden size", lambda: c.forward(pool, 0, np.zeros((2, D + 1), np.float32), timeout=10)),
        ("unknown pool", lambda: c.forward("no-such-pool", 0, np.zeros((1, D), np.float32), timeout=10)),
    ):
        try:
            call()
            out["errors"].append({"name": name, "code": 0, "message": "no error"})
        except RouterError as e:
            out["errors"].append({"name": name, "code": e.code, "message": e.message})
    out["checks"]["serves after errors"] = c.forward(pool, 0, np.ones((1, D), np.float32), timeout=10).shape == (1, D)

# The gRPC client: the same answers as the data path for the same inputs, the same errors.
with RouterDataClient(host, port) as c, RouterGrpcClient(f"{host}:{grpc_port}") as g:
    same = []
    for dtype, T in (("fp32", 3), ("bf16", 6), ("fp16", 1)):
        h = rng.standard_normal((T, D), dtype=np.float32)
        a = g.forward(pool, 0, h, dtype=dtype, timeout=10, bf16_bits=dtype == "bf16")
        b = c.forward(pool, 0, h, dtype=dtype, timeout=10, bf16_bits=dtype == "bf16")
        same.append(a.dtype == b.dtype and a.shape == (T, D) and a.tobytes() == b.tobytes())
    h = rng.standard_normal((2, D), dtype=np.float32)
    ids = np.array([[3, 1], [2, 0]], dtype=np.int32)
    w = np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    same.append(g.forward(pool, 0, h, expert_ids=ids, weights=w, timeout=10).tobytes()
                == c.forward(pool, 0, h, expert_ids=ids, weights=w, timeout=10).tobytes())
    out["checks"]["grpc answers as the data path"] = same
    grpc_errors = []
    for call in (lambda: g.forward(pool, 0, np.zeros((2, D + 1), np.float32), timeout=10),
                 lambda: g.forward("no-such-pool", 0, np.zeros((1, D), np.float32), timeout=10)):
        try:
            call()
            grpc_errors.append([0, "no error"])
        except RouterError as e:
            grpc_errors.append([e.code, e.message])
    out["checks"]["grpc errors"] = grpc_errors

try:
    c.forward(pool, 0, np.ones((1, D), np.float32), timeout=10)
    out["checks"]["closed client refuses"] = False
except ConnectionError:
    out["checks"]["closed client refuses"] = True



# A reply this client cannot read (here a tensor shorter than its shape; a dtype from a newer router would be the
# same) fails its own request with the reason, at once: not a Future left pending forever.
def malformed_router(srv: socket.socket) -> None:
    s, _ = srv.accept()
    f = s.makefile("rb")
    f.read(8)  # the preface
    req = router_pb2.ForwardRequest.FromString(f.read(struct.unpack("<I", f.read(4))[0]))
    bad = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2, 3], data=bytes(4))
    body = router_pb2.ForwardResponse(request_id=req.request_id, hidden=bad).SerializeToString()
    s.sendall(struct.pack("<I", len(body)) + body)
    f.read()  # until the client closes


srv = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=malformed_router, args=(srv,), daemon=True).start()
with RouterDataClient("127.0.0.1", srv.getsockname()[1]) as bad_router:
    fut = bad_router.forward_async(pool, 0, np.zeros((2, 3), np.float32))
    assert isinstance(fut.exception(5), ValueError), "the data-path client left a malformed reply's request pending"

# the same reply over gRPC
bad_grpc = grpc.server(futures.ThreadPoolExecutor(1))
bad_grpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("switchyard.v1.Router", {
    "Forward": grpc.unary_unary_rpc_method_handler(
        lambda req, ctx: router_pb2.ForwardResponse(request_id=req.request_id, hidden=tensor_pb2.Tensor(
            dtype=tensor_pb2.FLOAT32, shape=[2, 3], data=bytes(4))),
        request_deserializer=router_pb2.ForwardRequest.FromString,
        response_serializer=router_pb2.ForwardResponse.SerializeToString)}),))
bad_port = bad_grpc.add_insecure_port("127.0.0.1:0")
bad_grpc.start()
with RouterGrpcClient(f"127.0.0.1:{bad_port}") as bad_router:
    fut = bad_router.forward_async(pool, 0, np.zeros((2, 3), np.float32))
    assert isinstance(fut.exception(5), ValueError), "the gRPC client left a malformed reply's request pending"
bad_grpc.stop(0)

print(json.dumps(out))
