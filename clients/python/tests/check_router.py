"""Drives a running router's data path with the Python client and prints what it saw, one JSON object, for the
vitest that runs it (router-service/src/data-server.python.test.ts) to replay through the Node client and compare
byte for byte. Beside it, it asserts what the vitest does not see: requests refused before they are sent (the
argument named), and against routers of its own that misbehave (a reply it cannot read, a router that stops
answering, a gRPC call given up on; and tests/check_data_path.py's and tests/check_client.py's) that no request is
left waiting. Usage:
python3 tests/check_router.py HOST DATA_PORT GRPC_PORT POOL D E."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import struct
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import router_pb2, tensor_pb2  # noqa: E402
import switchyard_client.data_path as data_path  # noqa: E402
from switchyard_client import (  # noqa: E402
    RouterDataClient,
    RouterError,
    float32_to_bf16_bits,
    forward_request,
    to_tensor,
)
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
        r.router_logits.CopyFrom(to_tensor(gate["router_logits"], gate.get("logits_dtype", "fp32")))
    if "expert_ids" in gate:
        r.assignment.expert_ids.CopyFrom(to_tensor(gate["expert_ids"], "int32"))
        r.assignment.weights.CopyFrom(to_tensor(gate["weights"], "fp32"))
    return r


# What the client refuses before sending: the error names the argument at fault (not protobuf's "Value out of
# range: -1", numpy's "could not convert string to float").
for args, kw, field in (((pool, -1), {}, "layer"), ((pool, 1 << 32), {}, "layer"),
                        ((pool, 0), {"timeout": float("inf")}, "timeout"), ((pool, 0), {"timeout": 1e10}, "timeout"),
                        ((pool, 0), {"router_logits": "x"}, "router_logits"),
                        ((pool, 0), {"router_logits": np.zeros((1, E), np.float32), "logits_dtype": "int32"},
                         "logits_dtype"),
                        ((pool, 0), {"expert_ids": [["a"]], "weights": [[1.0]]}, "expert_ids")):
    try:
        forward_request(*args, np.zeros((1, D), np.float32), **kw)
        raise AssertionError(f"forward_request accepted {args} {kw}")
    except (ValueError, TypeError) as e:
        assert str(e).startswith(f"{field}: "), f"{args} {kw}: the error does not name {field}: {e}"

with RouterDataClient(host, port) as c:
    # keepalive notices a router whose host vanished (no FIN, no RST) within a minute, as the Node client and the
    # router do (30 s idle), not after Linux's default 2 h 11 min of waiting on requests that will never be answered
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert c._conn._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 30, \
            "keepalive idle is the OS default"
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
    # as a bf16 engine's gate gives them
    record("router logits bf16", request(0, h, "fp32", router_logits=logits, logits_dtype="bf16"),
           c.forward(pool, 0, h, router_logits=logits, logits_dtype="bf16", timeout=10))
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

# A request over the data path's frame limit (the router's is 512 MiB: a big prefill in fp32) is refused before it
# is sent, naming hidden: sent, the router (or here the client, on its reply) would drop the connection, failing
# every other request in flight on it. Here the client's own limit is lowered to 64 KiB to stand for the router's.
with RouterDataClient(host, port, max_message_bytes=1 << 16) as small:
    try:
        big = small.forward_async(pool, 0, np.ones((1024, D), np.float32))  # 64 KiB of hidden and its header
    except ValueError as e:
        big = e
    others = [small.forward_async(pool, 0, np.ones((2, D), np.float32)) for _ in range(4)]
    assert isinstance(big, ValueError) and str(big).startswith("hidden: ") and "65536" in str(big), \
        f"a request over the frame limit was not refused before it was sent: {big!r}"
    assert all(f.result(10).shape == (2, D) for f in others), "requests in flight failed with the big one"
    assert small.forward(pool, 0, np.ones((1, D), np.float32), timeout=10).shape == (1, D)

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

# A router that stops answering (hung, or its host gone while the socket looks open) must not leave a request with a
# timeout waiting forever: forward_async's Future (what an asyncio engine awaits) fails with TimeoutError once the
# timeout plus the client's grace for the router's own answer has passed, and is no longer in flight. The router's
# late answer to it is dropped: the connection goes on serving the next request.
def stalled_router(srv: socket.socket) -> None:
    s, _ = srv.accept()
    f = s.makefile("rb")
    f.read(8)
    first = router_pb2.ForwardRequest.FromString(f.read(struct.unpack("<I", f.read(4))[0]))
    second = router_pb2.ForwardRequest.FromString(f.read(struct.unpack("<I", f.read(4))[0]))
    for req in (first, second):  # the first one's answer long after the client gave up on it
        body = router_pb2.ForwardResponse(request_id=req.request_id, hidden=req.hidden).SerializeToString()
        s.sendall(struct.pack("<I", len(body)) + body)
    f.read()


grace = data_path._GRACE
data_path._GRACE = 0.3
srv = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=stalled_router, args=(srv,), daemon=True).start()
with RouterDataClient("127.0.0.1", srv.getsockname()[1]) as stalled:
    t0 = time.monotonic()
    fut = stalled.forward_async(pool, 0, np.zeros((2, 3), np.float32), timeout=0.1)
    futures.wait([fut], timeout=10)
    assert fut.done(), "a request with a timeout waits on a router that does not answer"
    assert isinstance(fut.exception(), futures.TimeoutError), repr(fut.exception())
    assert time.monotonic() - t0 < 5 and stalled.in_flight == 0
    assert stalled.forward(pool, 0, np.ones((1, 3), np.float32), timeout=5).tolist() == [[1, 1, 1]]
data_path._GRACE = grace

# The rest of the data path's misbehaving routers (a send interrupted part way, a router that stops reading, a
# callback sending while the writer is blocked, the queue's bound, a lying reply header, the ids given up on, no
# timeout, fork(), a dropped client, the gRPC port): tests/check_data_path.py; RouterError pickled and the gRPC
# client's timeouts, default deadline and close(): tests/check_client.py. Both run on their own as well.
import check_client  # noqa: E402
import check_data_path  # noqa: E402

failed_checks = check_data_path.run_all() + check_client.run_all()
assert not failed_checks, failed_checks

# close() from a Future's callback (it runs on the client's reader thread): closes, without an error from the thread
# joining itself
errors: list = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        errors.append(record.getMessage() + (f" {record.exc_info[1]!r}" if record.exc_info else ""))


logging.getLogger().addHandler(Keep(logging.ERROR))
with RouterDataClient(host, port) as cb:
    fut = cb.forward_async(pool, 0, np.ones((1, D), np.float32))
    fut.add_done_callback(lambda f: cb.close())
    fut.result(10)
    time.sleep(0.2)
    assert not errors, errors
    try:
        cb.forward(pool, 0, np.ones((1, D), np.float32), timeout=10)
        raise AssertionError("closed in a callback, the client still sent")
    except ConnectionError:
        pass

# A gRPC call whose Future the caller cancelled (asyncio.wait_for's timeout on wrap_future does) is cancelled at the
# router, which stops working on it, and its answer coming back is not an error.
cancelled_at_router = threading.Event()


def slow_forward(req, ctx):  # layer 1 waits up to 3 s for its caller; layer 0 is answered at once
    end = time.monotonic() + 3
    while req.layer == 1 and ctx.is_active() and time.monotonic() < end:
        time.sleep(0.01)
    if not ctx.is_active():
        cancelled_at_router.set()
    return router_pb2.ForwardResponse(request_id=req.request_id, hidden=req.hidden)


slow = grpc.server(futures.ThreadPoolExecutor(2))
slow.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("switchyard.v1.Router", {
    "Forward": grpc.unary_unary_rpc_method_handler(
        slow_forward, request_deserializer=router_pb2.ForwardRequest.FromString,
        response_serializer=router_pb2.ForwardResponse.SerializeToString)}),))
slow_port = slow.add_insecure_port("127.0.0.1:0")
slow.start()
with RouterGrpcClient(f"127.0.0.1:{slow_port}") as g:
    async def gave_up():
        try:
            await asyncio.wait_for(asyncio.wrap_future(g.forward_async(pool, 1, np.ones((1, 3), np.float32))), 0.2)
        except asyncio.TimeoutError:
            pass

    asyncio.run(gave_up())
    assert cancelled_at_router.wait(2), "a cancelled gRPC call went on at the router"
    assert g.forward(pool, 0, np.ones((1, 3), np.float32), timeout=5).tolist() == [[1, 1, 1]]
slow.stop(0)
assert not errors, errors

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
