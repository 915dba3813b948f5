"""The client beside the data path's connection, against gRPC servers of its own (no real router): RouterError
across processes (pickled), and RouterGrpcClient's timeouts checked as the data path's, its deadline without a
timeout, and its errors once closed. Run on its own (python3 tests/check_client.py, prints "N passed, 0 failed")
and by check_router.py, which the router's vitest runs (router-service/src/data-server.python.test.ts)."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import router_pb2  # noqa: E402
import switchyard_client.grpc_client as grpc_client  # noqa: E402
from switchyard_client import RouterError  # noqa: E402
from switchyard_client.grpc_client import RouterGrpcClient  # noqa: E402

from check_data_path import run_checks  # noqa: E402  (this directory: the checks' shared runner)


class FakeGrpcRouter:
    """Router.Forward that answers each request with its own hidden states, after `hold` seconds or once the call
    ends (its deadline, a cancel), whichever comes first; it keeps the requests it was sent."""

    def __init__(self, hold: float = 0.0):
        self.hold = hold
        self.seen: list = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("switchyard.v1.Router", {
            "Forward": grpc.unary_unary_rpc_method_handler(
                self._forward, request_deserializer=router_pb2.ForwardRequest.FromString,
                response_serializer=router_pb2.ForwardResponse.SerializeToString)}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _forward(self, req, ctx):
        self.seen.append(req)
        end = time.monotonic() + self.hold
        while ctx.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        return router_pb2.ForwardResponse(request_id=req.request_id, hidden=req.hidden)

    def close(self) -> None:
        self.server.stop(0)


def router_error_pickles() -> None:
    """RouterError crosses processes (a ProcessPoolExecutor's worker raising it; multiprocessing): pickled and read
    back with its code, message and text, not a TypeError for a missing argument in the parent."""
    e = RouterError(3, "hidden.shape[1]: expected hidden size 4096, got 4097")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is RouterError and (back.code, back.message, str(back)) == (e.code, e.message, str(e)), \
        (back.code, back.message, str(back))


def grpc_timeout_checked() -> None:
    """A timeout that cannot be sent (0, negative, NaN, infinite, past uint32 milliseconds) raises ValueError naming
    it, as on the data path: not a call failed at once with DEADLINE_EXCEEDED."""
    r = FakeGrpcRouter()
    try:
        with RouterGrpcClient(f"127.0.0.1:{r.port}") as g:
            for timeout in (0, -1, float("nan"), float("inf"), 1e10):
                try:
                    g.forward("p", 0, np.ones((1, 4), np.float32), timeout=timeout)
                    raise AssertionError(f"timeout={timeout!r} was sent")
                except ValueError as e:
                    assert str(e).startswith("timeout: seconds in (0, 4294967]"), str(e)
            assert g.forward("p", 0, np.ones((1, 4), np.float32), timeout=5).shape == (1, 4)
    finally:
        r.close()


def grpc_default_deadline() -> None:
    """A call without a timeout on a router that never answers fails at the router's default deadline plus the
    grace (both shortened here), with the router's default in the request's timeout_ms: not never."""
    default, grace = getattr(grpc_client, "_DEFAULT_TIMEOUT", 30.0), getattr(grpc_client, "_GRACE", 10.0)
    grpc_client._DEFAULT_TIMEOUT, grpc_client._GRACE = 0.3, 0.3
    r = FakeGrpcRouter(hold=5.0)  # stands for a router that does not answer (nor gives up itself)
    try:
        with RouterGrpcClient(f"127.0.0.1:{r.port}") as g:
            t0 = time.monotonic()
            try:
                g.forward("p", 0, np.ones((1, 4), np.float32))
                raise AssertionError(f"answered after {time.monotonic() - t0:.1f} s: no deadline")
            except RouterError as e:
                assert e.code == 4, e  # DEADLINE_EXCEEDED
            took = time.monotonic() - t0
            assert 0.5 <= took < 3, f"gave up after {took:.2f} s, not the default 0.3 s + 0.3 s"
            assert r.seen[-1].timeout_ms == 300, r.seen[-1].timeout_ms
    finally:
        grpc_client._DEFAULT_TIMEOUT, grpc_client._GRACE = default, grace
        r.close()


def grpc_closed() -> None:
    """Closed, the gRPC client fails as the data path's does: calls in flight and later calls with ConnectionError
    (not grpc's ValueError "Cannot invoke RPC: Channel closed!", nor RouterError CANCELLED)."""
    r = FakeGrpcRouter(hold=3.0)
    try:
        g = RouterGrpcClient(f"127.0.0.1:{r.port}")
        fut = g.forward_async("p", 0, np.ones((1, 4), np.float32), timeout=10)
        deadline = time.monotonic() + 5
        while not r.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        g.close()
        err = fut.exception(5)
        assert isinstance(err, ConnectionError) and "closed by the client" in str(err), repr(err)
        try:
            g.forward("p", 0, np.ones((1, 4), np.float32), timeout=5)
            raise AssertionError("a closed gRPC client sent")
        except ConnectionError as e:
            assert "closed by the client" in str(e), str(e)
    finally:
        r.close()


CHECKS = (router_error_pickles, grpc_timeout_checked, grpc_default_deadline, grpc_closed)


def run_all(verbose: bool = False) -> list:
    return run_checks(CHECKS, verbose)


if __name__ == "__main__":
    failed = run_all(verbose=True)
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
