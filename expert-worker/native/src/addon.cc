// N-API surface of the native CPU backend (see expert-worker/src/backend/native-cpu.ts for the typed wrapper).
//
//   prepareExpert(gate, up, down) -> Promise<External>   weights {dtype, rows, cols, data: Uint8Array}
//   expertInfo(handle) -> {d, f, bytes}
//   runExperts({dtype, tokens, rows, cols, slices: Uint32Array [expertIndex, offset, count]*, experts: External[],
//               rowWeights?: Float32Array, cancel?: Int32Array}) -> Promise<{output: Uint8Array, tilesDone,
//               tilesTotal}>; rejects with code "CANCELLED" when the cancel flag was raised mid-run
//   stats() -> {tilesDone, runsStarted, runsCompleted, runsCancelled, threads, isa, cuda}
//   measurePeak(threads, seconds) -> Promise<{gflops, perThread, perThreadCpu, threads, seconds}>
//   measureReadBandwidth(mib, threads) -> Promise<GB/s>   streaming-read bandwidth, best of 5 passes
// All heavy work runs on libuv worker threads (Napi::AsyncWorker) and the kernel's own pool: never on the event loop.
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

WeightArg ReadWeight(Napi::Env env, Napi::Value v, const char* name) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, std::string(name) + ": expected a weight object");
  Napi::Object o = v.As<Napi::Object>();
  int dtype = o.Get("dtype").ToNumber().Int32Value();
  if (!dtype_valid(dtype)) throw Napi::TypeError::New(env, std::string(name) + ".dtype: unsupported");
  Napi::Value data = o.Get("data");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, std::string(name) + ".data: expected Uint8Array");
  auto arr = data.As<Napi::Uint8Array>();
  const int64_t rows = SizeArg(env, o.Get("rows"), 1, kMaxSide, std::string(name) + ".rows");
  const int64_t cols = SizeArg(env, o.Get("cols"), 1, kMaxSide, std::string(name) + ".cols");
  if (static_cast<int64_t>(arr.ByteLength()) != rows * cols * dtype_size(static_cast<DType>(dtype)))
    throw Napi::RangeError::New(env, std::string(name) + ".data: byte length does not match rows*cols*dtype");
  WeightArg w;
  w.view = {static_cast<DType>(dtype), rows, cols, arr.Data()};
  w.keep = Napi::Persistent(arr);
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
    deferred_.Resolve(Napi::External<ExpertHandle>::New(env, h, FinalizeExpert));
  }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  WeightArg g_, u_, d_;
  std::unique_ptr<PreparedExpert> e_;
};

