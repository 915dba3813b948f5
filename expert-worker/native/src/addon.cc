// N-API surface of the native CPU backend (see expert-worker/src/backend/native-cpu.ts for the typed wrapper).
//
//   prepareExpert(gate, up, down) -> Promise<External>   weights {dtype, rows, cols, data: Uint8Array}
//   expertInfo(handle) -> {d, f, bytes}
//   runExperts({dtype, tokens, rows, cols, slices: Uint32Array [expertIndex, offset, count]*, experts: External[],
//               rowWeights?: Float32Array, cancel?: Int32Array}) -> Promise<{output: Uint8Array, tilesDone,
//               tilesTotal}>; rejects with code "CANCELLED" when the cancel flag was raised mid-run. cancel must be
//               backed by a SharedArrayBuffer (the kernel reads it from its threads while the run is in flight)
//   stats() -> {tilesDone, runsStarted, runsCompleted, runsCancelled, threads, isa, cuda}
//   measurePeak(threads, seconds) -> Promise<{gflops, perThread, perThreadCpu, threads, seconds}>
//   measureReadBandwidth(mib, threads) -> Promise<GB/s>   streaming-read bandwidth, best of 5 passes
// All heavy work runs on libuv worker threads (Napi::AsyncWorker) and the kernel's own pool: never on the event loop.
//
// Memory the worker threads read. A persistent reference keeps a typed array from being collected, not its buffer
// from being detached (a transfer: structuredClone, postMessage, ArrayBuffer.prototype.transfer) or a resizable
// buffer from shrinking, and either can happen on the event loop while a run is in flight. So:
//   - every option is read (getters, valueOf, array elements: JavaScript) before the first data pointer is taken,
//     and nothing after that calls into JavaScript before the work is queued;
//   - runExperts copies its per-run inputs (tokens, rowWeights, slices) into native memory on the event loop: the
//     tokens are read once per run (the packing), and their copy costs ~0.3 ms for a DeepSeek-V3 batch of 256 bf16
//     rows (3.7 MB), against ~96 ms for the run on 2 cores; the cancel flag must be a SharedArrayBuffer, which can be
//     neither detached nor shrunk;
//   - prepareExpert reads its weights (tens of MB an expert) in place: a resizable buffer is refused; a detached one
//     is refused at the call, and the caller must not transfer the weights before the promise settles.
// Expert handles are type-tagged externals: another addon's external (the CUDA context) is refused, not misread.
#include <napi.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "expert_ffn.h"
#include "fma_peak.h"
#include "half.h"
#include "thread_name.h"
#include "thread_pool.h"

using namespace switchyard;

namespace {

struct ExpertHandle {
  std::unique_ptr<PreparedExpert> e;
};

// The type tag of ExpertHandle externals (napi_type_tag_object): GetHandle refuses any other external.
constexpr napi_type_tag kExpertHandleTag = {0x73795f6370755f65ULL, 0x78706572745f6831ULL};

// A typed array's element type, length, data (offset applied; SharedArrayBuffer-backed too), and whether its buffer is
// a SharedArrayBuffer or detached. Runs no JavaScript.
struct ArrayView {
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;  // elements
  void* data = nullptr;
  bool shared = false;
  bool detached = false;
};

bool ViewOf(Napi::Env env, Napi::Value v, ArrayView* out) {
  if (!v.IsTypedArray()) return false;
  napi_value ab;
  size_t offset = 0;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &out->type, &out->length, &out->data, &ab, &offset),
                       false);
  bool is_ab = false;
  NAPI_THROW_IF_FAILED(env, napi_is_arraybuffer(env, ab, &is_ab), false);
  out->shared = !is_ab;  // the other buffer a typed array can have
  out->detached = false;
  if (is_ab) NAPI_THROW_IF_FAILED(env, napi_is_detached_arraybuffer(env, ab, &out->detached), false);
  return true;
}

// A typed array of `type`, else a TypeError naming it and `expected`; a detached buffer is a TypeError too.
ArrayView TypedArg(Napi::Env env, Napi::Value v, napi_typedarray_type type, const std::string& name,
                   const char* expected) {
  ArrayView a;
  if (!ViewOf(env, v, &a) || a.type != type) throw Napi::TypeError::New(env, name + ": expected " + expected);
  if (a.detached) throw Napi::TypeError::New(env, name + ": its ArrayBuffer is detached (transferred)");
  return a;
}

