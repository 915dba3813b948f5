"""The data-path client against routers of its own that misbehave, over local sockets (no real router): a send
interrupted part way, a router that stops reading, a Future's callback sending while the writer is blocked, the
bound on frames queued, a reply header that lies about its length, and the ids of requests given up on. Run on its
own (python3 tests/check_data_path.py, prints "N passed, 0 failed") and by check_router.py, which the router's vitest
runs (router-service/src/data-server.python.test.ts)."""

from __future__ import annotations

import signal
import socket
import struct
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import router_pb2  # noqa: E402
import switchyard_client.data_path as data_path  # noqa: E402
from switchyard_client import RouterDataClient  # noqa: E402

MiB = 1 << 20


class FakeRouter:
    """Accepts one connection, reads the preface, waits `start` seconds (a busy router, or its read gate paused it;
    None: never reads again), then reads frames and answers each with its own hidden states, unless `answer` is
    False (then release() answers those held). After the first frame it may stop reading for `pause` seconds."""

    def __init__(self, start: float | None = 0.0, pause: float = 0.0, answer: bool = True):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.start, self.pause, self.answer = start, pause, answer
        self.seen: list = []  # request ids in the order read, or ("malformed", why)
        self.held: list = []
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _reply(self, req: router_pb2.ForwardRequest) -> None:
        body = router_pb2.ForwardResponse(request_id=req.request_id, hidden=req.hidden).SerializeToString()
        with self.lock:
            self.conn.sendall(struct.pack("<I", len(body)) + body)

    def release(self) -> None:
        held, self.held = self.held, []
        for req in held:
            self._reply(req)

    def _serve(self) -> None:
        self.conn, _ = self.srv.accept()
        f = self.conn.makefile("rb")
        f.read(8)
        if self.start is None:
            return  # hung: reads nothing more (the socket stays open)
        time.sleep(self.start)
        try:
            while True:
                head = f.read(4)
                if len(head) < 4:
                    return
                (n,) = struct.unpack("<I", head)
                if n > 64 * MiB:
                    self.seen.append(("malformed", f"a length of {n}"))
                    return
                try:
                    req = router_pb2.ForwardRequest.FromString(f.read(n))
                except Exception as e:  # noqa: BLE001
                    self.seen.append(("malformed", str(e)[:80]))
                    return
                self.seen.append(req.request_id)
                if self.answer:
                    self._reply(req)
                else:
                    self.held.append(req)
                if len(self.seen) == 1 and self.pause:
                    time.sleep(self.pause)
        except OSError:
            return

    def close(self) -> None:
        self.srv.close()
        if self.conn is not None:
            self.conn.close()


def h(rows: int, d: int = 4096) -> np.ndarray:
    return np.arange(rows * d, dtype=np.float32).reshape(rows, d) % 251


def interrupted_send() -> None:
    """A signal handler's exception (the caller's own timeout by signal.alarm; KeyboardInterrupt the same) while a
    32 MiB request is being sent to a router that reads nothing for 1 s: the next request is framed right (the router
    reads both) and answered, and nothing is left in flight."""
    r = FakeRouter(start=1.0)
    c = RouterDataClient("127.0.0.1", r.port)

    def alarm(*_):
        raise TimeoutError("the caller's own timeout (signal.alarm)")

    big = h(2048)
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        c.forward_async("p", 0, big)
        time.sleep(2)  # where the alarm lands if the call returned first
    except (TimeoutError, ConnectionError):  # the alarm's; or the client's, naming it
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    try:
        y = c.forward("p", 0, h(1), timeout=5)
        assert np.array_equal(y, h(1)), "the answer after an interrupted send is not the request's"
        assert not any(isinstance(s, tuple) for s in r.seen), f"the router read a misframed request: {r.seen}"
        assert c._failed is None, c._failed
        deadline = time.monotonic() + 5
        while c.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.in_flight == 0, f"{c.in_flight} requests left in flight after an interrupted send"
    finally:
        c.close()
        r.close()


