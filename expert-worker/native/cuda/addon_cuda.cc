// N-API surface of the CUDA backend (typed wrapper: expert-worker/src/backend/cuda.ts). A separate module,
// switchyard_cuda.node, so the CPU addon and CPU-only builds are untouched.
//
//   probe() -> {ok, error?, name, sms, totalMem, cc}
//   createContext({d, f, slots, device?, runsInFlight?}) -> External   device slabs w13 [slots, 2f, d], w2 [slots, d,
//                                                       f] (bf16), a compute stream and a copy stream, pinned staging
//                                                       buffers, runsInFlight (1-4, default 2) sets of run buffers
//   upload(ctx, slot, gate, up, down) -> Promise<number> weights {dtype, rows, cols, data}; converts to bf16 into a
//                                                       pinned buffer and copies on the copy stream (so uploads
//                                                       overlap compute on the compute stream); resolves with bytes
//   run(ctx, {dtype, tokens, rows, cols, rowSlots: Int32Array, rowWeights?: Float32Array, tokenRows?: Uint32Array,
//             sumByToken?: boolean}) -> Promise<Uint8Array>
//       y[r] = w[r] * SwiGLU-FFN of the expert in slot rowSlots[r] (-1: zero row), in the tokens' dtype.
//       The result carries deviceMs (a non-enumerable own property): the GPU's milliseconds for this run, from timing
//       events on the compute stream before its copy up and after its copy down. Work of another run queued ahead of
//       it on the stream is not counted, the host's staging and its wait for the GPU are not either. The run's
//       buffers are sized before its first event, so their first allocation or growth is not counted either (before
//       that change one read 2.13 ms, bench/results/logs/h200-vitest-devtime-0451.log).
//       tokenRows (a deduplicated batch): tokens holds the distinct tokens, row r computes token tokenRows[r]; the
//       gather runs on the GPU, so only the distinct tokens cross PCIe. sumByToken: instead of the rows, fp32
//       [distinct, cols] with each token's rows (unscaled, rounded to dtype) weighted by w and summed in row order on
//       the GPU (token_rows.h): the host sum's arithmetic, bit for bit.
//   stats(ctx) -> {runs, uploads, uploadBytes, deviceBytes, slots, sync: "blocking" | "spin", runBufferBytes}
//                                                       runBufferBytes: the device bytes the run buffer sets not in
//                                                       use by a run hold (what the runs' sizes left; tests check
//                                                       cuda.ts's bytes-per-row bound against it)
//   memInfo(ctx) -> {free, total}                      cudaMemGetInfo on the context's device: called once the slots
//                                                       are allocated, it is what the run buffers have (cuda.ts sizes
//                                                       its row limit from it: run-rows.ts)
// Every CUDA call runs on a libuv worker thread (Napi::AsyncWorker), never on the event loop; up to runsInFlight runs
// at a time per context (Ctx::io), their kernels in order on one stream, uploads concurrently with them.
//
// Memory the worker threads read: a persistent reference stops a collection, not a detach (a transfer) or a resizable
// buffer's shrink. Every option is read (getters: JavaScript) before the first data pointer is taken; run() copies
// rowSlots, rowWeights and tokenRows while it checks them (rows * 4 bytes each), so the worker uses the values that
// were checked; tokens and the weights are read in place (MBs: a copy on the event loop would cost it as much as the
// worker's own conversion), so a resizable or detached buffer is refused and the caller must not transfer them before
// the promise settles. Contexts are type-tagged externals: another addon's external is refused, not misread.
//
// Those threads wait for the GPU with CUDA's default (spinning) wait. SWITCHYARD_CUDA_SYNC=blocking makes them sleep
// on cudaEventBlockingSync events instead. Timed in turn on the H200 at Qwen3-30B-A3B's full size (bench/h200_sync_ab.sh,
// bench/results/logs/h200-sync-ab-2125-summary.log), the sleeping wait saved no worker CPU (1.00 / 0.99 cores against
// 1.01 / 0.96) and cost 3-5% of tokens/s (1152 / 1178 against 1187 / 1245; 0.15 ms more per batch), so spinning stays
// the default.
#include <cuda_runtime.h>
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/half.h"
#include "../src/thread_name.h"
#include "sy_moe.h"
#include "token_rows.h"

using switchyard::DType;

