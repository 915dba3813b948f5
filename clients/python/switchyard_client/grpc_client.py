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


class RouterGrpcClient:
    """Router.Forward, one unary call per MoE layer call; a deadline per call (timeout, seconds) reaches the
    router, which gives up on the request when it passes. RouterError carries the gRPC status code and the router's
    message (naming the field at fault)."""

    def __init__(self, target: str, options: Optional[list] = None):
        opts = [("grpc.max_receive_message_length", _MAX), ("grpc.max_send_message_length", _MAX)]
        self._channel = grpc.insecure_channel(target, options=opts + list(options or []))
        self._forward = self._channel.unary_unary(
            "/switchyard.v1.Router/Forward",
            request_serializer=router_pb2.ForwardRequest.SerializeToString,
            response_deserializer=router_pb2.ForwardResponse.FromString,
        )

    def forward_async(self, pool: str, layer: int, hidden: np.ndarray, *, timeout: Optional[float] = None,
                      bf16_bits: bool = False, **gate) -> "Future[np.ndarray]":
        """As RouterDataClient.forward_async (dtype, router_logits, expert_ids + weights, routed_only)."""
        # the call's gRPC deadline; the router takes it as the request's (timeout_ms would say the same again)
        call = self._forward.future(forward_request(pool, layer, hidden, **gate), timeout=timeout)
        out: Future = Future()

        def done(c: grpc.Future) -> None:
            # False: the caller cancelled `out` (asyncio's wrap_future does when the awaiting task is cancelled), and
            # with it the call; a result set on it would raise here
            if not out.set_running_or_notify_cancel():
                return
            try:
                out.set_result(reply_hidden(c.result(), bf16_bits))
            except grpc.RpcError as e:
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
        self._channel.close()

    def __enter__(self) -> "RouterGrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