class HalfSend:
    """The client's socket, except that sendall writes half of a frame and then raises (KeyboardInterrupt: not an
    OSError)."""

    def __init__(self, sock: socket.socket):
        self._real = sock

    def sendall(self, data) -> None:
        self._real.sendall(memoryview(data)[: len(data) // 2])
        raise KeyboardInterrupt("interrupted half way through a frame")

    def __getattr__(self, name):
        return getattr(self._real, name)


def send_failing_half_way() -> None:
    """A send that stops half way through a frame, whatever stopped it, fails the connection: the requests in flight
    and every later call with ConnectionError, none left in flight (the bytes after half a frame are misframed)."""
    r = FakeRouter(answer=False)
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        first = c.forward_async("p", 0, h(1))
        deadline = time.monotonic() + 5
        while r.seen != [1] and time.monotonic() < deadline:
            time.sleep(0.01)
        c._sock = HalfSend(c._sock)
        try:
            second = c.forward_async("p", 0, h(64))
            futures.wait([first, second], timeout=5)
            errors = [f.exception(0) if f.done() else None for f in (first, second)]
        except BaseException as e:  # noqa: BLE001 - the caller's thread must not see the writer's error
            raise AssertionError(f"forward_async raised {e!r}: the send happened on the caller's thread") from None
        assert all(isinstance(e, ConnectionError) for e in errors), f"requests in flight were not failed: {errors}"
        assert c.in_flight == 0, c.in_flight
        try:
            c.forward_async("p", 0, h(1))
            raise AssertionError("a connection with half a frame on it sent the next request")
        except ConnectionError:
            pass
    finally:
        c.close()
        r.close()


def router_not_reading() -> None:
    """A router that stops reading (hung; or its read gate paused the connection for good): a 64 MiB forward() with
    a timeout raises TimeoutError its grace past the timeout, not never; forward_async from another thread returns
    its Future at once meanwhile; the frame cannot be finished, so the connection fails (ConnectionError after)."""
    grace, data_path._GRACE = data_path._GRACE, 0.3
    r = FakeRouter(start=None)
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        got: dict = {}
        big = h(4096)  # 64 MiB: more than the socket buffers on both sides take

        def call() -> None:
            t0 = time.monotonic()
            try:
                c.forward("p", 0, big, timeout=0.2)
                got["r"] = "answered"
            except BaseException as e:  # noqa: BLE001
                got["r"] = e
            got["t"] = time.monotonic() - t0

        t = threading.Thread(target=call, daemon=True)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        other = c.forward_async("p", 0, h(1), timeout=0.2)
        assert time.monotonic() - t0 < 0.5, "forward_async waited on another thread's send"
        t.join(10)
        assert not t.is_alive(), "forward() with a timeout still blocked on a router that does not read"
        assert isinstance(got["r"], futures.TimeoutError) and got["t"] < 5, got
        assert isinstance(other.exception(5), (ConnectionError, futures.TimeoutError)), other.exception(0)
        assert c.in_flight == 0, c.in_flight
        try:
            c.forward_async("p", 0, h(1))
            raise AssertionError("sent after a frame was left part way")
        except ConnectionError:
            pass
    finally:
        data_path._GRACE = grace
        c.close()
        r.close()


def callback_sends_while_writer_blocked() -> None:
    """A Future's callback (it runs on the client's reader thread) that sends the next request while the writer is
    blocked in a 32 MiB send to a router that stopped reading for a while: forward_async returns at once (replies
    go on being read), and every request is answered once the router reads again."""
    r = FakeRouter(pause=1.5)
    c = RouterDataClient("127.0.0.1", r.port, max_queued_bytes=MiB)
    try:
        sent: dict = {}

        def on_done(_f) -> None:
            t0 = time.monotonic()
            sent["fut"] = c.forward_async("p", 0, h(3))
            sent["t"] = time.monotonic() - t0

        first = c.forward_async("p", 0, h(1))
        first.add_done_callback(on_done)
        big = c.forward_async("p", 0, h(2048))
        assert np.array_equal(first.result(5), h(1))
        assert np.array_equal(big.result(10), h(2048))
        assert sent["t"] < 0.5, f"forward_async in a callback waited {sent['t']:.2f} s (the reader stopped)"
        assert np.array_equal(sent["fut"].result(5), h(3))
    finally:
        c.close()
        r.close()


def queue_bounded() -> None:
    """Frames queued and not yet written stay within max_queued_bytes: with a router that reads nothing for 1 s, the
    first 16 MiB request is queued at once, the next ones wait for room; all go out in order and are answered."""
    r = FakeRouter(start=1.0)
    c = RouterDataClient("127.0.0.1", r.port, max_queued_bytes=4 * MiB)
    try:
        t0 = time.monotonic()
        futs = [c.forward_async("p", 0, h(1024 + k)) for k in range(3)]
        waited = time.monotonic() - t0
        assert c._queued_bytes <= 4 * MiB + 17 * MiB, c._queued_bytes
        assert waited > 0.5, f"3 requests of 16 MiB queued at once past a bound of 4 MiB ({waited:.2f} s)"
        for k, f in enumerate(futs):
            assert np.array_equal(f.result(10), h(1024 + k))
        assert r.seen == [1, 2, 3], r.seen
    finally:
        c.close()
        r.close()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def lying_header() -> None:
    """A reply header claiming 400 MiB followed by a few bytes costs the client what came, not 400 MiB at once."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list = []

    def serve() -> None:
        s, _ = srv.accept()
        conns.append(s)
        s.recv(8)
        s.sendall(struct.pack("<I", 400 * MiB) + bytes(16))

    threading.Thread(target=serve, daemon=True).start()
    before = rss()
    c = RouterDataClient("127.0.0.1", srv.getsockname()[1])
    try:
        time.sleep(0.5)
        grew = rss() - before
        assert grew < 64 * MiB, f"a header claiming 400 MiB took {grew / MiB:.0f} MiB"
    finally:
        c.close()
        srv.close()
        for s in conns:
            s.close()


def abandoned_bounded() -> None:
    """The ids of requests given up on are kept so that their late answers are dropped, but not without bound: past
    the cap the oldest are forgotten and their answers dropped all the same; the connection serves on. Closed, the
    client keeps none."""
    grace, data_path._GRACE = data_path._GRACE, 0.1
    cap, data_path._MAX_ABANDONED = data_path._MAX_ABANDONED, 4
    r = FakeRouter(answer=False)
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        futs = [c.forward_async("p", 0, h(1, 8), timeout=0.05) for _ in range(10)]
        for f in futs:
            assert isinstance(f.exception(5), futures.TimeoutError), f.exception(0)
        assert len(c._abandoned) <= 4, f"{len(c._abandoned)} ids given up on kept past the cap of 4"
        r.answer = True
        r.release()  # all 10 answers, late
        assert np.array_equal(c.forward("p", 0, h(2, 8), timeout=5), h(2, 8)), "late answers broke the connection"
        assert c.in_flight == 0
    finally:
        data_path._GRACE, data_path._MAX_ABANDONED = grace, cap
        c.close()
        r.close()
    assert not c._abandoned, "a closed client still keeps ids given up on"


CHECKS = (interrupted_send, send_failing_half_way, router_not_reading, callback_sends_while_writer_blocked,
          queue_bounded, lying_header, abandoned_bounded)


def run_all(verbose: bool = False) -> list:
    failed = []
    for check in CHECKS:
        t0 = time.monotonic()
        try:
            check()
            if verbose:
                print(f"ok   {check.__name__} ({time.monotonic() - t0:.1f} s)")
        except Exception as e:  # noqa: BLE001
            failed.append(f"{check.__name__}: {e!r}")
            if verbose:
                print(f"FAIL {check.__name__}: {e!r}")
    return failed


if __name__ == "__main__":
    failed = run_all(verbose=True)
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