namespace {

std::string cuda_msg(const char* what, cudaError_t e) { return std::string(what) + ": " + cudaGetErrorString(e); }

// A failed CUDA call, with its code: the JavaScript side tells a full device (retry elsewhere) from a broken one.
struct CudaFailure : std::runtime_error {
  cudaError_t code;
  CudaFailure(const std::string& m, cudaError_t c) : std::runtime_error(m), code(c) {}
};

// Errors after which the device's context is unusable for the rest of the process (the CUDA runtime's "sticky"
// errors: every later call on the device fails with them). The worker cannot recover in-process; it must restart.
bool IsFatal(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed:
    case cudaErrorContained:  // Hopper: a contained uncorrectable memory error, a bad NVLink peer access
    case cudaErrorTensorMemoryLeak:
    case cudaErrorMpsClientTerminated:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

// The failing call's code on the exception. The thread's last error is cleared (cudaGetLastError): a kernel launch
// checks it, so an out-of-memory left there would fail the next, healthy run on this libuv thread with it.
#define CK_THROW(call)                                                        \
  do {                                                                        \
    cudaError_t e_ = (call);                                                  \
    if (e_ != cudaSuccess) {                                                  \
      (void)cudaGetLastError();                                               \
      throw CudaFailure(cuda_msg(#call, e_), e_);                             \
    }                                                                         \
  } while (0)

// Run buffers grow to the largest batch seen and are kept for the next; one past this is given back after its run,
// so that one outsized batch (a deduplicated batch's token_rows can ask for far more rows than its bytes) does not
// hold device or pinned memory for the life of the process.
constexpr size_t kKeepBufferBytes = size_t(8) << 30;

// Pinned host buffer that grows on demand.
struct Pinned {
  void* p = nullptr;
  size_t n = 0;
  void trim(size_t keep) {
    if (n <= keep) return;
    cudaFreeHost(p);
    p = nullptr;
    n = 0;
  }
  // `what` names the buffer in an error: which one could not grow to how many bytes.
  void ensure(size_t bytes, const char* what) {
    if (bytes <= n) return;
    if (p) cudaFreeHost(p);
    p = nullptr;
    n = 0;
    const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw CudaFailure(cuda_msg((std::string("pinned host buffer ") + what + " of " + std::to_string(bytes) +
                                  " bytes: cudaHostAlloc").c_str(), e), e);
    }
    n = bytes;
  }
  ~Pinned() {
    if (p) cudaFreeHost(p);
  }
};

// Device buffer that grows on demand.
struct DeviceBuf {
  void* p = nullptr;
  size_t n = 0;
  void trim(size_t keep) {
    if (n <= keep) return;
    cudaFree(p);
    p = nullptr;
    n = 0;
  }
  // `what` names the buffer in an error: which one could not grow to how many bytes.
  void ensure(size_t bytes, const char* what) {
    if (bytes <= n) return;
    if (p) cudaFree(p);
    p = nullptr;
    n = 0;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw CudaFailure(
          cuda_msg((std::string("device buffer ") + what + " of " + std::to_string(bytes) + " bytes: cudaMalloc").c_str(),
                   e),
          e);
    }
    n = bytes;
  }
  ~DeviceBuf() {
    if (p) cudaFree(p);
  }
};

// The buffers of one run in flight: a run owns one set from its staging copy to its result's copy out.
struct IoSet {
  Pinned in, out;     // run io
  DeviceBuf d_stage;  // what a run copies up: tokens and metadata (RunWorker)
  DeviceBuf d_in;     // a deduplicated batch's tokens expanded to rows
  DeviceBuf d_out;    // the experts' rows (bf16)
  DeviceBuf d_sum;    // their per-token sums (fp32)
  DeviceBuf ws;       // sy_moe workspace
  cudaEvent_t done = nullptr;
  // Timing events (default flags: timing on), recorded on the compute stream before the run's copy up and after its
  // copy down: their elapsed time is the run's device time, from when the stream reached its work to its end.
  cudaEvent_t start = nullptr, end = nullptr;
  // After a run (its work done): the buffers past kKeepBufferBytes go back.
  void trim() {
    for (Pinned* b : {&in, &out}) b->trim(kKeepBufferBytes);
    for (DeviceBuf* b : {&d_stage, &d_in, &d_out, &d_sum, &ws}) b->trim(kKeepBufferBytes);
  }
  IoSet() = default;
  IoSet(const IoSet&) = delete;
  IoSet& operator=(const IoSet&) = delete;
  ~IoSet() {
    for (cudaEvent_t e : {done, start, end})
      if (e) cudaEventDestroy(e);
  }
};

struct Ctx {
  int device = 0, d = 0, f = 0, slots = 0;
  void* w13 = nullptr;
  void* w2 = nullptr;
  cudaStream_t compute = nullptr, copy = nullptr;
  unsigned event_flags = cudaEventDisableTiming;  // | cudaEventBlockingSync with SWITCHYARD_CUDA_SYNC=blocking
  // Runs in flight (createContext's runsInFlight, one io set each): while the GPU computes one run, the next stages
  // its tokens and queues its work behind it on the compute stream, and the one before copies its result out, so the
  // GPU does not wait for the host between batches. The kernels still run one batch after another (one stream).
  std::vector<std::unique_ptr<IoSet>> io;
  std::vector<IoSet*> io_free;
  std::mutex io_mu;
  std::condition_variable io_cv;
  std::mutex enqueue_mu;  // one run queues its copies and kernels at a time (sy_moe_forward's host side)
  std::mutex staging_mu;  // pool of pinned upload staging buffers
  std::vector<std::unique_ptr<Pinned>> staging;
  std::atomic<double> runs{0}, uploads{0}, upload_bytes{0};
  size_t device_bytes = 0;
  // Set by the first fatal error (IsFatal) on this device: every later run and upload fails at once with it.
  std::atomic<bool> broken{false};
  std::mutex broken_mu;
  std::string broken_why;
  void MarkBroken(const std::string& why) {
    std::lock_guard<std::mutex> lk(broken_mu);
    if (broken.load()) return;
    broken_why = why;
    broken.store(true);
  }
  std::string BrokenWhy() {
    std::lock_guard<std::mutex> lk(broken_mu);
    return broken_why;
  }
  ~Ctx() {
    cudaSetDevice(device);
    if (compute) cudaStreamSynchronize(compute);
    if (copy) cudaStreamSynchronize(copy);
    cudaFree(w13);
    cudaFree(w2);
    io.clear();  // the run buffers and events (~IoSet)
    if (compute) cudaStreamDestroy(compute);
    if (copy) cudaStreamDestroy(copy);
  }
};

// counters that several worker threads bump at once (uploads, runs in flight)
void Add(std::atomic<double>& a, double v) {
  double cur = a.load();
  while (!a.compare_exchange_weak(cur, cur + v)) {
  }
}

struct CtxHandle {
  std::shared_ptr<Ctx> ctx;
};

// The type tag of CtxHandle externals (napi_type_tag_object): an expert handle of the CPU addon is refused.
constexpr napi_type_tag kCtxTag = {0x73795f637564615fULL, 0x636f6e746578745fULL};

std::shared_ptr<Ctx> GetCtx(Napi::Env env, Napi::Value v) {
  if (!v.IsExternal() || !v.As<Napi::External<CtxHandle>>().CheckTypeTag(&kCtxTag))
    throw Napi::TypeError::New(env, "ctx: expected a context from createContext()");
  return v.As<Napi::External<CtxHandle>>().Data()->ctx;
}

// Whether a typed array's buffer is a resizable ArrayBuffer (its `resizable` getter; false for a SharedArrayBuffer,
// whose growable kind only grows). Runs JavaScript: call it before any data pointer is taken.
bool Resizable(Napi::Env env, Napi::Value v) {
  if (!v.IsTypedArray()) return false;
  napi_value ab;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, nullptr, nullptr, nullptr, &ab, nullptr), false);
  bool is_ab = false;
  NAPI_THROW_IF_FAILED(env, napi_is_arraybuffer(env, ab, &is_ab), false);
  if (!is_ab) return false;
  Napi::Value r = Napi::Object(env, ab).Get("resizable");
  return r.IsBoolean() && r.As<Napi::Boolean>().Value();
}

