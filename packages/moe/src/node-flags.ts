// V8 flags for Switchyard's data-path processes: the router and the expert workers. Every launcher puts them before
// the script: the images' ENTRYPOINTs, the operator's worker pods, local mode and the benchmarks.
//
// --initial-heap-size=256: these processes have small JavaScript heaps (~16 MB) and V8 sizes its old-generation
// limit from the live heap. Each request or batch keeps its received message (and promises, scratch) alive across a
// round trip, so a little of each survives a scavenge; with a 16 MB heap that refilled the old-generation limit about
// every 100 ms, and each refill cost a full mark-compact: 15% of the router's CPU at 16-token requests in `perf`
// (router CPU per request 1775 -> 683 µs with the flag), and the benchmark's no-op worker swung between 270 and
// 870 µs per 128 KiB batch without it against ~280 with it (bench:router). The flag raises only the limit the heap
// starts with; memory is still taken as used.
export const DATA_PATH_NODE_FLAGS: readonly string[] = ["--initial-heap-size=256"];
