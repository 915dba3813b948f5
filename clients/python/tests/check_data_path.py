"""The data-path client against routers of its own that misbehave, over local sockets (no real router): a send
interrupted part way, a router that stops reading, a Future's callback sending while the writer is blocked, the
bound on frames queued, a reply header that lies about its length, the ids of requests given up on, a router that
never answers a request sent without a timeout, a client inherited by a fork()ed child, forward() on the client's own
thread, a client dropped without close(), and errors that name the router (a gRPC or HTTP port, a corrupt reply, a
reset connection). Run on its own (python3 tests/check_data_path.py, prints "N passed, 0 failed") and by
check_router.py, which the router's vitest runs (router-service/src/data-server.python.test.ts)."""

from __future__ import annotations

import gc
import http.server
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import warnings
import weakref
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
        assert c._conn._failed is None, c._conn._failed
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
        c._conn._sock = HalfSend(c._conn._sock)
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
        assert c._conn._queued_bytes <= 4 * MiB + 17 * MiB, c._conn._queued_bytes
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
        assert len(c._conn._abandoned) <= 4, f"{len(c._conn._abandoned)} ids given up on kept past the cap of 4"
        r.answer = True
        r.release()  # all 10 answers, late
        assert np.array_equal(c.forward("p", 0, h(2, 8), timeout=5), h(2, 8)), "late answers broke the connection"
        assert c.in_flight == 0
    finally:
        data_path._GRACE, data_path._MAX_ABANDONED = grace, cap
        c.close()
        r.close()
    assert not c._conn._abandoned, "a closed client still keeps ids given up on"


def no_timeout_gives_up() -> None:
    """A request sent without a timeout to a router that never answers (hung with its connection open) fails with
    TimeoutError the grace past the router's default deadline (both shortened here), forward() as forward_async:
    not never."""
    saved = getattr(data_path, "_DEFAULT_TIMEOUT", 30.0), data_path._GRACE
    data_path._DEFAULT_TIMEOUT, data_path._GRACE = 0.2, 0.3
    r = FakeRouter(answer=False)
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        got: dict = {}

        def call() -> None:
            try:
                got["r"] = c.forward("p", 0, h(1))
            except BaseException as e:  # noqa: BLE001
                got["r"] = e

        t = threading.Thread(target=call, daemon=True)
        t0 = time.monotonic()
        t.start()
        t.join(5)
        assert not t.is_alive(), "forward() without a timeout still waits on a router that never answers"
        assert isinstance(got["r"], futures.TimeoutError) and "default" in str(got["r"]), got
        assert 0.4 <= time.monotonic() - t0 < 3, time.monotonic() - t0
        assert c.in_flight == 0, c.in_flight
    finally:
        data_path._DEFAULT_TIMEOUT, data_path._GRACE = saved
        c.close()
        r.close()


def _in_child(c: RouterDataClient, action) -> str:
    """Runs action(c) in a child made by fork() and returns what it printed (its outcome), or "hung" after 5 s."""
    rd, wr = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads: what is tested
        pid = os.fork()
    if pid == 0:
        try:
            try:
                out = f"ok {action(c)!r}"
            except BaseException as e:  # noqa: BLE001
                out = f"{type(e).__name__}: {e}"
            os.write(wr, out.encode()[:4000])
        finally:
            os._exit(0)
    os.close(wr)
    try:
        if not select.select([rd], [], [], 5)[0]:
            os.kill(pid, signal.SIGKILL)
            return "hung"
        return os.read(rd, 4096).decode()
    finally:
        os.close(rd)
        os.waitpid(pid, 0)


def forked_child() -> None:
    """A client inherited by a child made by fork() (multiprocessing's default on Linux): the child's close() (a
    `with` block unwinding, its garbage collection) leaves the parent's connection serving, and a call in the child
    raises RuntimeError at once, naming the process, instead of waiting forever (the child has none of the client's
    threads)."""
    r = FakeRouter()
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        assert np.array_equal(c.forward("p", 0, h(1, 8), timeout=5), h(1, 8))
        out = _in_child(c, lambda c: c.close())
        assert out == "ok None", out
        time.sleep(0.1)
        assert np.array_equal(c.forward("p", 0, h(2, 8), timeout=5), h(2, 8)), "the child's close() ended it"
        out = _in_child(c, lambda c: c.forward("p", 0, h(1, 8), timeout=1))
        assert out.startswith(f"RuntimeError: RouterDataClient was created in process {os.getpid()}; create a "
                              "client in the child"), out
        out = _in_child(c, lambda c: c.forward_async("p", 0, h(1, 8)))
        assert out.startswith("RuntimeError: RouterDataClient was created in process"), out
        assert np.array_equal(c.forward("p", 0, h(3, 8), timeout=5), h(3, 8)), "the child's calls broke the parent's"
    finally:
        c.close()
        r.close()