// Whether a typed array's buffer is detached (transferred). Runs no JavaScript.
bool Detached(Napi::Env env, Napi::Value v) {
  napi_value ab;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, nullptr, nullptr, nullptr, &ab, nullptr), false);
  bool detached = false;
  NAPI_THROW_IF_FAILED(env, napi_is_detached_arraybuffer(env, ab, &detached), false);
  return detached;
}

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    o.Set("ok", false);
    o.Set("error", e != cudaSuccess ? cuda_msg("cudaGetDeviceCount", e) : std::string("no CUDA device"));
    return o;
  }
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, 0);
  if (e != cudaSuccess) {
    o.Set("ok", false);
    o.Set("error", cuda_msg("cudaGetDeviceProperties", e));
    return o;
  }
  const bool hopper = p.major == 9 && p.minor == 0;
  o.Set("ok", hopper);
  if (!hopper)
    o.Set("error", std::string("device ") + p.name + " is sm_" + std::to_string(p.major) + std::to_string(p.minor) +
                       "; the kernels are built for sm_90a (H100/H200)");
  o.Set("name", std::string(p.name));
  o.Set("sms", p.multiProcessorCount);
  o.Set("totalMem", static_cast<double>(p.totalGlobalMem));
  // what is free on device 0 now (other processes' allocations, another worker on the same GPU): the default slot
  // count fits in it (cuda.ts slotCount)
  // (only where the worker will use the GPU: the query creates a context, which holds device memory)
  size_t free_b = 0, total_b = 0;
  if (hopper && cudaSetDevice(0) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
    o.Set("freeMem", static_cast<double>(free_b));
  (void)cudaGetLastError();
  o.Set("cc", std::to_string(p.major) + "." + std::to_string(p.minor));
  // visible devices (a pod's GPUs): a worker runs its experts on all of them (multi-device.ts); the name and memory
  // above are device 0's, and a pod's GPUs are one node's, of one kind
  o.Set("devices", n);
  return o;
}

int32_t IntField(Napi::Env env, Napi::Object o, const char* name, int32_t lo, int32_t hi) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(name) + ": expected a number");
  int64_t x = v.ToNumber().Int64Value();
  if (x < lo || x > hi)
    throw Napi::RangeError::New(env, std::string(name) + ": must be in [" + std::to_string(lo) + ", " +
                                         std::to_string(hi) + "], got " + std::to_string(x));
  return static_cast<int32_t>(x);
}

void FinalizeCtx(Napi::Env env, CtxHandle* h) {
  Napi::MemoryManagement::AdjustExternalMemory(env, 0);
  delete h;
}

Napi::Value CreateContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options: expected {d, f, slots}");
  Napi::Object o = info[0].As<Napi::Object>();
  auto c = std::make_shared<Ctx>();
  c->d = IntField(env, o, "d", 8, 1 << 16);
  c->f = IntField(env, o, "f", 8, 1 << 18);
  c->slots = IntField(env, o, "slots", 1, 1024);
  c->device = o.Has("device") ? IntField(env, o, "device", 0, 63) : 0;
  const int runs_in_flight = o.Has("runsInFlight") ? IntField(env, o, "runsInFlight", 1, 4) : 2;
  if (c->d % 8 || c->f % 8) throw Napi::RangeError::New(env, "d, f: must be multiples of 8");
  try {
    CK_THROW(cudaSetDevice(c->device));
    const size_t per = (size_t)3 * c->d * c->f * 2;
    CK_THROW(cudaMalloc(&c->w13, (size_t)c->slots * 2 * c->f * c->d * 2));
    CK_THROW(cudaMalloc(&c->w2, (size_t)c->slots * c->d * c->f * 2));
    c->device_bytes = per * c->slots;
    CK_THROW(cudaStreamCreateWithFlags(&c->compute, cudaStreamNonBlocking));
    CK_THROW(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    const char* sync = std::getenv("SWITCHYARD_CUDA_SYNC");
    if (sync && std::string(sync) == "blocking") c->event_flags |= cudaEventBlockingSync;
    for (int i = 0; i < runs_in_flight; ++i) {
      c->io.push_back(std::make_unique<IoSet>());
      IoSet& set = *c->io.back();
      CK_THROW(cudaEventCreateWithFlags(&set.done, c->event_flags));
      CK_THROW(cudaEventCreateWithFlags(&set.start, cudaEventDefault));
      CK_THROW(cudaEventCreateWithFlags(&set.end, cudaEventDefault));
      c->io_free.push_back(&set);
    }
  } catch (const std::exception& ex) {
    throw Napi::Error::New(env, std::string("createContext: ") + ex.what());
  }
  Napi::External<CtxHandle> ext = Napi::External<CtxHandle>::New(env, new CtxHandle{c}, FinalizeCtx);
  ext.TypeTag(&kCtxTag);
  return ext;
}

