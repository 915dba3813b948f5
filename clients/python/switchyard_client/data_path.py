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
connection), a reader takes the replies and completes their Futures, and a watchdog gives up on requests that the
router does not answer. They reference the connection's state (_Connection), not the RouterDataClient: a client
dropped without close() is collected, and closes its connection then.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import struct
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Optional

import numpy as np

from switchyard.v1 import router_pb2

from .request import forward_request, reply_hidden

PREFACE = b"SYRF" + struct.pack("<I", 1)
_LEN = struct.Struct("<I")
# The router's deadline for a request that carries none (router-service's DEFAULT_DEADLINE_MS): a request sent
# without a timeout is given up on _GRACE past it, as one with a timeout is past its own.
_DEFAULT_TIMEOUT = 30.0
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
    never waits. A frame larger than the bound is queued alone.

    A client belongs to the process that made it: in a child made by fork() its calls raise RuntimeError (make a
    client in the child), and its close() only closes the child's copy of the socket, leaving the parent's connection
    as it was. A client dropped without close() is closed when it is collected (once nothing is in flight)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0, max_message_bytes: int = 512 << 20,
                 max_queued_bytes: int = 256 << 20):
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in _KEEPALIVE:
                if hasattr(socket, name):  # Linux; elsewhere the OS's defaults
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            sock.sendall(PREFACE)
        except BaseException:
            sock.close()
            raise
        self._conn = _Connection(sock, f"{host}:{port}", max_message_bytes, max_queued_bytes)
        # the threads hold the connection, not this object: dropped without close(), it is collected and this runs
        self._finalizer = weakref.finalize(self, self._conn.close,
                                           "closed without close(): the client was collected, or Python exited")

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
        connection) fails the request with concurrent.futures.TimeoutError 10 s past its timeout (past the
        router's default 30 s without one); where its frame was not all written by then (a router that stopped
        reading), the connection fails too.
        The request is queued for the client's writer thread: this returns at once, unless max_queued_bytes of
        frames are already waiting to be written (then it waits for room; never on the client's own threads).
        A request over max_message_bytes raises ValueError here, unsent (the router would drop the connection)."""
        self._conn.check_process()
        req = forward_request(pool, layer, hidden, dtype=dtype, router_logits=router_logits,
                              expert_ids=expert_ids, weights=weights, routed_only=routed_only, timeout=timeout,
                              logits_dtype=logits_dtype)
        # self goes with the request: a client with requests in flight is not collected (nor closed) under them
        return self._conn.submit(req, dtype, timeout, bf16_bits, self)

    def forward(self, pool: str, layer: int, hidden: np.ndarray, timeout: Optional[float] = None,
                **kw) -> np.ndarray:
        """forward_async(...).result(). The router answers by the timeout (its default 30 s without one); the client
        allows 10 s more for the transport before it gives up (concurrent.futures.TimeoutError). Not on the
        client's own threads (a Future's callback): the reply it would wait for is read by the thread it blocks;
        RuntimeError there, use forward_async."""
        role = self._conn.role_of(threading.current_thread())
        if role is not None:
            # a Future's callback: the reply forward() would wait for is read (or given up on) by the thread it blocks
            raise RuntimeError(f"forward() would block the client's {role} thread; use forward_async")
        return self.forward_async(pool, layer, hidden, timeout=timeout, **kw).result()

    @property
    def in_flight(self) -> int:
        return self._conn.in_flight()

    def close(self) -> None:
        """Closes the connection; requests still in flight fail with ConnectionError. In a child process made by
        fork(), closes only the child's copy of the socket (the parent's connection goes on)."""
        self._finalizer.detach()
        self._conn.close("closed by the client", join=True)

    def __enter__(self) -> "RouterDataClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Connection:
    """The connection and the state of its requests, which the client's threads work on."""

    def __init__(self, sock: socket.socket, where: str, max_message_bytes: int, max_queued_bytes: int):
        self._sock = sock
        self._where = where
        self._pid = os.getpid()  # a child made by fork() has a copy of this and of the socket, but no threads
        self._max = max_message_bytes
        self._max_queued = max_queued_bytes
        # One lock for the client's state; the socket is written by the writer thread alone and read by the reader
        # thread alone, so neither waits on the other (the router stops reading a connection whose replies pile up:
        # the reader must go on taking them while the writer is blocked).
        self._state = threading.Lock()
        # request id -> (future, bf16_bits, give-up time, timeout or None, the RouterDataClient that sent it)
        self._pending: dict[int, tuple] = {}
        self._ids = itertools.count(1)
        self._failed: Optional[Exception] = None
        self._sent_any = False  # a reply before any request was sent: not a router's
        self._queue: collections.deque = collections.deque()  # (request id, frame), not yet taken by the writer
        self._unsent: set[int] = set()  # ids whose frame is queued or being written
        self._queued_bytes = 0  # of the frames queued and the one being written
        self._waiting: collections.deque = collections.deque()  # ids waiting for room in the queue, in order
        self._abandoned: set[int] = set()  # requests given up on (no answer by their give-up time)
        self._abandoned_order: collections.deque = collections.deque()
        self._abandoned_floor = 0  # the largest id forgotten from _abandoned
        self._wake = threading.Condition(self._state)  # the watchdog's: a request in flight, or the client failed
        self._work = threading.Condition(self._state)  # the writer's: a frame queued, or the client failed
        self._room = threading.Condition(self._state)  # forward_async's waiting for room in the queue
        self._reader = threading.Thread(target=self._read_loop, name="switchyard-router-data", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="switchyard-router-send", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="switchyard-router-deadlines", daemon=True)
        self._roles = {self._reader: "reader", self._writer: "writer", self._watchdog: "watchdog"}
        for t in self._roles:
            t.start()

    def check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(f"RouterDataClient was created in process {self._pid}; create a client in the child "
                               f"(process {os.getpid()}): its connection and threads belong to the parent")

    def role_of(self, thread: threading.Thread) -> Optional[str]:
        """"reader", "writer" or "watchdog" where `thread` is one of this connection's own (in this process)."""
        if os.getpid() != self._pid:
            return None
        return self._roles.get(thread)

    def in_flight(self) -> int:
        if os.getpid() != self._pid:
            return 0  # nothing of the parent's is in flight here (and its lock may have been held at the fork)
        with self._state:
            return len(self._pending)

    def submit(self, req: router_pb2.ForwardRequest, dtype: str, timeout: Optional[float], bf16_bits: bool,
               owner: object) -> Future:
        self.check_process()
        req.request_id = (1 << 64) - 1  # the widest id: no request sent is larger than the size checked
        size = req.ByteSize()
        if size > self._max:
            raise ValueError(f"hidden: the request of {size} bytes (hidden {list(req.hidden.shape)} "
                             f"{dtype}) is over the data path's limit of {self._max} bytes (max_message_bytes; the "
                             "router's is 512 MiB): send fewer tokens per call")
        fut: Future = Future()
        give_up = time.monotonic() + (_DEFAULT_TIMEOUT if timeout is None else timeout) + _GRACE
        may_wait = threading.current_thread() not in self._roles
        rid = next(self._ids)  # ids only match replies to requests: the order of the frames is the queue's
        req.request_id = rid
        body = req.SerializeToString()
        frame = _LEN.pack(len(body)) + body
        del body
        queued = False
        with self._state:
            if self._failed is not None:
                raise ConnectionError(str(self._failed))
            if not self._pending:
                self._wake.notify()  # the watchdog sleeps while nothing is in flight
            # registered before the frame is queued: the reply may come before the writer is back from sending it
            self._pending[rid] = (fut, bf16_bits, give_up, timeout, owner)
            self._unsent.add(rid)
            try:
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

    def close(self, why: str, join: bool = False) -> None:
        if os.getpid() != self._pid:
            # A child's copy made by fork(): the socket is the parent's too, so no shutdown() (it would end the
            # parent's connection); closing the child's descriptor leaves the parent's as it was. No thread of
            # the parent's runs here, and the state's lock may have been held at the fork: neither is touched.
            try:
                self._sock.close()
            except OSError:
                pass
            return
        self._fail(ConnectionError(f"router data path {self._where}: {why}"))
        if join:
            for t in self._roles:  # not from a Future's callback, which runs on one of them
                if t is not threading.current_thread():
                    t.join(timeout=5)

    def _fits(self, n: int) -> bool:
        return self._queued_bytes == 0 or self._queued_bytes + n <= self._max_queued

    def _write_loop(self) -> None:
        """Writes the queued frames, each whole, in order. Whatever stops a frame part way (an error, the connection
        shut by _fail) fails the connection: the bytes after it could not be framed."""
        while True:
            # an entry taken out of _pending is let go outside the lock: it holds the client that sent the request,
            # whose collection (its finalizer closes the connection, taking the lock) it may be the last to hold up
            dropped = None
            with self._state:
                while not self._queue and self._failed is None:
                    self._work.wait()
                if self._failed is not None:
                    return
                rid, frame = self._queue.popleft()
                entry = self._pending.get(rid)
                cancelled = entry is None or entry[0].cancelled()
                del entry
                if cancelled:  # cancelled before it was sent: not sent at all
                    dropped = self._pending.pop(rid, None)
                    self._unsent.discard(rid)
                    self._queued_bytes -= len(frame)
                    self._room.notify_all()
                else:
                    self._sent_any = True
            if cancelled:
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
            del frame

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

    def _not_a_router(self, head: bytes) -> Optional[str]:
        """Why the connection's first reply header is not a data-path router's, or None where it may be one."""
        if not self._sent_any:
            return "it spoke before any request was sent"  # a router only answers (an HTTP/2 server's SETTINGS)
        if all(0x20 <= b < 0x7F for b in head):
            # text: "HTTP/1.1 400", an HTML page. As a length, at least 0x20202020: over the router's 512 MiB limit
            return "it answers in text (HTTP/1?)"
        if head[0] == 0 and head[1] == 0 and head[3] in (0x04, 0x07):
            return "it answers in HTTP/2"  # a frame header: 24-bit length under 64 KiB, SETTINGS or GOAWAY
        return None

    def _read_loop(self) -> None:
        first = True
        try:
            while True:
                head = self._read_exact(4)
                if head is None:
                    raise _ReadError("connection closed")
                (n,) = _LEN.unpack(head)
                if first:
                    first = False
                    why = self._not_a_router(bytes(head))
                    if why is not None:
                        raise _ReadError(f"not a Switchyard router data port (the gRPC port?): {why}, its first "
                                         f"bytes {bytes(head)!r}")
                if n > self._max:
                    raise _ReadError(f"reply of {n} bytes over the limit of {self._max} (max_message_bytes)")
                body = self._read_exact(n)
                if body is None:
                    raise _ReadError("connection closed in a reply")
                try:
                    res = router_pb2.ForwardResponse.FromString(body)
                except Exception as e:  # noqa: BLE001 - DecodeError: the stream cannot be trusted past it
                    raise _ReadError(f"a reply of {n} bytes that is not a ForwardResponse ({e})") from e
                del body
                rid = res.request_id
                with self._state:
                    entry = self._pending.pop(rid, None)  # let go outside the lock (see _write_loop)
                    late = entry is None and (rid in self._abandoned or 0 < rid <= self._abandoned_floor)
                    self._abandoned.discard(rid)
                if late:  # the answer to a request given up on: nobody waits for it
                    continue
                if entry is None:
                    raise _ReadError(f"reply to request {rid}, which is not in flight")
                fut, bits = entry[0], entry[1]
                del entry  # the client that sent it may be collected once its requests are answered
                # False: the caller cancelled it (asyncio's wrap_future does when the awaiting task is cancelled);
                # setting a result on it would raise here and end the connection for everyone else
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(reply_hidden(res, bits))
                except Exception as e:  # noqa: BLE001 - RouterError, or a reply this client cannot read: its own
                    fut.set_exception(e)
                del fut
        except Exception as e:  # noqa: BLE001 - whatever ended the connection fails what is in flight
            why = str(e) if isinstance(e, _ReadError) else f"reading replies: {type(e).__name__}: {e}"
            err = ConnectionError(f"router data path {self._where}: {why}")
            err.__cause__ = e.__cause__ if isinstance(e, _ReadError) else e
            self._fail(err)

    def _watch(self) -> None:
        """Fails the requests whose router has not answered by their give-up time (their timeout, or the router's
        default, + _GRACE; checked every 0.5 s while any is in flight), and the connection where one of their frames
        is not all written by then (the router stopped reading)."""
        while True:
            with self._state:
                if self._failed is not None:
                    return
                if not self._pending:
                    self._wake.wait()  # woken by the next request, or by _fail
                    continue
                now = time.monotonic()
                late = [rid for rid, entry in self._pending.items() if entry[2] <= now]
                if not late:
                    self._wake.wait(0.5)
                    continue
                # let go outside the lock (each holds the client that sent it: see _write_loop)
                dropped = [self._pending.pop(rid) for rid in late]
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
            gone = [(rid, entry[0], entry[3]) for rid, entry in zip(late, dropped)]
            dropped = None
            for rid, fut, timeout in gone:  # outside the lock: a callback may send the next request
                if fut.set_running_or_notify_cancel():
                    past = "its timeout" if timeout is not None else \
                        f"the router's default deadline of {_DEFAULT_TIMEOUT:g} s (it was sent without a timeout)"
                    fut.set_exception(FutureTimeoutError(
                        f"router data path {self._where}: request {rid} not answered {_GRACE:g} s past {past} "
                        + ("(its frame was never all sent: the router stopped reading)" if rid in stalled
                           else "(the router is stalled or unreachable)")))
            gone = fut = None
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
        for entry in pending:
            if entry[0].set_running_or_notify_cancel():
                entry[0].set_exception(err)


class _ReadError(Exception):
    """What ended the reading of replies, said by the reader (the client's ConnectionError prefixes the router)."""