def blocking_forward_in_callback() -> None:
    """forward() in a Future's callback (the client's reader thread) would wait for a reply that the thread it
    blocks must read: RuntimeError at once, and the connection goes on serving."""
    grace, data_path._GRACE = data_path._GRACE, 0.3
    r = FakeRouter(answer=False)
    c = RouterDataClient("127.0.0.1", r.port)
    try:
        got: dict = {}

        def on_done(_f) -> None:
            try:
                got["r"] = c.forward("p", 0, h(1, 8), timeout=0.5)
            except BaseException as e:  # noqa: BLE001
                got["r"] = e

        fut = c.forward_async("p", 0, h(1, 8))
        fut.add_done_callback(on_done)  # not done yet: it runs on the reader thread
        deadline = time.monotonic() + 5
        while not r.held and time.monotonic() < deadline:
            time.sleep(0.01)
        r.answer = True
        r.release()
        fut.result(5)
        deadline = time.monotonic() + 5
        while "r" not in got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(got.get("r"), RuntimeError) and "use forward_async" in str(got["r"]), got
        t0 = time.monotonic()
        assert np.array_equal(c.forward("p", 0, h(2, 8), timeout=5), h(2, 8))
        assert time.monotonic() - t0 < 0.5, "the reader thread was stalled"
    finally:
        data_path._GRACE = grace
        c.close()
        r.close()


def dropped_client_collected() -> None:
    """A client dropped without close() is collected (its threads hold its connection, not it) and closes its
    connection: the router sees it closed, the threads end. One with a request in flight is not collected under
    it; one whose last request is given up on is collected then, on the watchdog's thread (no deadlock there)."""
    first, r, silent = FakeRouter(), FakeRouter(), FakeRouter(answer=False)
    before = threading.active_count()
    grace, data_path._GRACE = data_path._GRACE, 0.1
    try:
        fut = RouterDataClient("127.0.0.1", silent.port).forward_async("p", 0, h(1, 8), timeout=0.05)
        assert isinstance(fut.exception(5), futures.TimeoutError), fut.exception(0)
        silent.conn.settimeout(5)
        assert silent.conn.recv(1 << 16) == b"", "the dropped client's connection is still open"
        fut = RouterDataClient("127.0.0.1", first.port).forward_async("p", 0, h(1, 8))  # the client dropped at once
        assert np.array_equal(fut.result(5), h(1, 8)), "a request in flight failed when its client was dropped"
        del fut
        gc.collect()
        c = RouterDataClient("127.0.0.1", r.port)
        c.forward("p", 0, h(1, 8), timeout=5)
        ref = weakref.ref(c)
        del c
        gc.collect()
        assert ref() is None, "a client dropped without close() is never collected"
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() <= before, [t.name for t in threading.enumerate()]
        r.conn.settimeout(5)
        assert r.conn.recv(1) == b"", "the router's connection is still open"
    finally:
        data_path._GRACE = grace
        first.close()
        r.close()
        silent.close()


def _expect_connection_error(port: int, *wanted: str) -> None:
    c = RouterDataClient("127.0.0.1", port)
    try:
        try:
            err = c.forward_async("p", 0, h(2, 8), timeout=5).exception(10)
        except ConnectionError as e:  # failed already (a server that speaks first)
            err = e
        assert isinstance(err, ConnectionError), repr(err)
        for w in wanted:
            assert w in str(err), f"{w!r} not in {str(err)!r}"
    finally:
        c.close()


def not_a_router() -> None:
    """Pointed at the router's gRPC port (HTTP/2), or at an HTTP server, the client says that it is not a router's
    data port, not "connection closed in a reply" or "a reply of 1347703880 bytes"."""
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _expect_connection_error(port, f"router data path 127.0.0.1:{port}: not a Switchyard router data port")
    finally:
        server.stop(0)
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    try:
        _expect_connection_error(httpd.server_address[1], "not a Switchyard router data port", "text")
    finally:
        httpd.server_close()


def reply_errors_named() -> None:
    """A reply that is not a ForwardResponse, and a connection reset by the router, fail the requests with a
    ConnectionError naming the router's data path (host:port) and what happened."""

    def serve(srv: socket.socket, then) -> None:
        s, _ = srv.accept()
        f = s.makefile("rb")
        f.read(8)
        f.read(struct.unpack("<I", f.read(4))[0])
        then(s)

    def garbage(s: socket.socket) -> None:
        s.sendall(struct.pack("<I", 5) + b"\xff" * 5)
        time.sleep(2)

    def reset(s: socket.socket) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    for then, wanted in ((garbage, "not a ForwardResponse"), (reset, "reset")):
        srv = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=serve, args=(srv, then), daemon=True).start()
        try:
            _expect_connection_error(srv.getsockname()[1], f"router data path 127.0.0.1:{srv.getsockname()[1]}: ",
                                     wanted)
        finally:
            srv.close()


CHECKS = (interrupted_send, send_failing_half_way, router_not_reading, callback_sends_while_writer_blocked,
          queue_bounded, lying_header, abandoned_bounded, no_timeout_gives_up, forked_child,
          blocking_forward_in_callback, dropped_client_collected, not_a_router, reply_errors_named)


def run_checks(checks, verbose: bool = False) -> list:
    """Runs each check, returning 'name: error' for those that raised (check_client.py runs its own through it)."""
    failed = []
    for check in checks:
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


def run_all(verbose: bool = False) -> list:
    return run_checks(CHECKS, verbose)


if __name__ == "__main__":
    failed = run_all(verbose=True)
    print(f"{len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