struct HostMatrix {
  DType dtype;
  int64_t rows, cols;
  const uint8_t* data;
  Napi::Reference<Napi::Uint8Array> keep;
};

// A weight object's fields, read before any data pointer is taken (getters and valueOf run JavaScript).
struct MatrixFields {
  const char* name;
  int dtype;
  Napi::Value data;
  int64_t rows, cols;
  bool resizable;
};

MatrixFields ReadMatrixFields(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, std::string(name) + ": expected a weight object");
  Napi::Object o = v.As<Napi::Object>();
  MatrixFields m{name, 0, Napi::Value(), 0, 0, false};
  m.dtype = o.Get("dtype").ToNumber().Int32Value();
  m.data = o.Get("data");
  m.rows = o.Get("rows").ToNumber().Int64Value();
  m.cols = o.Get("cols").ToNumber().Int64Value();
  m.resizable = Resizable(env, m.data);
  return m;
}

// Checks the fields and takes the data pointer: runs no JavaScript.
HostMatrix CheckMatrix(Napi::Env env, const MatrixFields& m, int64_t rows, int64_t cols) {
  const std::string name = m.name;
  if (!switchyard::dtype_valid(m.dtype)) throw Napi::TypeError::New(env, name + ".dtype: unsupported");
  if (!m.data.IsTypedArray() || m.data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, name + ".data: expected Uint8Array");
  if (m.resizable)
    throw Napi::TypeError::New(env, name + ".data: a resizable ArrayBuffer could shrink under the upload; pass a "
                                           "fixed-length buffer");
  if (Detached(env, m.data)) throw Napi::TypeError::New(env, name + ".data: its ArrayBuffer is detached (transferred)");
  const int64_t r = m.rows, c = m.cols;
  if (r != rows || c != cols)
    throw Napi::RangeError::New(env, name + ": expected shape [" + std::to_string(rows) + ", " +
                                         std::to_string(cols) + "], got [" + std::to_string(r) + ", " +
                                         std::to_string(c) + "]");
  auto arr = m.data.As<Napi::Uint8Array>();
  if ((int64_t)arr.ByteLength() != r * c * switchyard::dtype_size(static_cast<DType>(m.dtype)))
    throw Napi::RangeError::New(env, name + ".data: byte length does not match rows*cols*dtype");
  return HostMatrix{static_cast<DType>(m.dtype), r, c, arr.Data(), Napi::Persistent(arr)};
}

void to_bf16(const HostMatrix& m, uint16_t* dst) {
  const int64_t n = m.rows * m.cols;
  if (m.dtype == DType::BF16) {
    std::memcpy(dst, m.data, n * 2);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = switchyard::f32_to_bf16(switchyard::load_elem(m.dtype, m.data, i));
}

// How an async worker reports a failure to JavaScript: the message, and a code on the Error ("CUDA_FATAL": the
// device is broken, restart the worker; "CUDA_OOM": out of device or pinned memory, another replica may take it).
struct Failure {
  std::string code;
  // Classifies the exception `ex` caught while working on ctx `c`, after the run's own stream work has finished
  // (synchronised on unwind): a fatal code on the failure, or a sticky error the stream reports now, breaks `c`.
  void Classify(Ctx& c, cudaStream_t s, const std::exception& ex) {
    const auto* cf = dynamic_cast<const CudaFailure*>(&ex);
    cudaError_t e = cf ? cf->code : cudaSuccess;
    bool fatal = IsFatal(e);
    (void)cudaGetLastError();
    if (!fatal && s) {
      // The stream's own state once this run's work has unwound (synchronised): an error it still reports after the
      // thread's last error was cleared is the context's, sticky (a device off the bus often reads cudaErrorUnknown),
      // not the failed call's. An out-of-memory leaves the stream clean.
      const cudaError_t q = cudaStreamQuery(s);
      (void)cudaGetLastError();
      if (q != cudaSuccess && q != cudaErrorNotReady) {
        fatal = true;
        e = q;
      }
    }
    if (fatal) {
      c.MarkBroken(std::string(ex.what()) + (cf && cf->code == e ? "" : std::string(" (") + cudaGetErrorString(e) + ")"));
      code = "CUDA_FATAL";
    } else if (e == cudaErrorMemoryAllocation || dynamic_cast<const std::bad_alloc*>(&ex)) {
      code = "CUDA_OOM";
    }
  }
  // Refuses work on a context a fatal error broke.
  void ThrowIfBroken(Ctx& c) {
    if (!c.broken.load()) return;
    code = "CUDA_FATAL";
    throw std::runtime_error("CUDA device " + std::to_string(c.device) + " is broken by an earlier error (" +
                             c.BrokenWhy() + "): restart the worker");
  }
  void Reject(Napi::Promise::Deferred& d, const Napi::Error& err) {
    Napi::Error e = err;
    if (!code.empty()) e.Set("code", Napi::String::New(e.Env(), code));
    d.Reject(e.Value());
  }
};

class UploadWorker : public Napi::AsyncWorker {
 public:
  UploadWorker(Napi::Env env, std::shared_ptr<Ctx> c, int slot, HostMatrix g, HostMatrix u, HostMatrix dn)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), c_(std::move(c)), slot_(slot),
        g_(std::move(g)), u_(std::move(u)), d_(std::move(dn)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    switchyard::name_this_thread("sy-cuda-upload");
    std::unique_ptr<Pinned> buf;
    try {
      failure_.ThrowIfBroken(*c_);
      {
        std::lock_guard<std::mutex> lk(c_->staging_mu);
        if (!c_->staging.empty()) {
          buf = std::move(c_->staging.back());
          c_->staging.pop_back();
        }
      }
      if (!buf) buf = std::make_unique<Pinned>();
      const size_t gu = (size_t)c_->f * c_->d, dn = (size_t)c_->d * c_->f;
      CK_THROW(cudaSetDevice(c_->device));
      (void)cudaGetLastError();  // an error an earlier call on this thread left (see CK_THROW)
      buf->ensure((2 * gu + dn) * 2, "upload staging");
      uint16_t* h = static_cast<uint16_t*>(buf->p);
      to_bf16(g_, h);
      to_bf16(u_, h + gu);
      to_bf16(d_, h + 2 * gu);
      // A private event-synchronised copy: several uploads can be in flight on the copy stream.
      char* w13 = static_cast<char*>(c_->w13) + (size_t)slot_ * 2 * gu * 2;
      char* w2 = static_cast<char*>(c_->w2) + (size_t)slot_ * dn * 2;
      cudaEvent_t ev;
      CK_THROW(cudaEventCreateWithFlags(&ev, c_->event_flags));
      cudaError_t e = cudaMemcpyAsync(w13, h, 2 * gu * 2, cudaMemcpyHostToDevice, c_->copy);
      if (e == cudaSuccess) e = cudaMemcpyAsync(w2, h + 2 * gu, dn * 2, cudaMemcpyHostToDevice, c_->copy);
      if (e == cudaSuccess) e = cudaEventRecord(ev, c_->copy);
      if (e == cudaSuccess) e = cudaEventSynchronize(ev);
      cudaEventDestroy(ev);
      if (e != cudaSuccess) throw CudaFailure(cuda_msg("upload copy", e), e);
      bytes_ = (double)(2 * gu + dn) * 2;
      Add(c_->uploads, 1);
      Add(c_->upload_bytes, static_cast<double>(bytes_));
    } catch (const std::exception& ex) {
      if (failure_.code.empty()) failure_.Classify(*c_, c_->copy, ex);
      SetError(std::string("slot ") + std::to_string(slot_) + ": " + ex.what());
    }
    if (buf) {
      std::lock_guard<std::mutex> lk(c_->staging_mu);
      if (c_->staging.size() < 4) c_->staging.push_back(std::move(buf));
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), bytes_)); }
  void OnError(const Napi::Error& err) override { failure_.Reject(deferred_, err); }

 private:
  Napi::Promise::Deferred deferred_;
  Failure failure_;
  std::shared_ptr<Ctx> c_;
  int slot_;
  HostMatrix g_, u_, d_;
  double bytes_ = 0;
};

