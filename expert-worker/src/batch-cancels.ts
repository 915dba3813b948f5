// ExpertBatch.cancel on one stream or data connection: the batches in flight on it by batch_id, so that a router
// whose requests all ended can take their batches out of the worker's queue instead of leaving the worker to compute
// results nobody reads (the queue answers an aborted waiting job without running it; a running one gets the abort).
// Pure bookkeeping: the gRPC stream (server.ts) and the data path (data-server.ts) call it.

import { cancelled, type ExpertBatch } from "@switchyard/protocol";

/** A message that only cancels: no tokens and no slices. It gets no reply of its own. */
export function isCancelOnly(batch: ExpertBatch): boolean {
  return batch.cancel.length > 0 && batch.tokens === undefined && batch.slices.length === 0;
}

export class InFlightBatches {
  private readonly byId = new Map<bigint, AbortController>();

  /** Batches registered and not yet released. */
  get size(): number {
    return this.byId.size;
  }

  /**
   * Registers batch `id` until `release()` (call it once the batch is answered). Its signal aborts when a later
   * message cancels the id. A router reuses no id on a connection; if one did, a cancel reaches the latest batch.
   */
  track(id: bigint): { signal: AbortSignal; release: () => void } {
    const ac = new AbortController();
    this.byId.set(id, ac);
    return {
      signal: ac.signal,
      release: () => {
        if (this.byId.get(id) === ac) this.byId.delete(id);
      },
    };
  }

  /** Aborts each named batch still in flight with CANCELLED; ids unknown here (answered already, never sent) do nothing. Returns how many it reached. */
  cancel(ids: readonly bigint[]): number {
    let reached = 0;
    for (const id of ids) {
      const ac = this.byId.get(id);
      if (!ac) continue;
      this.byId.delete(id);
      ac.abort(cancelled(`batch ${id} cancelled by the router (ExpertBatch.cancel): no request waits for it`));
      reached++;
    }
    return reached;
  }
}
