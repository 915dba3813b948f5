// Downloads a Hugging Face-layout safetensors checkpoint named by an ExpertPool's spec.model.checkpoint.uri: the
// whole of it for a worker (fetchCheckpoint), or only the tensors the router reads, by HTTP Range requests
// (fetchCheckpointTensors). Both run in a pod's initContainer, so they must survive being killed at any point: every
// file is written under a name that is not its own and renamed when whole, and a marker file records the uri and the
// version of each file fetched (the commit of an hf:// revision, else each file's ETag or Last-Modified), so a
// restarted pod resumes only from the same version and a finished one returns without a request (its files checked
// on the disk: one removed or damaged since is fetched again). A file cut off
// part-way (DeepSeek-V3's shards are ~4-5 GB) is resumed by a Range request from what was synced to the disk, where
// the server's version can be proven the same (an hf:// commit or a strong ETag, sent as If-Range); otherwise it
// starts again. A lock file keeps two callers (two pods on one volume, two reloads in the router) from working in
// one directory at once.
//
// The code lives in ./fetch/: uri (checkpointSource), context (options, constants, version pins), http (GET with
// deadlines, Range reads), files, lock, marker, resume (when a partial may be continued), partial (its file and
// record), download (one whole file, resumed or not), verify (a marked directory's files, checked on the disk), whole
// (fetchCheckpoint) and tensors (fetchCheckpointTensors).

export type { FetchOptions } from "./fetch/context.js";
export { fetchCheckpointTensors, routerTensorNames } from "./fetch/tensors.js";
export { type CheckpointSource, checkpointSource } from "./fetch/uri.js";
export { fetchCheckpoint } from "./fetch/whole.js";