Napi::Value Upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = GetCtx(env, info[0]);
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "slot: expected a number");
  int slot = info[1].ToNumber().Int32Value();
  if (slot < 0 || slot >= c->slots)
    throw Napi::RangeError::New(env, "slot: must be in [0, " + std::to_string(c->slots) + ")");
  // all three objects' fields before the first data pointer: a later getter could detach an earlier one's buffer
  const MatrixFields gf = ReadMatrixFields(env, info[2], "gate"), uf = ReadMatrixFields(env, info[3], "up"),
                     df = ReadMatrixFields(env, info[4], "down");
  auto g = CheckMatrix(env, gf, c->f, c->d);
  auto u = CheckMatrix(env, uf, c->f, c->d);
  auto dn = CheckMatrix(env, df, c->d, c->f);
  auto* w = new UploadWorker(env, c, slot, std::move(g), std::move(u), std::move(dn));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// Inputs of one run, read on the event loop (Run) and used on the worker thread. Everything but the tokens is a copy
// made while it was checked: the caller's arrays may change (or go) once run() returns.
struct RunInput {
  DType dt;
  int rows = 0;      // rows the experts compute (one per (token, expert))
  int distinct = 0;  // token rows sent: == rows, or the distinct tokens of a deduplicated batch
  const uint8_t* tokens = nullptr;  // the caller's (kept alive by RunWorker::keep_)
  std::vector<int32_t> slots;       // [rows], each in [-1, slots)
  bool has_weights = false;
  std::vector<float> weights;       // [rows] with has_weights
  bool dedup = false;
  std::vector<uint32_t> token_rows;  // [rows] with dedup: row r computes tokens' row token_rows[r] (< distinct)
  bool sum = false;  // with token_rows: answer fp32 [distinct, d], each token's rows weighted and summed
};

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<Ctx> c, RunInput in, const std::vector<Napi::Object>& keep)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), c_(std::move(c)), in_(std::move(in)) {
    // the typed arrays whose memory the worker thread reads (the tokens): not collected until the run settles
    for (const auto& o : keep) keep_.push_back(Napi::Persistent(o));
    out_bytes_ =
        in_.sum ? (size_t)in_.distinct * c_->d * 4 : (size_t)in_.rows * c_->d * switchyard::dtype_size(in_.dt);
  }
  ~RunWorker() override { std::free(out_); }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    switchyard::name_this_thread("sy-cuda-run");
    try {
      failure_.ThrowIfBroken(*c_);
      if (out_bytes_ && !(out_ = static_cast<uint8_t*>(std::malloc(out_bytes_)))) throw std::bad_alloc();
      // A free set of run buffers (the JavaScript side queues no more runs than there are sets, so this rarely waits)
      struct IoLease {
        Ctx& c;
        IoSet* set;
        explicit IoLease(Ctx& ctx) : c(ctx) {
          std::unique_lock<std::mutex> lk(c.io_mu);
          c.io_cv.wait(lk, [&] { return !c.io_free.empty(); });
          set = c.io_free.back();
          c.io_free.pop_back();
        }
        ~IoLease() {
          {
            std::lock_guard<std::mutex> lk(c.io_mu);
            c.io_free.push_back(set);
          }
          c.io_cv.notify_one();
        }
      } lease(*c_);
      // A failed run gives back what it grew past kKeepBufferBytes too (after the stream sync below, before the lease
      // lets the next run take the set).
      struct TrimOnUnwind {
        IoSet* set;
        int n = std::uncaught_exceptions();
        ~TrimOnUnwind() {
          if (std::uncaught_exceptions() > n) set->trim();
        }
      } trim_on_unwind{lease.set};
      // A failure after copies were queued: they may still read or write the set's buffers, so they finish before the
      // lease lets the next run reuse them (this guard unwinds before the lease).
      struct SyncOnUnwind {
        cudaStream_t s;
        int n = std::uncaught_exceptions();
        ~SyncOnUnwind() {
          if (std::uncaught_exceptions() > n) cudaStreamSynchronize(s);
        }
      } sync_on_unwind{c_->compute};
      Ctx& c = *c_;
      IoSet& io = *lease.set;
      const int d = c.d, rows = in_.rows, u = in_.distinct;
      CK_THROW(cudaSetDevice(c.device));
      (void)cudaGetLastError();  // an error an earlier call on this thread left (see CK_THROW)
      sy_moe_config cfg{c.slots, 1, d, c.f, SY_MOE_SCORE_SOFTMAX, 0, 0, 0, 1.f};
      size_t need = 0;
      if (sy_moe_workspace_size(&cfg, rows, &need)) throw std::runtime_error(sy_moe_last_error());
      io.ws.ensure(need, "workspace");
      // One pinned block and one copy up: tokens (bf16) | ids | kernel weights | token rows | per-token offsets |
      // rows in token order | sum weights. Every part is a multiple of 4 bytes, the tokens of 16 (d % 8 == 0).
      const bool dedup = in_.dedup;
      const size_t tok_b = (size_t)u * d * 2, n4 = (size_t)rows * 4;
      const size_t off_ids = tok_b, off_w = off_ids + n4, off_tr = off_w + n4, off_offs = off_tr + n4,
                   off_order = off_offs + (size_t)(u + 1) * 4, off_sw = off_order + n4,
                   in_b = dedup ? off_sw + n4 : off_tr;
      io.in.ensure(in_b, "tokens in");
      io.d_stage.ensure(in_b, "tokens in");
      char* h = static_cast<char*>(io.in.p);
      uint16_t* tin = reinterpret_cast<uint16_t*>(h);
      if (in_.dt == DType::BF16) {
        std::memcpy(tin, in_.tokens, tok_b);
      } else {
        for (size_t i = 0; i < (size_t)u * d; ++i)
          tin[i] = switchyard::f32_to_bf16(switchyard::load_elem(in_.dt, in_.tokens, (int64_t)i));
      }
      std::memcpy(h + off_ids, in_.slots.data(), n4);
      float* kw = reinterpret_cast<float*>(h + off_w);
      // combine: the experts run unscaled and the sum applies the weights in fp32, as the host sum does
      for (int r = 0; r < rows; ++r) kw[r] = in_.has_weights && !in_.sum ? in_.weights[r] : 1.f;
      if (dedup) {
        std::memcpy(h + off_tr, in_.token_rows.data(), n4);
        // each token's rows in ascending order (a counting sort), so the device sum adds in the host's order
        int32_t* offs = reinterpret_cast<int32_t*>(h + off_offs);
        int32_t* order = reinterpret_cast<int32_t*>(h + off_order);
        std::fill(offs, offs + u + 1, 0);
        for (int r = 0; r < rows; ++r) offs[in_.token_rows[r] + 1]++;
        for (int t = 0; t < u; ++t) offs[t + 1] += offs[t];
        std::vector<int32_t> next(offs, offs + u);
        for (int r = 0; r < rows; ++r) order[next[in_.token_rows[r]]++] = r;
        float* sw = reinterpret_cast<float*>(h + off_sw);
        for (int r = 0; r < rows; ++r) sw[r] = in_.has_weights ? in_.weights[r] : 1.f;
      }
      // Every device and pinned buffer this run writes is sized here, before the lock: a buffer's first allocation
      // or growth (cudaFree waits for the whole device) then neither holds the other run's enqueue nor falls between
      // the timing events.
      const size_t down_b = in_.sum ? (size_t)u * d * 4 : (size_t)rows * d * 2;
      if (dedup) io.d_in.ensure((size_t)rows * d * 2, "rows in");
      io.d_out.ensure((size_t)rows * d * 2, "rows out");
      if (in_.sum) io.d_sum.ensure((size_t)u * d * 4, "sums out");
      io.out.ensure(down_b, "result out");
      char* g = static_cast<char*>(io.d_stage.p);
      // the copies and kernels go on the stream one run at a time; the wait for them below does not hold the lock
      std::unique_lock<std::mutex> enqueue(c.enqueue_mu);
      // queued behind the other run's work (the lock), so the stream reaches it when that work is done
      CK_THROW(cudaEventRecord(io.start, c.compute));
      CK_THROW(cudaMemcpyAsync(g, h, in_b, cudaMemcpyHostToDevice, c.compute));
      const void* x = g;
      if (dedup) {
        if (sy_gather_rows(g, reinterpret_cast<const int32_t*>(g + off_tr), rows, d * 2, io.d_in.p, c.compute))
          throw std::runtime_error(sy_token_rows_last_error());
        x = io.d_in.p;
      }
      sy_moe_args a{};
      a.x = x;
      a.topk_ids = reinterpret_cast<const int32_t*>(g + off_ids);
      a.topk_weights = reinterpret_cast<const float*>(g + off_w);
      a.w13 = c.w13;
      a.w2 = c.w2;
      a.out = io.d_out.p;
      a.num_slots = c.slots;
      if (sy_moe_forward(&cfg, rows, &a, io.ws.p, io.ws.n, c.compute))
        throw std::runtime_error(std::string("sy_moe_forward: ") + sy_moe_last_error());
      const void* result = io.d_out.p;
      if (in_.sum) {
        if (sy_sum_rows_by_token(static_cast<const uint16_t*>(io.d_out.p), d, reinterpret_cast<const int32_t*>(g + off_offs),
                                 reinterpret_cast<const int32_t*>(g + off_order),
                                 in_.has_weights ? reinterpret_cast<const float*>(g + off_sw) : nullptr, u,
                                 in_.dt == DType::F16 ? 1 : 0, static_cast<float*>(io.d_sum.p), c.compute))
          throw std::runtime_error(sy_token_rows_last_error());
        result = io.d_sum.p;
      }
      if (down_b) CK_THROW(cudaMemcpyAsync(io.out.p, result, down_b, cudaMemcpyDeviceToHost, c.compute));
      CK_THROW(cudaEventRecord(io.end, c.compute));
      CK_THROW(cudaEventRecord(io.done, c.compute));
      enqueue.unlock();
      CK_THROW(cudaEventSynchronize(io.done));  // on this worker thread, not the event loop
      float ms = 0;  // io.end was recorded before io.done: complete
      CK_THROW(cudaEventElapsedTime(&ms, io.start, io.end));
      device_ms_ = ms;
      if (in_.sum || in_.dt == DType::BF16) {
        if (down_b) std::memcpy(out_, io.out.p, down_b);
      } else {
        const uint16_t* o = static_cast<const uint16_t*>(io.out.p);
        for (size_t i = 0; i < (size_t)rows * d; ++i)
          switchyard::store_elem(in_.dt, out_, (int64_t)i, switchyard::bf16_to_f32(o[i]));
      }
      io.trim();  // its work is done (io.done): nothing on the device reads these any more
      Add(c.runs, 1);
    } catch (const std::exception& ex) {
      if (failure_.code.empty()) failure_.Classify(*c_, c_->compute, ex);
      SetError(ex.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (out_bytes_ == 0) {
      deferred_.Resolve(WithDeviceMs(Napi::Uint8Array::New(env, 0)));
      return;
    }
    // The result's memory goes to JavaScript as it is: no copy on the event loop.
    Napi::ArrayBuffer ab;
    try {
      ab = Napi::ArrayBuffer::New(env, out_, out_bytes_, [](Napi::Env, void* q) { std::free(q); });
      out_ = nullptr;  // JavaScript owns it now
    } catch (const Napi::Error&) {
      // a runtime that refuses external memory: one copy (out_ is freed with this worker)
      ab = Napi::ArrayBuffer::New(env, out_bytes_);
      std::memcpy(ab.Data(), out_, out_bytes_);
    }
    deferred_.Resolve(WithDeviceMs(Napi::Uint8Array::New(env, out_bytes_, ab, 0)));
  }
  void OnError(const Napi::Error& err) override { failure_.Reject(deferred_, err); }

 private:
  // deviceMs on the result, read-only and non-enumerable: the value stays a plain Uint8Array to every other reader
  // (equality checks, Buffer.from, spreading)
  Napi::Uint8Array WithDeviceMs(Napi::Uint8Array a) {
    a.DefineProperty(Napi::PropertyDescriptor::Value("deviceMs", Napi::Number::New(Env(), device_ms_), napi_default));
    return a;
  }

  Napi::Promise::Deferred deferred_;
  Failure failure_;
  std::shared_ptr<Ctx> c_;
  RunInput in_;
  std::vector<Napi::ObjectReference> keep_;
  size_t out_bytes_ = 0;
  uint8_t* out_ = nullptr;
  double device_ms_ = 0;  // cudaEventElapsedTime(io.start, io.end)
};

