"""An engine's end of the router's TCP data path (packages/protocol/src/data-path.ts, preface "SYRF").

Router.ForwardStream's messages without HTTP/2: after the 8-byte preface ("SYRF" + u32 version 1) each
ForwardRequest goes as a u32 little-endian length and its protobuf bytes, and each ForwardResponse comes back the
same way, in any order, matched by request_id. One connection carries any number of requests in flight: an engine
can send every MoE layer's call of a step and collect the answers as they come. The router's port is its
--data-port (default 50052; the Helm chart's router Service port "data").

    with RouterDataClient("router.switchyard", 50052) as router:
        out = router.forward("mixtral", layer, hidden)             # numpy [T, d] -> [T, d]
        fut = router.forward_async("mixtral", layer, hidden, dtype="bf16")   # concurrent.futures.Future

Three threads of the client's own do the I/O: a writer sends the frames queued by forward_async in the order they
were queued (a caller never writes to the socket, so nothing it is interrupted by can leave half a frame on the
connection), a reader takes the replies and completes their Futures, and a watchdog gives up on requests with a
timeout that the router does not answer.
"""

from __future__ import annotations

import collections
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
# A reply's buffer grows as its bytes come (from 1 MiB, doubling), not to the length its header claims at once.
_READ_CHUNK = 1 << 20
# Request ids given up on that are remembered so that their late answers are dropped; older ones are forgotten (a
# late answer to one of those is dropped too: its id is at most _abandoned_floor).
_MAX_ABANDONED = 1 << 16