Napi::Value PrepareExpert(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WeightArg g = ReadWeight(env, info[0], "gate"), u = ReadWeight(env, info[1], "up"),
            d = ReadWeight(env, info[2], "down");
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
  if (!v.IsExternal()) throw Napi::TypeError::New(env, name + ": expected a prepared expert handle");
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
  std::vector<Napi::Reference<Napi::Value>> keep;  // inputs and expert handles stay alive until the run ends

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
  auto* w = new RunWorker(env);
  std::unique_ptr<RunWorker> guard(w);  // deleted on a validation throw; released once queued
  RunRequest& req = w->req;
  int dtype = o.Get("dtype").ToNumber().Int32Value();
  if (!dtype_valid(dtype)) throw Napi::TypeError::New(env, "dtype: unsupported");
  req.dtype = static_cast<DType>(dtype);
  req.rows = SizeArg(env, o.Get("rows"), 0, kMaxRows, "rows");
  req.cols = SizeArg(env, o.Get("cols"), 1, kMaxSide, "cols");
  Napi::Value tokens = o.Get("tokens");
  if (!tokens.IsTypedArray() || tokens.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "tokens: expected Uint8Array");
  auto tok = tokens.As<Napi::Uint8Array>();
  if (static_cast<int64_t>(tok.ByteLength()) != req.rows * req.cols * dtype_size(req.dtype))
    throw Napi::RangeError::New(env, "tokens: byte length does not match rows*cols*dtype");
  req.tokens = tok.Data();
  w->keep.push_back(Napi::Persistent(tokens));

  Napi::Value ex = o.Get("experts");
  if (!ex.IsArray()) throw Napi::TypeError::New(env, "experts: expected an array of handles");
  Napi::Array experts = ex.As<Napi::Array>();
  for (uint32_t i = 0; i < experts.Length(); ++i) {
    Napi::Value hv = experts.Get(i);
    ExpertHandle* h = GetHandle(env, hv, "experts[" + std::to_string(i) + "]");
    if (h->e->d != req.cols) throw Napi::RangeError::New(env, "experts[" + std::to_string(i) + "]: d != cols");
    req.experts.push_back(h->e.get());
    w->keep.push_back(Napi::Persistent(hv));
  }

  Napi::Value sv = o.Get("slices");
  if (!sv.IsTypedArray() || sv.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    throw Napi::TypeError::New(env, "slices: expected Uint32Array of [expertIndex, offset, count] triples");
  auto sl = sv.As<Napi::Uint32Array>();
  if (sl.ElementLength() % 3 != 0) throw Napi::RangeError::New(env, "slices: length must be a multiple of 3");
  std::vector<uint8_t> used(static_cast<size_t>(req.rows), 0);
  for (size_t i = 0; i < sl.ElementLength(); i += 3) {
    ExpertSliceRef s{sl[i], sl[i + 1], sl[i + 2]};
    if (s.expert >= req.experts.size()) throw Napi::RangeError::New(env, "slices: expert index out of range");
    if (static_cast<int64_t>(s.offset) + s.count > req.rows) throw Napi::RangeError::New(env, "slices: out of range");
    for (uint32_t r = s.offset; r < s.offset + s.count; ++r) {
      if (used[r]) throw Napi::RangeError::New(env, "slices: overlapping rows");
      used[r] = 1;
    }
    if (s.count > 0) req.slices.push_back(s);
  }

  Napi::Value rw = o.Get("rowWeights");
  if (!rw.IsUndefined() && !rw.IsNull()) {
    if (!rw.IsTypedArray() || rw.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, "rowWeights: expected Float32Array");
    auto f = rw.As<Napi::Float32Array>();
    if (static_cast<int64_t>(f.ElementLength()) != req.rows) throw Napi::RangeError::New(env, "rowWeights: length != rows");
    req.row_weights = f.Data();
    w->keep.push_back(Napi::Persistent(rw));
  }
  Napi::Value cv = o.Get("cancel");
  if (!cv.IsUndefined() && !cv.IsNull()) {
    if (!cv.IsTypedArray() || cv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        cv.As<Napi::Int32Array>().ElementLength() < 1)
      throw Napi::TypeError::New(env, "cancel: expected Int32Array(1)");
    req.cancel_flag = cv.As<Napi::Int32Array>().Data();
    w->keep.push_back(Napi::Persistent(cv));
  }
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
  auto rows = info[0].As<Napi::TypedArray>();
  int dtype = info[1].ToNumber().Int32Value();
  auto tr = info[2].As<Napi::TypedArray>();
  auto acc = info[3].As<Napi::TypedArray>();
  if (rows.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, "rows: expected Uint8Array");
  if (!dtype_valid(dtype)) throw Napi::TypeError::New(env, "dtype: unsupported");
  if (tr.TypedArrayType() != napi_uint32_array) throw Napi::TypeError::New(env, "tokenRows: expected Uint32Array");
  if (acc.TypedArrayType() != napi_float32_array) throw Napi::TypeError::New(env, "acc: expected Float32Array");
  const auto t = static_cast<DType>(dtype);
  const size_t n = tr.ElementLength();
  const size_t bytes = rows.ByteLength();
  const size_t es = static_cast<size_t>(dtype_size(t));
  if (n == 0 || bytes % (n * es) != 0) throw Napi::RangeError::New(env, "rows: byte length is not n rows of dtype");
  const size_t d = bytes / (n * es);
  const size_t u = acc.ElementLength() / (d == 0 ? 1 : d);
  if (d == 0 || acc.ElementLength() != u * d) throw Napi::RangeError::New(env, "acc: length is not a multiple of d");
  const uint8_t* src = static_cast<const uint8_t*>(rows.ArrayBuffer().Data()) + rows.ByteOffset();
  const uint32_t* idx = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(tr.ArrayBuffer().Data()) + tr.ByteOffset());
  float* out = reinterpret_cast<float*>(static_cast<uint8_t*>(acc.ArrayBuffer().Data()) + acc.ByteOffset());
  const float* wts = nullptr;
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, "weights: expected Float32Array");
    auto w = info[4].As<Napi::TypedArray>();
    if (w.ElementLength() != n) throw Napi::RangeError::New(env, "weights: expected one per row of tokenRows");
    wts = reinterpret_cast<const float*>(static_cast<const uint8_t*>(w.ArrayBuffer().Data()) + w.ByteOffset());
  }
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