// Whether a typed array's buffer is a resizable ArrayBuffer (its `resizable` getter; false for a SharedArrayBuffer,
// whose growable kind only grows, and on runtimes without resizable buffers). Runs JavaScript: call it before any
// data pointer is taken.
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

void FinalizeExpert(Napi::Env env, ExpertHandle* h) {
  if (h->e) Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(h->e->bytes()));
  delete h;
}

struct WeightArg {
  WeightView view;
  Napi::Reference<Napi::Uint8Array> keep;
};

// Sizes: a matrix side at most 2^30 (the kernel keeps d and f as int, rounded up to whole panels), a batch at most
// 2^31 - 1 rows (slices address rows with uint32): so rows * cols * 4 stays far inside int64. Without the bounds,
// 2^32 x 2^32 fp32 (2^66 bytes) wrapped to 0 and matched an empty buffer.
constexpr int64_t kMaxSide = int64_t{1} << 30;
constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1;

// An integral number in [lo, hi], else a RangeError naming `name` (NaN, fractions and negatives included).
int64_t SizeArg(Napi::Env env, Napi::Value v, int64_t lo, int64_t hi, const std::string& name) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, name + ": expected a number");
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(x >= static_cast<double>(lo) && x <= static_cast<double>(hi)) || x != static_cast<double>(static_cast<int64_t>(x)))
    throw Napi::RangeError::New(env, name + ": expected an integer in [" + std::to_string(lo) + ", " +
                                         std::to_string(hi) + "]");
  return static_cast<int64_t>(x);
}

// A weight object's fields, read before any data pointer is taken (getters and valueOf run JavaScript).
struct WeightFields {
  std::string name;
  int dtype = 0;
  Napi::Value data, rows, cols;
  bool resizable = false;
};

WeightFields ReadWeightFields(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, std::string(name) + ": expected a weight object");
  Napi::Object o = v.As<Napi::Object>();
  WeightFields w;
  w.name = name;
  w.dtype = o.Get("dtype").ToNumber().Int32Value();
  w.data = o.Get("data");
  w.rows = o.Get("rows");
  w.cols = o.Get("cols");
  w.resizable = Resizable(env, w.data);
  return w;
}

// Checks the fields and takes the data pointer: runs no JavaScript.
WeightArg CheckWeight(Napi::Env env, const WeightFields& f) {
  const std::string& name = f.name;
  if (!dtype_valid(f.dtype)) throw Napi::TypeError::New(env, name + ".dtype: unsupported");
  ArrayView a = TypedArg(env, f.data, napi_uint8_array, name + ".data", "Uint8Array");
  if (f.resizable)
    throw Napi::TypeError::New(env, name + ".data: a resizable ArrayBuffer could shrink under the prepare; pass a "
                                           "fixed-length buffer");
  const int64_t rows = SizeArg(env, f.rows, 1, kMaxSide, name + ".rows");
  const int64_t cols = SizeArg(env, f.cols, 1, kMaxSide, name + ".cols");
  if (static_cast<int64_t>(a.length) != rows * cols * dtype_size(static_cast<DType>(f.dtype)))
    throw Napi::RangeError::New(env, name + ".data: byte length does not match rows*cols*dtype");
  WeightArg w;
  w.view = {static_cast<DType>(f.dtype), rows, cols, static_cast<const uint8_t*>(a.data)};
  w.keep = Napi::Persistent(f.data.As<Napi::Uint8Array>());
  return w;
}

class PrepareWorker : public Napi::AsyncWorker {
 public:
  PrepareWorker(Napi::Env env, WeightArg g, WeightArg u, WeightArg d)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), g_(std::move(g)), u_(std::move(u)),
        d_(std::move(d)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    switchyard::name_this_thread("sy-cpu-prepare");
    try {
      e_ = prepare_expert(g_.view, u_.view, d_.view);
    } catch (const std::exception& ex) {
      SetError(ex.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(e_->bytes()));
    auto* h = new ExpertHandle{std::move(e_)};
    Napi::External<ExpertHandle> ext = Napi::External<ExpertHandle>::New(env, h, FinalizeExpert);
    ext.TypeTag(&kExpertHandleTag);
    deferred_.Resolve(ext);
  }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  WeightArg g_, u_, d_;
  std::unique_ptr<PreparedExpert> e_;
};