class RouterDataClient:
    """One connection to a router's data path; thread-safe. forward_async() queues the request and returns a Future
    of the combined hidden states; a failed connection fails every request in flight and every later call with
    ConnectionError.

    max_queued_bytes bounds the frames queued and not yet written to the socket: a forward_async that would go over
    it waits for room (first come, first queued), except on the client's own threads (a Future's callback), where it
    never waits. A frame larger than the bound is queued alone."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0, max_message_bytes: int = 512 << 20,
                 max_queued_bytes: int = 256 << 20):
        self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):  # Linux; elsewhere the OS's defaults
                self._sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        self._max = max_message_bytes
        self._max_queued = max_queued_bytes
        # One lock for the client's state; the socket is written by the writer thread alone and read by the reader
        # thread alone, so neither waits on the other (the router stops reading a connection whose replies pile up:
        # the reader must go on taking them while the writer is blocked).
        self._state = threading.Lock()
        self._pending: dict[int, tuple[Future, bool, Optional[float]]] = {}  # future, bf16_bits, give-up time
        self._ids = itertools.count(1)
        self._failed: Optional[Exception] = None
        self._queue: collections.deque = collections.deque()  # (request id, frame), not yet taken by the writer
        self._unsent: set[int] = set()  # ids whose frame is queued or being written
        self._queued_bytes = 0  # of the frames queued and the one being written
        self._waiting: collections.deque = collections.deque()  # ids waiting for room in the queue, in order
        self._abandoned: set[int] = set()  # requests given up on (no answer by their timeout + _GRACE)
        self._abandoned_order: collections.deque = collections.deque()
        self._abandoned_floor = 0  # the largest id forgotten from _abandoned
        self._wake = threading.Condition(self._state)  # the watchdog's, woken when the client fails
        self._work = threading.Condition(self._state)  # the writer's: a frame queued, or the client failed
        self._room = threading.Condition(self._state)  # forward_async's waiting for room in the queue
        self._watchdog: Optional[threading.Thread] = None  # started by the first request with a timeout
        self._where = f"{host}:{port}"
        self._sock.sendall(PREFACE)
        self._reader = threading.Thread(target=self._read_loop, name="switchyard-router-data", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="switchyard-router-send", daemon=True)
        self._reader.start()
        self._writer.start()

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
        connection) fails a request with a timeout with concurrent.futures.TimeoutError 10 s past its timeout;
        where its frame was not all written by then (a router that stopped reading), the connection fails too.
        The request is queued for the client's writer thread: this returns at once, unless max_queued_bytes of
        frames are already waiting to be written (then it waits for room; never on the client's own threads).
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
        may_wait = threading.current_thread() not in (self._reader, self._writer, self._watchdog)
        rid = next(self._ids)  # ids only match replies to requests: the order of the frames is the queue's
        req.request_id = rid
        body = req.SerializeToString()
        frame = _LEN.pack(len(body)) + body
        del body
        queued = False
        with self._state:
            if self._failed is not None:
                raise ConnectionError(str(self._failed))
            # registered before the frame is queued: the reply may come before the writer is back from sending it
            self._pending[rid] = (fut, bf16_bits, give_up)
            self._unsent.add(rid)
            try:
                if give_up is not None and self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch, name="switchyard-router-deadlines",
                                                      daemon=True)
                    self._watchdog.start()
                if may_wait and (self._waiting or not self._fits(len(frame))):
                    # first come, first queued: behind the callers already waiting, until the writer makes room;
                    # past this request's give-up time the watchdog fails it (TimeoutError) and the connection
                    self._waiting.append(rid)
                    try:
                        while self._failed is None and (self._waiting[0] != rid or not self._fits(len(frame))):
                            self._room.wait()
                    finally:
                        if self._failed is None:
                            self._waiting.remove(rid)
                            self._room.notify_all()
                    if self._failed is not None:
                        return fut  # failed with the connection (or by the watchdog: TimeoutError)
                self._queue.append((rid, frame))
                self._queued_bytes += len(frame)
                queued = True
                self._work.notify()
            except BaseException:  # KeyboardInterrupt, a signal handler's exception: its frame was not queued
                if not queued and self._failed is None:
                    self._pending.pop(rid, None)
                    self._unsent.discard(rid)
                raise
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
        for t in (self._reader, self._writer):  # not from a Future's callback, which runs on one of them
            if t is not threading.current_thread():
                t.join(timeout=5)

    def __enter__(self) -> "RouterDataClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fits(self, n: int) -> bool:
        return self._queued_bytes == 0 or self._queued_bytes + n <= self._max_queued

    def _write_loop(self) -> None:
        """Writes the queued frames, each whole, in order. Whatever stops a frame part way (an error, the connection
        shut by _fail) fails the connection: the bytes after it could not be framed."""
        while True:
            with self._state:
                while not self._queue and self._failed is None:
                    self._work.wait()
                if self._failed is not None:
                    return
                rid, frame = self._queue.popleft()
                entry = self._pending.get(rid)
                if entry is None or entry[0].cancelled():  # cancelled before it was sent: not sent at all
                    self._pending.pop(rid, None)
                    self._unsent.discard(rid)
                    self._queued_bytes -= len(frame)
                    self._room.notify_all()
                    continue
            try:
                self._sock.sendall(frame)
            except BaseException as e:  # noqa: BLE001 - half a frame may be on the connection: it cannot go on
                self._fail(ConnectionError(f"router data path {self._where}: sending request {rid}: "
                                           f"{type(e).__name__}: {e}"))
                return
            with self._state:
                self._unsent.discard(rid)
                self._queued_bytes -= len(frame)
                self._room.notify_all()
            del frame, entry

    def _read_exact(self, n: int) -> Optional[bytearray]:
        # grown as the bytes come, so that a header claiming up to max_message_bytes costs only what was received
        buf = bytearray(min(n, _READ_CHUNK))
        got = 0
        while got < n:
            if got == len(buf):
                buf += bytes(min(n, 2 * len(buf)) - len(buf))
            k = self._sock.recv_into(memoryview(buf)[got:], len(buf) - got)
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
                del body
                rid = res.request_id
                with self._state:
                    entry = self._pending.pop(rid, None)
                    late = entry is None and (rid in self._abandoned or 0 < rid <= self._abandoned_floor)
                    self._abandoned.discard(rid)
                if late:  # the answer to a request given up on: nobody waits for it
                    continue
                if entry is None:
                    raise ConnectionError(f"router data path {self._where}: reply to request {rid}, "
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
        """Fails the requests whose router has not answered by their timeout + _GRACE (checked every 0.5 s), and
        the connection where one of their frames is not all written by then (the router stopped reading)."""
        while True:
            with self._state:
                if self._failed is not None:
                    return
                now = time.monotonic()
                late = [rid for rid, (_, _, give_up) in self._pending.items() if give_up is not None and give_up <= now]
                if not late:
                    self._wake.wait(0.5)
                    continue
                futs = [self._pending.pop(rid)[0] for rid in late]
                stalled = [rid for rid in late if rid in self._unsent]
                if not stalled:
                    for rid in late:
                        self._abandoned.add(rid)
                        self._abandoned_order.append(rid)
                    while len(self._abandoned_order) > _MAX_ABANDONED:
                        old = self._abandoned_order.popleft()
                        if old in self._abandoned:
                            self._abandoned.discard(old)
                            self._abandoned_floor = max(self._abandoned_floor, old)
            if stalled:  # first: what is still in flight fails with ConnectionError, these with TimeoutError
                self._fail(ConnectionError(
                    f"router data path {self._where}: request {stalled[0]} not all sent {_GRACE:g} s past its timeout "
                    "(the router stopped reading): the connection is closed"))
            for rid, fut in zip(late, futs):  # outside the lock: a callback may send the next request
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(FutureTimeoutError(
                        f"router data path {self._where}: request {rid} not answered {_GRACE:g} s past its timeout "
                        + ("(its frame was never all sent: the router stopped reading)" if rid in stalled
                           else "(the router is stalled or unreachable)")))
            if stalled:
                return

    def _fail(self, err: Exception) -> None:
        with self._state:
            if self._failed is not None:
                return
            self._failed = err
            pending = list(self._pending.values())
            self._pending.clear()
            self._queue.clear()
            self._unsent.clear()
            self._queued_bytes = 0
            self._waiting.clear()
            self._abandoned.clear()
            self._abandoned_order.clear()
            self._wake.notify_all()
            self._work.notify_all()
            self._room.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv and the writer's sendall
        except OSError:
            pass
        self._sock.close()
        for fut, _, _ in pending:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(err)
