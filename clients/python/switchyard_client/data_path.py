"""An engine's end of the router's TCP data path (packages/protocol/src/data-path.ts, preface "SYRF").

Router.ForwardStream's messages without HTTP/2: after the 8-byte preface ("SYRF" + u32 version 1) each
ForwardRequest goes as a u32 little-endian length and its protobuf bytes, and each ForwardResponse comes back the
same way, in any order, matched by request_id. One connection carries any number of requests in flight: an engine
can send every MoE layer's call of a step and collect the answers as they come. The router's port is its
--data-port (default 50052; the Helm chart's router Service port "data").

    with RouterDataClient("router.switchyard", 50052) as router:
        out = router.forward("mixtral", layer, hidden)             # numpy [T, d] -> [T, d]
        fut = router.forward_async("mixtral", layer, hidden, dtype="bf16")   # concurrent.futures.Future
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Optional

import numpy as np

from switchyard.v1 import router_pb2

from .request import forward_request, reply_hidden

PREFACE = b"SYRF" + struct.pack("<I", 1)
_LEN = struct.Struct("<I")
# Seconds past a request's timeout that the client waits for the router's own answer (DEADLINE_EXCEEDED at the
# timeout) before it gives up on a router that does not answer at all; its late answer is then dropped.
_GRACE = 10.0
# TCP keepalive as the Node client and the router set it: a peer that vanished without a FIN or RST is noticed
# within about a minute of silence, not after Linux's default 2 h 11 min.
_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 6))


class RouterDataClient:
    """One connection to a router's data path; thread-safe. forward_async() returns a Future of the combined
    hidden states; a failed connection fails every request in flight and every later call with ConnectionError."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0, max_message_bytes: int = 512 << 20):
        self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):  # Linux; elsewhere the OS's defaults
                self._sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        self._max = max_message_bytes
        # Two locks: the reader thread must be able to take a reply's future while a sender is blocked in sendall
        # (the router stops reading a connection whose replies pile up, so one lock for both could deadlock).
        self._state = threading.Lock()  # the pending map, the ids and _failed
        self._send = threading.Lock()  # whole frames on the socket
        self._pending: dict[int, tuple[Future, bool, Optional[float]]] = {}  # future, bf16_bits, give-up time
        self._ids = itertools.count(1)
        self._failed: Optional[Exception] = None
        self._abandoned: set[int] = set()  # requests given up on (no answer by their timeout + _GRACE)
        self._wake = threading.Condition(self._state)  # the watchdog's, woken when the client fails
        self._watchdog: Optional[threading.Thread] = None  # started by the first request with a timeout
        self._where = f"{host}:{port}"
        self._sock.sendall(PREFACE)
        self._reader = threading.Thread(target=self._read_loop, name="switchyard-router-data", daemon=True)
        self._reader.start()

    def forward_async(self, pool: str, layer: int, hidden: np.ndarray, *, dtype: str = "fp32",
                      router_logits: Optional[np.ndarray] = None, expert_ids: Optional[np.ndarray] = None,
                      weights: Optional[np.ndarray] = None, routed_only: Optional[bool] = None,
                      timeout: Optional[float] = None, bf16_bits: bool = False,
                      logits_dtype: str = "fp32") -> "Future[np.ndarray]":
        """One MoE layer for hidden [T, d] sent as `dtype` (fp32, fp16 or bf16). The gate input is one of: nothing
        (the router gates from its checkpoint), router_logits [T, E] (sent as logits_dtype: fp32, or bf16 / fp16
        as a half-precision gate gives them), or an explicit top-k assignment
        expert_ids [T, k] (int32, -1 = empty slot) with weights [T, k] (float32). The Future's result is [T, d] in
        the request's dtype (bf16 widened to float32, or its bit patterns with bf16_bits=True); it raises
        RouterError where the router failed the request. timeout (seconds) is the request's deadline at the router
        (ForwardRequest.timeout_ms: past it the router answers DEADLINE_EXCEEDED); without one the router's
        default of 30 s applies. A router that does not answer at all (hung, or gone without closing the
        connection) fails a request with a timeout with concurrent.futures.TimeoutError 10 s past its timeout.
        A request over max_message_bytes raises ValueError here, unsent (the router would drop the connection)."""
        req = forward_request(pool, layer, hidden, dtype=dtype, router_logits=router_logits,
                              expert_ids=expert_ids, weights=weights, routed_only=routed_only, timeout=timeout,
                              logits_dtype=logits_dtype)
        req.request_id = (1 << 64) - 1  # the widest id: no request sent is larger than the size checked
        size = req.ByteSize()
        if size > self._max:
            raise ValueError(f"hidden: the request of {size} bytes (hidden {list(req.hidden.shape)} "
                             f"{dtype}) is over the data path's limit of {self._max} bytes (max_message_bytes; the "
                             "router's is 512 MiB): send fewer tokens per call")
        fut: Future = Future()
        give_up = None if timeout is None else time.monotonic() + timeout + _GRACE
        with self._state:
            if self._failed is not None:
                raise ConnectionError(str(self._failed))
            rid = next(self._ids)
            # before the send: the reply may come before sendall returns
            self._pending[rid] = (fut, bf16_bits, give_up)
            if give_up is not None and self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="switchyard-router-deadlines",
                                                  daemon=True)
                self._watchdog.start()
        req.request_id = rid
        body = req.SerializeToString()
        try:
            with self._send:
                self._sock.sendall(_LEN.pack(len(body)) + body)
        except OSError as e:
            with self._state:
                self._pending.pop(rid, None)
            raise ConnectionError(f"router data path {self._where}: {e}") from e
        return fut

    def forward(self, pool: str, layer: int, hidden: np.ndarray, timeout: Optional[float] = None,
                **kw) -> np.ndarray:
        """forward_async(...).result(). The router answers by the timeout; the client allows 10 s more for the
        transport before it gives up (concurrent.futures.TimeoutError)."""
        return self.forward_async(pool, layer, hidden, timeout=timeout, **kw).result()

    @property
    def in_flight(self) -> int:
        with self._state:
            return len(self._pending)

    def close(self) -> None:
        """Closes the connection; requests still in flight fail with ConnectionError."""
        self._fail(ConnectionError(f"router data path {self._where}: closed by the client"))
        if threading.current_thread() is not self._reader:  # not from a Future's callback, which runs on it
            self._reader.join(timeout=5)

    def __enter__(self) -> "RouterDataClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_exact(self, n: int) -> Optional[bytearray]:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                return None
            got += k
        return buf

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._read_exact(4)
                if head is None:
                    raise ConnectionError(f"router data path {self._where}: connection closed")
                (n,) = _LEN.unpack(head)
                if n > self._max:
                    raise ConnectionError(f"router data path {self._where}: reply of {n} bytes over the limit")
                body = self._read_exact(n)
                if body is None:
                    raise ConnectionError(f"router data path {self._where}: connection closed in a reply")
                res = router_pb2.ForwardResponse.FromString(body)
                with self._state:
                    entry = self._pending.pop(res.request_id, None)
                    late = entry is None and res.request_id in self._abandoned
                    self._abandoned.discard(res.request_id)
                if late:  # the answer to a request given up on: nobody waits for it
                    continue
                if entry is None:
                    raise ConnectionError(f"router data path {self._where}: reply to request {res.request_id}, "
                                          "which is not in flight")
                fut, bits, _ = entry
                # False: the caller cancelled it (asyncio's wrap_future does when the awaiting task is cancelled);
                # setting a result on it would raise here and end the connection for everyone else
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(reply_hidden(res, bits))
                except Exception as e:  # noqa: BLE001 - RouterError, or a reply this client cannot read: its own
                    fut.set_exception(e)
        except Exception as e:  # noqa: BLE001 - whatever ended the connection fails what is in flight
            self._fail(e if isinstance(e, ConnectionError) else ConnectionError(str(e)))

    def _watch(self) -> None:
        """Fails the requests whose router has not answered by their timeout + _GRACE (checked every 0.5 s)."""
        while True:
            with self._state:
                if self._failed is not None:
                    return
                now = time.monotonic()
                late = [rid for rid, (_, _, give_up) in self._pending.items() if give_up is not None and give_up <= now]
                futs = [self._pending.pop(rid)[0] for rid in late]
                self._abandoned.update(late)
                if not futs:
                    self._wake.wait(0.5)
                    continue
            for rid, fut in zip(late, futs):  # outside the lock: a callback may send the next request
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(FutureTimeoutError(
                        f"router data path {self._where}: request {rid} not answered {_GRACE:g} s past its timeout "
                        "(the router is stalled or unreachable)"))

    def _fail(self, err: Exception) -> None:
        with self._state:
            if self._failed is not None:
                return
            self._failed = err
            pending = list(self._pending.values())
            self._pending.clear()
            self._wake.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for fut, _, _ in pending:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(err)