Napi::Value PrepareExpert(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // all three objects' fields before the first data pointer: a later getter could detach an earlier one's buffer
  const WeightFields gf = ReadWeightFields(env, info[0], "gate"), uf = ReadWeightFields(env, info[1], "up"),
                     df = ReadWeightFields(env, info[2], "down");
  WeightArg g = CheckWeight(env, gf), u = CheckWeight(env, uf), d = CheckWeight(env, df);
  if (u.view.rows != g.view.rows || u.view.cols != g.view.cols)
    throw Napi::RangeError::New(env, "up: shape must equal gate's [f, d]");
  if (d.view.rows != g.view.cols || d.view.cols != g.view.rows)
    throw Napi::RangeError::New(env, "down: shape must be [d, f] of gate's [f, d]");
  auto* w = new PrepareWorker(env, std::move(g), std::move(u), std::move(d));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

ExpertHandle* GetHandle(Napi::Env env, Napi::Value v, const std::string& name) {
  // the tag: an external of another kind (a CUDA context, another addon's) is not read as an expert
  if (!v.IsExternal() || !v.As<Napi::External<ExpertHandle>>().CheckTypeTag(&kExpertHandleTag))
    throw Napi::TypeError::New(env, name + ": expected a prepared expert handle");
  return v.As<Napi::External<ExpertHandle>>().Data();
}

Napi::Value ExpertInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpertHandle* h = GetHandle(env, info[0], "handle");
  Napi::Object o = Napi::Object::New(env);
  o.Set("d", h->e->d);
  o.Set("f", h->e->f);
  o.Set("bytes", static_cast<double>(h->e->bytes()));
  return o;
}

class RunWorker : public Napi::AsyncWorker {
 public:
  explicit RunWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  RunRequest req;
  std::vector<Napi::Reference<Napi::Value>> keep;  // the expert handles and the cancel flag, alive until the run ends
  std::unique_ptr<uint8_t[]> tokens;               // req.tokens: the caller's tokens, copied
  std::vector<float> row_weights;                  // req.row_weights: copied

