"""Forward calls per second from one Python process through the data-path client and the gRPC client, side by side
in alternating windows against the same router (bench/python-client.ts starts it and reads the JSON printed here).
Usage: python3 bench/forward_rate.py HOST DATA_PORT GRPC_PORT POOL D T IN_FLIGHT SECONDS ROUNDS"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard_client import RouterDataClient  # noqa: E402
from switchyard_client.grpc_client import RouterGrpcClient  # noqa: E402

host, data_port, grpc_port, pool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
D, T, in_flight, seconds, rounds = (int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]),
                                    int(sys.argv[9]))
h = np.random.default_rng(1).standard_normal((T, D), dtype=np.float32)


def window(client, secs: float) -> float:
    """Calls/s with `in_flight` requests kept in flight (a new one sent as each answer comes)."""
    end = time.perf_counter() + secs
    t0 = time.perf_counter()
    done = 0
    futs = [client.forward_async(pool, 0, h, dtype="bf16") for _ in range(in_flight)]
    while futs:
        f = futs.pop(0)
        f.result(30)
        done += 1
        if time.perf_counter() < end:
            futs.append(client.forward_async(pool, 0, h, dtype="bf16"))
    return done / (time.perf_counter() - t0)


with RouterDataClient(host, data_port) as data, RouterGrpcClient(f"{host}:{grpc_port}") as grpc_client:
    window(data, 1.0)  # warm-up: the router's JIT and both connections
    window(grpc_client, 1.0)
    out = []
    for k in range(rounds):
        order = [("data", data), ("grpc", grpc_client)] if k % 2 == 0 else [("grpc", grpc_client), ("data", data)]
        r = {name: window(c, seconds) for name, c in order}
        out.append(r)
print(json.dumps(out))
