// A worker thread of generateCheckpoint({ threads }): writes the one shard in its workerData, then says so.

import { parentPort, workerData } from "node:worker_threads";
import { type ShardJob, writeShard } from "./generate.js";

if (parentPort && workerData) {
  await writeShard(workerData as ShardJob);
  parentPort.postMessage("done");
}