  void Execute() override {
    switchyard::name_this_thread("sy-cpu-run");
    try {
      const size_t n = static_cast<size_t>(req.rows * req.cols);
      std::vector<float> acc(n, 0.f);
      run_experts(req, acc.data(), &outcome_);
      if (outcome_.cancelled) return;
      // The result in the tokens' dtype, converted here (worker threads), handed to JS without a copy.
      bytes_ = std::make_unique<std::vector<uint8_t>>(n * dtype_size(req.dtype));
      convert_output(req.dtype, acc.data(), bytes_->data(), static_cast<int64_t>(n));
    } catch (const std::exception& ex) {
      SetError(ex.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (outcome_.cancelled) {
      Napi::Error err = Napi::Error::New(env, "expert run cancelled");
      err.Set("code", "CANCELLED");
      err.Set("tilesDone", static_cast<double>(outcome_.tiles_done));
      err.Set("tilesTotal", static_cast<double>(outcome_.tiles_total));
      deferred_.Reject(err.Value());
      return;
    }
    std::vector<uint8_t>* bytes = bytes_.release();
    const size_t len = bytes->size();
    Napi::Uint8Array buf;
    if (len == 0) {
      delete bytes;
      buf = Napi::Uint8Array::New(env, 0);
    } else {
      auto ab = Napi::ArrayBuffer::New(
          env, bytes->data(), len, [](Napi::Env, void*, std::vector<uint8_t>* v) { delete v; }, bytes);
      buf = Napi::Uint8Array::New(env, len, ab, 0);
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("output", buf);
    r.Set("tilesDone", static_cast<double>(outcome_.tiles_done));
    r.Set("tilesTotal", static_cast<double>(outcome_.tiles_total));
    deferred_.Resolve(r);
  }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<std::vector<uint8_t>> bytes_;
  RunOutcome outcome_;
};

Napi::Value RunExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "runExperts: expected an options object");
  Napi::Object o = info[0].As<Napi::Object>();
  // Every option first: a getter, valueOf or an array element's getter runs JavaScript, which could detach or shrink
  // a buffer whose pointer was already taken. Nothing after this block calls into JavaScript.
  const int dtype = o.Get("dtype").ToNumber().Int32Value();
  const Napi::Value rows_v = o.Get("rows"), cols_v = o.Get("cols"), tokens = o.Get("tokens"), ex = o.Get("experts"),
                    sv = o.Get("slices"), rw = o.Get("rowWeights"), cv = o.Get("cancel");
  if (!ex.IsArray()) throw Napi::TypeError::New(env, "experts: expected an array of handles");
  Napi::Array experts = ex.As<Napi::Array>();
  std::vector<Napi::Value> handles;
  for (uint32_t i = 0, n = experts.Length(); i < n; ++i) {
    handles.push_back(experts.Get(i));
    GetHandle(env, handles.back(), "experts[" + std::to_string(i) + "]");  // a hole or a stranger stops the loop
  }

  auto* w = new RunWorker(env);
  std::unique_ptr<RunWorker> guard(w);  // deleted on a validation throw; released once queued
  RunRequest& req = w->req;
  if (!dtype_valid(dtype)) throw Napi::TypeError::New(env, "dtype: unsupported");
  req.dtype = static_cast<DType>(dtype);
  req.rows = SizeArg(env, rows_v, 0, kMaxRows, "rows");
  req.cols = SizeArg(env, cols_v, 1, kMaxSide, "cols");
  const ArrayView tok = TypedArg(env, tokens, napi_uint8_array, "tokens", "Uint8Array");
  if (static_cast<int64_t>(tok.length) != req.rows * req.cols * dtype_size(req.dtype))
    throw Napi::RangeError::New(env, "tokens: byte length does not match rows*cols*dtype");

  for (size_t i = 0; i < handles.size(); ++i) {
    ExpertHandle* h = GetHandle(env, handles[i], "experts[" + std::to_string(i) + "]");
    if (h->e->d != req.cols)
      throw Napi::RangeError::New(env, "cols: " + std::to_string(req.cols) + " does not match experts[" +
                                           std::to_string(i) + "]'s hidden size d=" + std::to_string(h->e->d));
    req.experts.push_back(h->e.get());
  }

  const ArrayView sl = TypedArg(env, sv, napi_uint32_array, "slices",
                                "Uint32Array of [expertIndex, offset, count] triples");
  if (sl.length % 3 != 0) throw Napi::RangeError::New(env, "slices: length must be a multiple of 3");
  const uint32_t* sd = static_cast<const uint32_t*>(sl.data);
  std::vector<uint8_t> used(static_cast<size_t>(req.rows), 0);
  for (size_t i = 0; i < sl.length; i += 3) {
    ExpertSliceRef s{sd[i], sd[i + 1], sd[i + 2]};  // copied, then checked: req.slices is what the run reads
    if (s.expert >= req.experts.size()) throw Napi::RangeError::New(env, "slices: expert index out of range");
    if (static_cast<int64_t>(s.offset) + s.count > req.rows) throw Napi::RangeError::New(env, "slices: out of range");
    for (uint32_t r = s.offset; r < s.offset + s.count; ++r) {
      if (used[r]) throw Napi::RangeError::New(env, "slices: overlapping rows");
      used[r] = 1;
    }
    if (s.count > 0) req.slices.push_back(s);
  }

  const float* row_weights = nullptr;
  if (!rw.IsUndefined() && !rw.IsNull()) {
    const ArrayView f = TypedArg(env, rw, napi_float32_array, "rowWeights", "Float32Array");
    if (static_cast<int64_t>(f.length) != req.rows) throw Napi::RangeError::New(env, "rowWeights: length != rows");
    row_weights = static_cast<const float*>(f.data);
  }
  if (!cv.IsUndefined() && !cv.IsNull()) {
    ArrayView c;
    if (!ViewOf(env, cv, &c) || c.type != napi_int32_array || c.length < 1)
      throw Napi::TypeError::New(env, "cancel: expected Int32Array(1)");
    // the kernel's threads read it until the run ends: only a SharedArrayBuffer can be neither detached nor shrunk
    if (!c.shared)
      throw Napi::TypeError::New(env, "cancel: expected an Int32Array on a SharedArrayBuffer (the kernel's threads "
                                      "read it while the run is in flight)");
    req.cancel_flag = static_cast<const int32_t*>(c.data);
    w->keep.push_back(Napi::Persistent(cv));
  }
  for (const Napi::Value& h : handles) w->keep.push_back(Napi::Persistent(h));
  // The per-run inputs the worker threads read, copied last (after every check): the caller may detach, shrink or
  // rewrite its arrays as soon as this returns.
  if (row_weights) {
    w->row_weights.assign(row_weights, row_weights + req.rows);
    req.row_weights = w->row_weights.data();
  }
  w->tokens.reset(new uint8_t[tok.length > 0 ? tok.length : 1]);
  if (tok.length > 0) std::memcpy(w->tokens.get(), tok.data, tok.length);
  req.tokens = w->tokens.get();
  Napi::Promise p = w->Promise();
  guard.release()->Queue();
  return p;
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  KernelCounters& c = kernel_counters();
  Napi::Object o = Napi::Object::New(env);
  o.Set("tilesDone", static_cast<double>(c.tiles_done.load()));
  o.Set("runsStarted", static_cast<double>(c.runs_started.load()));
  o.Set("runsCompleted", static_cast<double>(c.runs_completed.load()));
  o.Set("runsCancelled", static_cast<double>(c.runs_cancelled.load()));
  o.Set("threads", ThreadPool::shared().threads());
  o.Set("isa", kernel_isa());
#ifdef SWITCHYARD_WITH_CUDA
  o.Set("cuda", true);
#else
  o.Set("cuda", false);
#endif
  return o;
}

class PeakWorker : public Napi::AsyncWorker {
 public:
  PeakWorker(Napi::Env env, int threads, double seconds)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), threads_(threads), seconds_(seconds) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      r_ = measure_fma_peak(threads_, seconds_);
    } catch (const std::exception& ex) {
      SetError(ex.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("gflops", r_.gflops);
    Napi::Array per = Napi::Array::New(env, r_.per_thread.size());
    for (size_t i = 0; i < r_.per_thread.size(); ++i) per.Set(static_cast<uint32_t>(i), r_.per_thread[i]);
    o.Set("perThread", per);
    Napi::Array perCpu = Napi::Array::New(env, r_.per_thread_cpu.size());
    for (size_t i = 0; i < r_.per_thread_cpu.size(); ++i) perCpu.Set(static_cast<uint32_t>(i), r_.per_thread_cpu[i]);
    o.Set("perThreadCpu", perCpu);
    o.Set("threads", r_.threads);
    o.Set("seconds", r_.seconds);
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int threads_;
  double seconds_;
  PeakResult r_{};
};

// The probes' thread counts: one std::thread each, started per call (a count in the billions hung, then aborted).
constexpr int64_t kMaxProbeThreads = 1024;

Napi::Value MeasurePeak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int threads = info[0].IsUndefined() ? ThreadPool::shared().threads()
                                            : static_cast<int>(SizeArg(env, info[0], 1, kMaxProbeThreads, "threads"));
  double seconds = 1.0;
  if (!info[1].IsUndefined()) {
    if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "seconds: expected a number");
    seconds = info[1].As<Napi::Number>().DoubleValue();
    if (!(seconds > 0 && seconds <= 600)) throw Napi::RangeError::New(env, "seconds: expected (0, 600]");
  }
  auto* w = new PeakWorker(env, threads, seconds);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

