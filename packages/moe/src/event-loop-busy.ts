// The JavaScript thread's busy time as a Prometheus counter. The router and the workers each run their hot path on
// one event loop; process CPU cannot tell a saturated loop from helper threads (the router's gate and combine
// threads, the CUDA worker's run thread), so the rate of this counter is the signal: near 1, more replicas help and
// nothing else will (bench/results/h200-moe.md, "End to end": the router's loop bounded the local mode near 0.9).

import { performance } from "node:perf_hooks";

/** What the collector needs of a prom-client Counter. */
export interface IncOnly {
  inc(value: number): void;
}

/**
 * A prom-client Counter's collect(): adds the event loop's busy seconds since the previous scrape, so that
 * rate(counter[w]) is the loop's utilization (0..1) over w. Each registry's counter starts at its creation.
 */
export function eventLoopBusyCollector(
  now: () => number = () => performance.eventLoopUtilization().active,
): (this: IncOnly) => void {
  let last = now();
  return function (this: IncOnly): void {
    const active = now();
    if (active > last) this.inc((active - last) / 1000);
    last = active;
  };
}
