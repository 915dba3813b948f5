// A model for router tests whose requests come pre-routed (ForwardRequest.gate.assignment): the gate is never asked,
// and asking it throws.
import type { PoolModel } from "../model.js";

export function preRoutedToy(experts: number, hiddenSize: number): PoolModel {
  const preRouted = () => {
    throw new Error("pre-routed only");
  };
  return {
    family: "toy",
    layers: 1,
    experts,
    hiddenSize,
    hasShared: false,
    isMoeLayer: () => true,
    logits: preRouted,
    route: preRouted,
    shared: () => null,
  } as unknown as PoolModel;
}
