// V8 flags the router process runs with (docker/router.Dockerfile, local mode, bench:router).
//
// --initial-heap-size=256: the router's JavaScript heap is small (~16 MB), and V8 sizes its old-generation limit
// from the live heap. Every request holds its received message (and its fp32 scratch, results, promises) across a
// worker round trip, so a little of each survives a scavenge; with a 16 MB heap that refilled the old-generation
// limit about every 100 ms, and each refill cost a full mark-compact (15% of the router's CPU in `perf` at
// 16 tokens x 4096 bf16, router CPU per request 1775 µs -> 683 µs with the flag, bench:router). The flag only
// raises the limit the heap starts with; memory is still taken as used.
export const ROUTER_NODE_FLAGS: readonly string[] = ["--initial-heap-size=256"];
