"""An engine's end of the router's gRPC service (Router.Forward on the router's --port, default 50051), for where
the TCP data path cannot go (a proxy that speaks only HTTP/2, TLS). Needs grpcio (`pip install
./clients/python[grpc]`, Debian python3-grpcio). The methods are called by name with the generated messages, so no
grpc code generation is needed.

    with RouterGrpcClient("router.switchyard:50051") as router:
        y = router.forward("mixtral", 0, hidden, timeout=5)
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Optional

import grpc
import numpy as np

from switchyard.v1 import router_pb2

from .request import RouterError, forward_request, reply_hidden

_MAX = 512 << 20  # the router's own message limits
# A call without a timeout: the router's default deadline (DEFAULT_DEADLINE_MS), said in the request, and a gRPC
# deadline _GRACE past it, so that a router that never answers fails the call (DEADLINE_EXCEEDED) as the data-path
# client gives such a request up.
_DEFAULT_TIMEOUT = 30.0
_GRACE = 10.0


class RouterGrpcClient:
    """Router.Forward, one unary call per MoE layer call; a deadline per call (timeout, seconds) reaches the
    router, which gives up on the request when it passes (without one, the router's default 30 s; the call's own
    deadline is then 10 s past it). RouterError carries the gRPC status code and the router's message (naming the
    field at fault); a router that cannot be reached is RouterError UNAVAILABLE (the channel reconnects by itself).
    Once close()d, calls raise ConnectionError, and those in flight fail with it, as the data-path client's do."""

    def __init__(self, target: str, options: Optional[list] = None):
        opts = [("grpc.max_receive_message_length", _MAX), ("grpc.max_send_message_length", _MAX)]
        self._channel = grpc.insecure_channel(target, options=opts + list(options or []))
        self._target = target
        self._closed = False
        self._forward = self._channel.unary_unary(
            "/switchyard.v1.Router/Forward",
            request_serializer=router_pb2.ForwardRequest.SerializeToString,
            response_deserializer=router_pb2.ForwardResponse.FromString,
        )

    def forward_async(self, pool: str, layer: int, hidden: np.ndarray, *, timeout: Optional[float] = None,
                      bf16_bits: bool = False, **gate) -> "Future[np.ndarray]":
        """As RouterDataClient.forward_async (dtype, router_logits, expert_ids + weights, routed_only)."""
        # timeout checked as the data path's, and sent as the request's timeout_ms too (the router takes the earlier
        # of the two); without one, the router's default in timeout_ms, and the call's deadline _GRACE past it
        req = forward_request(pool, layer, hidden, timeout=timeout, **gate)
        if timeout is None:
            req.timeout_ms = int(_DEFAULT_TIMEOUT * 1000)
        deadline = _DEFAULT_TIMEOUT + _GRACE if timeout is None else timeout
        if self._closed:
            raise self._closed_error()
        try:
            call = self._forward.future(req, timeout=deadline)
        except ValueError as e:  # "Cannot invoke RPC: Channel closed!": closed by another thread meanwhile
            if self._closed:
                raise self._closed_error() from e
            raise
        out: Future = Future()

        def done(c: grpc.Future) -> None:
            # False: the caller cancelled `out` (asyncio's wrap_future does when the awaiting task is cancelled), and
            # with it the call; a result set on it would raise here
            if not out.set_running_or_notify_cancel():
                return
            try:
                out.set_result(reply_hidden(c.result(), bf16_bits))
            except grpc.RpcError as e:
                if self._closed and e.code() == grpc.StatusCode.CANCELLED:  # in flight when the channel closed
                    out.set_exception(self._closed_error())
                else:
                    out.set_exception(RouterError(e.code().value[0], e.details() or ""))
            except Exception as e:  # noqa: BLE001 - RouterError, or a reply this client cannot read: never left pending
                out.set_exception(e)

        # a cancelled Future cancels the call: the router stops working on it (CANCELLED at the router)
        out.add_done_callback(lambda f: f.cancelled() and call.cancel())
        call.add_done_callback(done)
        return out

    def forward(self, pool: str, layer: int, hidden: np.ndarray, timeout: Optional[float] = None,
                **kw) -> np.ndarray:
        return self.forward_async(pool, layer, hidden, timeout=timeout, **kw).result()

    def close(self) -> None:
        """Closes the channel; calls in flight fail with ConnectionError, as later calls do."""
        self._closed = True
        self._channel.close()

    def _closed_error(self) -> ConnectionError:
        return ConnectionError(f"router gRPC {self._target}: closed by the client")

    def __enter__(self) -> "RouterGrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