// An optional typed array field's value, checked for `type` and `length` elements; empty when absent. Runs no
// JavaScript (the value was read before).
Napi::TypedArray OptionalArray(Napi::Env env, Napi::Value v, const char* name, napi_typedarray_type type,
                               const char* type_name, int64_t length) {
  if (v.IsUndefined() || v.IsNull()) return Napi::TypedArray();
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(env, std::string(name) + ": expected " + type_name);
  auto a = v.As<Napi::TypedArray>();
  if ((int64_t)a.ElementLength() != length)
    throw Napi::RangeError::New(env, std::string(name) + ": length must equal rows (" + std::to_string(length) + ")");
  return a;
}

// A typed array's elements (napi_get_typedarray_info: the view's offset applied, SharedArrayBuffer-backed too).
template <typename T>
const T* TypedData(Napi::Env env, Napi::TypedArray a) {
  void* data = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, a, nullptr, nullptr, &data, nullptr, nullptr), nullptr);
  return static_cast<const T*>(data);
}

Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = GetCtx(env, info[0]);
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "options: expected an object");
  Napi::Object o = info[1].As<Napi::Object>();
  // Every option first (getters run JavaScript, which could detach or shrink a buffer whose pointer was taken);
  // nothing after this block calls into JavaScript.
  RunInput in{};
  in.dt = static_cast<DType>(IntField(env, o, "dtype", 1, 3));
  in.rows = IntField(env, o, "rows", 0, 1 << 24);
  const int cols = IntField(env, o, "cols", 1, 1 << 16);
  const Napi::Value tv = o.Get("tokens"), sv = o.Get("rowSlots"), wv = o.Get("rowWeights"), trv = o.Get("tokenRows"),
                    sum = o.Get("sumByToken");
  const bool tokens_resizable = Resizable(env, tv);

  if (cols != c->d) throw Napi::RangeError::New(env, "cols: must equal the context's d=" + std::to_string(c->d));
  if (!tv.IsTypedArray() || tv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "tokens: expected Uint8Array");
  if (tokens_resizable)
    throw Napi::TypeError::New(env, "tokens: a resizable ArrayBuffer could shrink under the run; pass a fixed-length "
                                    "buffer");
  if (Detached(env, tv)) throw Napi::TypeError::New(env, "tokens: its ArrayBuffer is detached (transferred)");
  auto tokens = tv.As<Napi::Uint8Array>();
  const int64_t row_b = (int64_t)cols * switchyard::dtype_size(in.dt);
  in.sum = sum.IsBoolean() && sum.As<Napi::Boolean>().Value();
  if (!sv.IsTypedArray() || sv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(env, "rowSlots: expected Int32Array");
  auto slots = sv.As<Napi::Int32Array>();
  if ((int64_t)slots.ElementLength() != in.rows) throw Napi::RangeError::New(env, "rowSlots: length must equal rows");
  // copied, then checked: the worker copies in.slots up, the values checked here
  const int32_t* sd = TypedData<int32_t>(env, slots);
  in.slots.assign(sd, sd + in.rows);
  for (int r = 0; r < in.rows; ++r)
    if (in.slots[r] < -1 || in.slots[r] >= c->slots)
      throw Napi::RangeError::New(env, "rowSlots[" + std::to_string(r) + "]: out of range");
  auto wa = OptionalArray(env, wv, "rowWeights", napi_float32_array, "Float32Array", in.rows);
  if (!wa.IsEmpty()) {
    const float* wd = TypedData<float>(env, wa);
    in.weights.assign(wd, wd + in.rows);
    in.has_weights = true;
  }
  auto tr = OptionalArray(env, trv, "tokenRows", napi_uint32_array, "Uint32Array", in.rows);
  if (tr.IsEmpty()) {
    if ((int64_t)tokens.ByteLength() != in.rows * row_b)
      throw Napi::RangeError::New(env, "tokens: byte length does not match rows*cols*dtype");
    in.distinct = in.rows;
  } else {
    if ((int64_t)tokens.ByteLength() % row_b || tokens.ByteLength() == 0)
      throw Napi::RangeError::New(env, "tokens: byte length is not a whole number of rows of cols*dtype");
    in.distinct = static_cast<int>((int64_t)tokens.ByteLength() / row_b);
    const uint32_t* td = TypedData<uint32_t>(env, tr);
    in.token_rows.assign(td, td + in.rows);  // copied, then checked: the worker indexes with these
    in.dedup = true;
    for (int r = 0; r < in.rows; ++r)
      if (in.token_rows[r] >= (uint32_t)in.distinct)
        throw Napi::RangeError::New(env, "tokenRows[" + std::to_string(r) + "]: " + std::to_string(in.token_rows[r]) +
                                             " is past the " + std::to_string(in.distinct) + " tokens sent");
  }
  if (in.sum && tr.IsEmpty()) throw Napi::TypeError::New(env, "sumByToken: needs tokenRows");
  in.tokens = tokens.Data();
  std::vector<Napi::Object> keep{tokens};
  auto* w = new RunWorker(env, c, std::move(in), keep);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = GetCtx(env, info[0]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("runs", c->runs.load());
  o.Set("uploads", c->uploads.load());
  o.Set("uploadBytes", c->upload_bytes.load());
  o.Set("deviceBytes", static_cast<double>(c->device_bytes));
  o.Set("slots", c->slots);
  o.Set("sync", (c->event_flags & cudaEventBlockingSync) ? "blocking" : "spin");
  // the sets a run holds are left out: their buffers may be growing on its worker thread
  size_t run_bytes = 0;
  {
    std::lock_guard<std::mutex> lk(c->io_mu);
    for (IoSet* set : c->io_free)
      for (const DeviceBuf* b : {&set->d_stage, &set->d_in, &set->d_out, &set->d_sum, &set->ws}) run_bytes += b->n;
  }
  o.Set("runBufferBytes", static_cast<double>(run_bytes));
  return o;
}

// What the context's device has free now, and its size (cudaMemGetInfo). On the calling thread (the event loop), as
// createContext is: called once, after the slots are allocated. A failure throws (no code: the caller goes on
// without the figure).
Napi::Value MemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = GetCtx(env, info[0]);
  size_t free_b = 0, total_b = 0;
  cudaError_t e = cudaSetDevice(c->device);
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // not left for the next call on this thread (see CK_THROW)
    throw Napi::Error::New(env, cuda_msg("memInfo: cudaMemGetInfo", e));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", static_cast<double>(free_b));
  o.Set("total", static_cast<double>(total_b));
  return o;
}

// For tests of the fatal-error path only: a kernel that writes through a bad address on the context's compute
// stream, the device left with the sticky error a real fault leaves (cudaErrorIllegalAddress). Every later CUDA call
// in this process on that device fails: run it in a process of its own. Returns the error the stream reported.
Napi::Value FaultForTests(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = GetCtx(env, info[0]);
  cudaSetDevice(c->device);
  if (sy_fault_for_tests(c->compute)) return Napi::String::New(env, sy_token_rows_last_error());
  return Napi::String::New(env, cudaGetErrorString(cudaStreamSynchronize(c->compute)));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("_faultForTests", Napi::Function::New(env, FaultForTests));
  exports.Set("probe", Napi::Function::New(env, Probe));
  exports.Set("createContext", Napi::Function::New(env, CreateContext));
  exports.Set("upload", Napi::Function::New(env, Upload));
  exports.Set("run", Napi::Function::New(env, Run));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("memInfo", Napi::Function::New(env, MemInfo));
  return exports;
}

}  // namespace

NODE_API_MODULE(switchyard_cuda, Init)
