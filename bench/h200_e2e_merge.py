"""Adds the end-to-end run's figures (bench/h200_e2e.sh's e2e-<size>.log: router + one cuda worker serving a
generated checkpoint) to the benchmark's results file, so h200-moe.json carries the tokens/s beside the kernel rows.
Usage: python3 bench/h200_e2e_merge.py path/to/h200-moe.json path/to/e2e-tiny.log [log path to record] [--key KEY]
(KEY: the results' key, default e2e; the full-size runs go under e2e_full as a list, one entry per run)."""

import json
import re
import sys


def parse(text):
    """The summary lines of bench/e2e output -> a dict; raises if the run did not finish with its OK line."""
    def grab(pattern, cast=str):
        m = re.search(pattern, text, re.M)
        if not m:
            raise ValueError(f"e2e log: no line matching {pattern!r}")
        return cast(m.group(1))

    sampled = re.search(r"^OK: every checked answer matched the reference \((\d+) of (\d+) checked\)", text, re.M)
    if "OK: every answer matched the reference" not in text and not sampled:
        raise ValueError("e2e log: the run did not report every answer matching the reference")
    out = {
        "model": grab(r"^model\s+(.+)$").strip(),
        "backend": grab(r"backend: (cuda[^\n]*)").strip(),
        "transport": grab(r"^router -> worker transport\s+(.+)$").strip(),
        "tokens_per_s": grab(r"^tokens/s\s+([0-9.]+)", float),
        "latency_p50_p99_ms": [
            float(v) for v in re.findall(r"([0-9.]+) ms", grab(r"^latency per forward p50 / p99\s+(.+)$"))
        ],
        "answers_verified": grab(r"^answers verified / wrong\s+(\d+)", int),
        "answers_wrong": grab(r"^answers verified / wrong\s+\d+ / (\d+)", int),
        "worst_relerr": grab(r"worst relative error ([0-9.e+-]+)", float),
        "tokens_per_expert_call": grab(r"^tokens per expert call \(mean\)\s+([0-9.]+)", float),
        "cache_hit_ratio": grab(r"^cache hit ratio\s+(.+)$").strip(),
    }
    if sampled:  # --verify sample: the answers the reference threads were free for, out of all answers
        out["answers_total"] = int(sampled.group(2))
    conc = re.search(r"^workers / concurrency\s+\d+ / (\d+) sequences", text, re.M)
    if conc:
        out["concurrency"] = int(conc.group(1))
    # how the drivers (the engines) reached the router: its TCP data path or gRPC (logs since 2026-11-30 09:00 UTC;
    # every run before used gRPC ForwardStreams)
    engine = re.search(r"^driving load: .*, to the router by (its TCP data path|gRPC ForwardStreams)$", text, re.M)
    if engine:
        out["engine_transport"] = "data" if engine.group(1).startswith("its") else "grpc"
    shared = re.search(r"^shared expert\s+(.+)$", text, re.M)  # where the shared expert ran (families with one)
    if shared:
        out["shared_expert"] = shared.group(1).strip()
    cpu = re.search(r"^CPU during the load \(cores\)\s+(.+)$", text, re.M)
    if cpu:
        out["cpu_cores"] = {k.strip(): float(v) for k, v in re.findall(r"([A-Za-z0-9][^,(]*(?:\([^)]*\))?) ([0-9.]+)", cpu.group(1))}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    key = "e2e"
    if "--key" in args:
        i = args.index("--key")
        key = args[i + 1]
        del args[i : i + 2]
    res_path, log_path = args[0], args[1]
    e2e = parse(open(log_path).read())
    e2e["log"] = args[2] if len(args) > 2 else log_path
    res = json.load(open(res_path))
    if key == "e2e":
        res[key] = e2e
    else:
        res[key] = [r for r in res.get(key, []) if r.get("log") != e2e["log"]] + [e2e]
    with open(res_path, "w") as f:
        json.dump(res, f, indent=1)
    print("e2e merged:", e2e["tokens_per_s"], "tokens/s,", e2e["answers_verified"], "verified,",
          e2e["answers_wrong"], "wrong")
