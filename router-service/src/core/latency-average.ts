// The router's own latency reading of one worker: the EWMA of its dispatch round trips, and how much the replica
// choice (core/replicas.ts) should still believe it. Pure: the caller passes the clock.
//
// Why the belief fades with wall time: a worker's average is sampled only when it answers a batch, and the replica
// choice sends batches away from a worker that reads slow. One slow sample (a cold start, a GC pause, one big batch)
// would then keep a redundant copy out of every choice for good, its average never corrected, and the planner's
// assumption that each expert's tokens split evenly over its copies would fail. So an average counts for half as
// much every LATENCY_HALF_LIFE_MS it goes unsampled: the choice scales the worker's latency penalty by that weight
// (it fades towards the fastest candidate's reading, never below it: an idle worker must not look fastest and draw
// every batch), and the next sample outweighs the stale average by as much, so the one batch that a faded penalty
// lets through corrects it at once. A worker that is really slow reads slow again from that sample. A worker with
// traffic is sampled every few ms, far inside a half-life, so its weight stays near 1.

/** A latency EWMA and when it was last sampled or failed (performance.now() ms). ms = 0: no sample yet. */
export interface LatencyAverage {
  ms: number;
  at: number;
}

/** How long an unsampled average takes to count half as much (ms). Short enough that a copy frozen out by one slow
 * sample is back within a second or two; long against the few ms between samples of a worker that has traffic. */
export const LATENCY_HALF_LIFE_MS = 250;

/** Weight of a new sample in the EWMA of a worker sampled just before. */
const SAMPLE_WEIGHT = 0.2;

/** The most an answered batch's round trip counts for, as a multiple of the average it joins (see withSample). */
const OUTLIER_CAP = 2;

export const NO_LATENCY: LatencyAverage = { ms: 0, at: 0 };

/** How much an average sampled `ageMs` ago still counts, in (0, 1]: halved every halfLifeMs. */
export function latencyWeight(ageMs: number, halfLifeMs = LATENCY_HALF_LIFE_MS): number {
  return ageMs > 0 ? 2 ** (-ageMs / halfLifeMs) : 1;
}

/**
 * The average after an answered batch's round trip of `sampleMs` at `now`: the old average keeps its EWMA share
 * times its weight (the first sample is taken as it is). The sample counts as at most OUTLIER_CAP times the old
 * average, so one slow answer at most doubles it (by 20% while it is fresh): a pause that
 * stalls every worker at once (a GC, the machine descheduling the router) lands on whichever workers had batches in
 * flight, and read as it is it would make them look tens of times slower than one that had none. A worker that
 * is really slower still climbs 20% a sample, within a few ms of its traffic; one that stops answering is
 * sampled by its timeouts (withTimeout), uncapped.
 */
export function withSample(
  avg: LatencyAverage,
  sampleMs: number,
  now: number,
  halfLifeMs = LATENCY_HALF_LIFE_MS,
): LatencyAverage {
  return blend(avg, avg.ms === 0 ? sampleMs : Math.min(sampleMs, OUTLIER_CAP * avg.ms), now, halfLifeMs);
}

/**
 * The average after a batch unanswered for `waitedMs`: taken as it is (no OUTLIER_CAP), so a worker that stops
 * answering looks slow at once instead of keeping its old, fast average.
 */
export function withTimeout(
  avg: LatencyAverage,
  waitedMs: number,
  now: number,
  halfLifeMs = LATENCY_HALF_LIFE_MS,
): LatencyAverage {
  return blend(avg, waitedMs, now, halfLifeMs);
}

/** `valueMs` moved into the average: all of it into none, SAMPLE_WEIGHT of it into a fresh one, more as it ages. */
function blend(avg: LatencyAverage, valueMs: number, now: number, halfLifeMs: number): LatencyAverage {
  if (avg.ms === 0) return { ms: valueMs, at: now };
  const keep = (1 - SAMPLE_WEIGHT) * latencyWeight(now - avg.at, halfLifeMs);
  return { ms: keep * avg.ms + (1 - keep) * valueMs, at: now };
}

/**
 * The average after a failed batch at `now`: doubled (from at least 1 ms, up to maxMs) instead of sampled, so a
 * fast error does not make a failing worker look fastest, and counted as fresh. Its penalty then fades like any
 * other; a worker that fails again each time it is tried doubles it each time, so its penalty takes a half-life
 * longer to fade each time (up to maxMs): a broken worker costs a retried batch every few seconds, not every
 * half-life.
 */
export function withFailure(avg: LatencyAverage, now: number, maxMs: number): LatencyAverage {
  return { ms: Math.min(maxMs, Math.max(avg.ms, 1) * 2), at: now };
}