class BandwidthWorker : public Napi::AsyncWorker {
 public:
  BandwidthWorker(Napi::Env env, double mib, int threads)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), mib_(mib), threads_(threads) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      gbs_ = measure_read_bandwidth(static_cast<size_t>(mib_ * 1024 * 1024), threads_, 5);
    } catch (const std::exception& ex) {
      SetError(ex.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), gbs_)); }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  double mib_;
  int threads_;
  double gbs_ = 0;
};

Napi::Value MeasureBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double mib = 256;
  if (!info[0].IsUndefined()) {
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "mib: expected a number");
    mib = info[0].As<Napi::Number>().DoubleValue();
    if (!(mib > 0 && mib <= 1 << 20)) throw Napi::RangeError::New(env, "mib: expected (0, 1048576]");
  }
  const int threads = info[1].IsUndefined() ? ThreadPool::shared().threads()
                                            : static_cast<int>(SizeArg(env, info[1], 1, kMaxProbeThreads, "threads"));
  auto* w = new BandwidthWorker(env, mib, threads);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// sumRowsByToken(rows: Uint8Array [n, d] of dtype, dtype, tokenRows: Uint32Array [n], acc: Float32Array [u, d],
// weights?: Float32Array [n]): acc[tokenRows[i]] += weights[i] * rows[i] in fp32, in row order (deduplicated batches' combine, expert-worker/src/token-rows.ts). On
// the calling thread: ~1 MB of adds per DeepSeek-V3 batch, a fraction of a millisecond, where the JavaScript loop
// took several.
Napi::Value SumRowsByToken(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
      !info[3].IsTypedArray())
    throw Napi::TypeError::New(env, "sumRowsByToken(rows, dtype, tokenRows, acc): bad arguments");
  // Synchronous, and nothing below runs JavaScript: the views stay as they are (SharedArrayBuffer-backed ones too).
  const int dtype = info[1].As<Napi::Number>().Int32Value();
  const ArrayView rows = TypedArg(env, info[0], napi_uint8_array, "rows", "Uint8Array");
  if (!dtype_valid(dtype)) throw Napi::TypeError::New(env, "dtype: unsupported");
  const ArrayView tr = TypedArg(env, info[2], napi_uint32_array, "tokenRows", "Uint32Array");
  const ArrayView acc = TypedArg(env, info[3], napi_float32_array, "acc", "Float32Array");
  const auto t = static_cast<DType>(dtype);
  const size_t n = tr.length;
  const size_t bytes = rows.length;
  const size_t es = static_cast<size_t>(dtype_size(t));
  if (n == 0 || bytes % (n * es) != 0) throw Napi::RangeError::New(env, "rows: byte length is not n rows of dtype");
  const size_t d = bytes / (n * es);
  const size_t u = acc.length / (d == 0 ? 1 : d);
  if (d == 0 || acc.length != u * d) throw Napi::RangeError::New(env, "acc: length is not a multiple of d");
  const uint8_t* src = static_cast<const uint8_t*>(rows.data);
  float* out = static_cast<float*>(acc.data);
  const float* wts = nullptr;
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    const ArrayView w = TypedArg(env, info[4], napi_float32_array, "weights", "Float32Array");
    if (w.length != n) throw Napi::RangeError::New(env, "weights: expected one per row of tokenRows");
    wts = static_cast<const float*>(w.data);
  }
  // The indices copied while checked: acc may overlap tokenRows (or another thread share it), and a sum written
  // into it must not move a later row past the accumulator. n * 4 bytes against n * d adds.
  std::vector<uint32_t> idx(n);
  std::memcpy(idx.data(), tr.data, n * 4);
  for (size_t i = 0; i < n; i++)
    if (idx[i] >= u) throw Napi::RangeError::New(env, "tokenRows: entry past the accumulator's rows");
  for (size_t i = 0; i < n; i++) {
    float* a = out + static_cast<size_t>(idx[i]) * d;
    const uint8_t* r = src + i * d * es;
    // each step in double, rounded to fp32: what JavaScript's `acc[j] += w * x` does (the fallback in
    // token-rows.ts, and the router's own combine), so the two agree bit for bit
    const double w = wts ? wts[i] : 1.0;
    if (t == DType::BF16) {
      for (size_t j = 0; j < d; j++) {
        uint16_t h;
        std::memcpy(&h, r + 2 * j, 2);
        a[j] = static_cast<float>(a[j] + w * bf16_to_f32(h));
      }
    } else if (t == DType::F16) {
      for (size_t j = 0; j < d; j++) {
        uint16_t h;
        std::memcpy(&h, r + 2 * j, 2);
        a[j] = static_cast<float>(a[j] + w * f16_to_f32(h));
      }
    } else {
      for (size_t j = 0; j < d; j++) {
        float f;
        std::memcpy(&f, r + 4 * j, 4);
        a[j] = static_cast<float>(a[j] + w * f);
      }
    }
  }
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sumRowsByToken", Napi::Function::New(env, SumRowsByToken));
  exports.Set("measureReadBandwidth", Napi::Function::New(env, MeasureBandwidth));
  exports.Set("prepareExpert", Napi::Function::New(env, PrepareExpert));
  exports.Set("expertInfo", Napi::Function::New(env, ExpertInfo));
  exports.Set("runExperts", Napi::Function::New(env, RunExperts));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("measurePeak", Napi::Function::New(env, MeasurePeak));
  return exports;
}

}  // namespace

NODE_API_MODULE(switchyard_native, Init)
