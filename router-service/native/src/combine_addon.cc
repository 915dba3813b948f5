// N-API surface of the router's native combine (typed wrapper: router-service/src/core/native-combine.ts).
//
//   combine(dst, type, tokens, d, slots, weights, locations, results, base) -> whether it wrote an Inf or NaN
//     dst        Uint8Array/Uint16Array/Float32Array view of the reply's data field, tokens*d elements of `type`
//     type       1 = FLOAT32 rows, 2 = BFLOAT16 rows
//     weights    Float32Array [tokens*slots]; locations Int32Array [tokens*slots*2] (result index or -1, row)
//     results    Array of typed-array views of worker replies (any alignment), its elements read before any data
//                pointer is taken (a getter could detach a buffer)
//     base       Float32Array [tokens*d] (shared-expert output) or null
//   routerLogits(hidden, gateT, tokens, d, experts, out) -> undefined
//     hidden     Float32Array [tokens*d] or Uint16Array (bf16 bits); gateT Float32Array [d*experts] (the gate
//                transposed); out Float32Array
//                [tokens*experts]. Same bits as packages/moe routerLogits (native/src/logits.h).
//   routerLogitsAsync(hidden, gateT, tokens, d, experts, threads) -> Promise<Float32Array [tokens*experts]>
//     the same off the event loop: a libuv pool thread and the process's threads - 1 gate workers (gate_pool.h,
//     made at the first call) take the gate's panels, the calls in arrival order: a flush of DeepSeek-V3 decode
//     tokens costs the event loop ~0.1-0.3 ms a token in the synchronous call. The logits are written to memory of
//     the addon's, handed to JavaScript when done (no copy), so no caller's buffer is written from another thread.
//     hidden and gateT are read in place (a DeepSeek-V3 flush is MBs of each) and held until the promise settles: a
//     resizable ArrayBuffer (which could shrink under the gate threads) and a detached one are refused, and the
//     caller must not transfer them before the promise settles.
//   asyncLogitsOut() -> true: routerLogitsAsync allocates its output (an older build took an `out` argument)
//   routerGate(logits, tokens, experts, k, sigmoid, normTopK, scale, nGroup, topkGroup, bias, ids, weights) -> number
//     the gate's selection (native/src/gate.h; packages/moe softmaxTopK / sigmoidGroupTopK give the same ids and
//     weights): logits Float32Array [tokens*experts]; sigmoid 0 = softmax top-k, 1 = sigmoid group-limited top-k;
//     bias Float32Array [experts] or null; ids Int32Array and weights Float32Array [tokens*k], written. Returns -1, or
//     the flat index of the first NaN / +Infinity logit (the caller names it in its error).
//   gateLayout() -> string
//     the gateT layout the logits expect ("panel32": logits.h); the TypeScript side refuses an addon built before it
//   isa() -> string
// combine and routerLogits run on the event loop: a few microseconds per token, less than a hop to a thread would
// cost. Every index is checked against the sizes it reads from, so a bad call throws RangeError instead of reading
// out of bounds.
#include <napi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "combine.h"
#include "gate.h"
#include "gate_pool.h"
#include "logits.h"

using namespace switchyard;

namespace {

// The argument handling is plain N-API, not node-addon-api's wrappers: combine runs once per request on the event
// loop, and at one token the wrappers cost more than the sum (~3.4 us per call, measured: a heap-allocated
// argument array past 6 arguments, and three or four N-API calls per typed array where napi_get_typedarray_info
// alone gives the element type, count and the data pointer with the view's offset applied).

struct Bytes {
  uint8_t* data;
  size_t length;
};

size_t ElementSize(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      return 1;
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    default:
      return 8;
  }
}

// Throws (as a pending JS exception) and returns nullptr, so callers can `return Fail(...)`.
napi_value Fail(napi_env env, bool range, const std::string& msg) {
  if (range)
    napi_throw_range_error(env, nullptr, msg.c_str());
  else
    napi_throw_type_error(env, nullptr, msg.c_str());
  return nullptr;
}

// A typed array's bytes; with `want`, only a typed array of that element type.
bool ViewOf(napi_env env, napi_value v, Bytes* out, const napi_typedarray_type* want = nullptr) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok) return false;
  if (want && type != *want) return false;
  out->data = static_cast<uint8_t*>(data);
  out->length = length * ElementSize(type);
  return true;
}

constexpr napi_typedarray_type kFloat32 = napi_float32_array;
constexpr napi_typedarray_type kInt32 = napi_int32_array;

// An integral number in [lo, hi], else -1 (callers name the argument in the error).
int64_t IntArg(napi_env env, napi_value v, int64_t lo, int64_t hi) {
  double x = 0;
  if (napi_get_value_double(env, v, &x) != napi_ok) return -1;
  if (!(x >= static_cast<double>(lo) && x <= static_cast<double>(hi)) || x != static_cast<double>(static_cast<int64_t>(x)))
    return -1;
  return static_cast<int64_t>(x);
}

constexpr size_t kInlineResults = 16;

napi_value CombineJs(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 9) return Fail(env, false, "combine: 9 arguments expected");
  const int64_t type = IntArg(env, argv[1], 1, 2);
  if (type < 0) return Fail(env, true, "type: out of range");
  const int64_t tokens = IntArg(env, argv[2], 0, 1 << 30);
  if (tokens < 0) return Fail(env, true, "tokens: out of range");
  const int64_t d = IntArg(env, argv[3], 0, 1 << 24);
  if (d < 0) return Fail(env, true, "d: out of range");
  const int64_t slots = IntArg(env, argv[4], 0, 1 << 16);
  if (slots < 0) return Fail(env, true, "slots: out of range");
  const size_t el = type == 2 ? 2 : 4;
  bool isArray = false;
  if (napi_is_array(env, argv[7], &isArray) != napi_ok || !isArray)
    return Fail(env, false, "results: expected an array");
  uint32_t nres = 0;
  if (napi_get_array_length(env, argv[7], &nres) != napi_ok) return nullptr;
  // One request's results fit inline; a large batch spills to the heap.
  napi_value inlineVals[kInlineResults];
  Bytes inlineRes[kInlineResults];
  const uint8_t* inlinePtrs[kInlineResults];
  std::vector<napi_value> heapVals;
  std::vector<Bytes> heapRes;
  std::vector<const uint8_t*> heapPtrs;
  napi_value* vals = inlineVals;
  Bytes* res = inlineRes;
  const uint8_t** ptrs = inlinePtrs;
  if (nres > kInlineResults) {
    heapVals.resize(nres);
    heapRes.resize(nres);
    heapPtrs.resize(nres);
    vals = heapVals.data();
    res = heapRes.data();
    ptrs = heapPtrs.data();
  }
  // The elements first: reading one may run JavaScript (a getter) that detaches or shrinks any of the arguments'
  // buffers, so no data pointer is taken before the last of them. Nothing below calls into JavaScript.
  for (uint32_t i = 0; i < nres; i++)
    if (napi_get_element(env, argv[7], i, &vals[i]) != napi_ok) return nullptr;
  Bytes dst, weights, locations;
  if (!ViewOf(env, argv[0], &dst)) return Fail(env, false, "dst: expected a typed array");
  if (!ViewOf(env, argv[5], &weights, &kFloat32)) return Fail(env, false, "weights: expected a Float32Array");
  if (!ViewOf(env, argv[6], &locations, &kInt32)) return Fail(env, false, "locations: expected an Int32Array");
  const size_t n = static_cast<size_t>(tokens) * d;
  const size_t ts = static_cast<size_t>(tokens) * slots;
  if (dst.length < n * el) return Fail(env, true, "dst: shorter than tokens*d elements");
  if (weights.length < ts * 4) return Fail(env, true, "weights: shorter than tokens*slots");
  if (locations.length < ts * 8) return Fail(env, true, "locations: shorter than tokens*slots*2");
  for (uint32_t i = 0; i < nres; i++) {
    if (!ViewOf(env, vals[i], &res[i])) return Fail(env, false, "results[i]: expected a typed array");
    ptrs[i] = res[i].data;
  }
  const float* base = nullptr;
  napi_valuetype bt;
  if (napi_typeof(env, argv[8], &bt) != napi_ok) return nullptr;
  if (bt != napi_null && bt != napi_undefined) {
    Bytes b;
    if (!ViewOf(env, argv[8], &b, &kFloat32)) return Fail(env, false, "base: expected a Float32Array");
    if (b.length < n * 4) return Fail(env, true, "base: shorter than tokens*d floats");
    base = reinterpret_cast<const float*>(b.data);
  }
  // Bounds of every (result, row) the sum will read, checked on a copy that the sum then reads: dst may overlap
  // locations (or another thread share its buffer), and a token's output must not move a later token's (result, row)
  // after its check. ts * 8 bytes, against ts * d * el the sum reads.
  thread_local std::vector<int32_t> locCopy;
  if (locCopy.size() < 2 * ts) locCopy.resize(2 * ts);
  int32_t* loc = locCopy.data();
  if (ts > 0) std::memcpy(loc, locations.data, ts * 8);
  const size_t rowBytes = static_cast<size_t>(d) * el;
  for (size_t i = 0; i < ts; i++) {
    const int32_t r = loc[2 * i];
    if (r < 0) continue;
    const int32_t row = loc[2 * i + 1];
    if (static_cast<uint32_t>(r) >= nres || row < 0 || (static_cast<size_t>(row) + 1) * rowBytes > res[r].length)
      return Fail(env, true, "locations: (result, row) out of range");
  }
  CombineArgs a{type == 2 ? RowType::BF16 : RowType::F32,
                static_cast<int>(tokens),
                static_cast<int>(d),
                static_cast<int>(slots),
                reinterpret_cast<const float*>(weights.data),
                loc,
                ptrs,
                base,
                dst.data};
  const bool nonFinite = Combine(a);
  napi_value out;
  if (napi_get_boolean(env, nonFinite, &out) != napi_ok) return nullptr;
  return out;  // whether the sum wrote an Inf or NaN
}

// A Float32Array argument of at least `n` floats, else nullptr (after throwing, naming the argument).
const float* FloatsArg(napi_env env, napi_value v, size_t n, const char* name) {
  bool is = false;
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_float32_array) {
    Fail(env, false, std::string(name) + ": expected a Float32Array");
    return nullptr;
  }
  if (length < n) {
    Fail(env, true, std::string(name) + ": shorter than " + std::to_string(n) + " floats");
    return nullptr;
  }
  return static_cast<const float*>(data);
}

// A checked routerLogits call: the first six arguments of routerLogits / routerLogitsAsync.
struct LogitsCall {
  const void* x = nullptr;
  bool bf16 = false;
  int tokens = 0, d = 0, experts = 0;
  const float* wt = nullptr;
  float* out = nullptr;

  void Run(int p0, int p1) const {
    if (bf16)
      RouterLogitsBf16(static_cast<const uint16_t*>(x), tokens, d, wt, experts, out, p0, p1);
    else
      RouterLogits(static_cast<const float*>(x), tokens, d, wt, experts, out, p0, p1);
  }
};

// Reads and checks argv[0..4] and, with_out, the output argv[5]; false after throwing, naming the argument.
bool ReadLogitsCall(napi_env env, napi_value* argv, LogitsCall* c, bool with_out) {
  const int64_t tokens = IntArg(env, argv[2], 0, 1 << 30);
  if (tokens < 0) return Fail(env, true, "tokens: out of range"), false;
  const int64_t d = IntArg(env, argv[3], 1, 1 << 24);
  if (d < 0) return Fail(env, true, "d: out of range"), false;
  const int64_t experts = IntArg(env, argv[4], 1, 1 << 16);
  if (experts < 0) return Fail(env, true, "experts: out of range"), false;
  // hidden: a Float32Array (fp32) or a Uint16Array (bf16 bits)
  const size_t n = static_cast<size_t>(tokens) * d;
  bool is = false;
  napi_typedarray_type type;
  size_t length = 0;
  void* x = nullptr;
  if (napi_is_typedarray(env, argv[0], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &x, nullptr, nullptr) != napi_ok ||
      (type != napi_float32_array && type != napi_uint16_array))
    return Fail(env, false, "hidden: expected a Float32Array (fp32) or a Uint16Array (bf16)"), false;
  if (length < n) return Fail(env, true, "hidden: shorter than tokens*d elements"), false;
  const float* wt = FloatsArg(env, argv[1], static_cast<size_t>(d) * experts, "gateT");
  if (!wt) return false;
  float* out = nullptr;
  if (with_out) {
    out = const_cast<float*>(FloatsArg(env, argv[5], static_cast<size_t>(tokens) * experts, "out"));
    if (!out) return false;
  }
  c->x = x;
  c->bf16 = type == napi_uint16_array;
  c->tokens = static_cast<int>(tokens);
  c->d = static_cast<int>(d);
  c->experts = static_cast<int>(experts);
  c->wt = wt;
  c->out = out;
  return true;
}

napi_value RouterLogitsJs(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 6) return Fail(env, false, "routerLogits: 6 arguments expected");
  LogitsCall c;
  if (!ReadLogitsCall(env, argv, &c, /*with_out=*/true)) return nullptr;
  c.Run(0, GatePanels(c.experts));
  return nullptr;  // undefined
}

// routerLogitsAsync: the gate's panels on the process's gate pool, this libuv thread among its threads.
class LogitsWorker : public Napi::AsyncWorker {
 public:
  LogitsWorker(Napi::Env env, const LogitsCall& c, int threads, napi_value* argv)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), c_(c), threads_(threads) {
    // hidden and gateT stay alive (not collected) until the promise settles
    keep_[0] = Napi::Persistent(Napi::Value(env, argv[0]));
    keep_[1] = Napi::Persistent(Napi::Value(env, argv[1]));
    out_bytes_ = static_cast<size_t>(c.tokens) * c.experts * 4;
  }
  ~LogitsWorker() override { std::free(out_); }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    if (out_bytes_ == 0) return;
    out_ = static_cast<float*>(std::malloc(out_bytes_));
    if (!out_) return SetError("routerLogitsAsync: out of memory for the logits");
    // The process's gate threads (gate_pool.h): threads - 1 workers, and this thread; every element is written.
    LogitsCall c = c_;
    c.out = out_;
    GatePool::Shared(threads_ - 1).Run(GatePanels(c.experts), [&c](int p) { c.Run(p, p + 1); });
  }
  void OnOK() override {
    Napi::Env env = Env();
    const size_t n = out_bytes_ / 4;
    if (n == 0) return deferred_.Resolve(Napi::Float32Array::New(env, 0));
    Napi::ArrayBuffer ab;
    try {
      ab = Napi::ArrayBuffer::New(env, out_, out_bytes_, [](Napi::Env, void* q) { std::free(q); });
      out_ = nullptr;  // JavaScript owns it now
    } catch (const Napi::Error&) {
      // a runtime that refuses external memory: one copy (out_ is freed with this worker)
      ab = Napi::ArrayBuffer::New(env, out_bytes_);
      std::memcpy(ab.Data(), out_, out_bytes_);
    }
    deferred_.Resolve(Napi::Float32Array::New(env, n, ab, 0));
  }
  void OnError(const Napi::Error& err) override { deferred_.Reject(err.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  LogitsCall c_;
  int threads_;
  Napi::Reference<Napi::Value> keep_[2];
  size_t out_bytes_ = 0;
  float* out_ = nullptr;
};

// Whether a typed array's buffer is a resizable ArrayBuffer (its `resizable` getter; false for a SharedArrayBuffer,
// whose growable kind only grows), or detached. The getter runs JavaScript: call before any data pointer is taken.
bool ResizableOrDetached(napi_env env, napi_value v, bool* detached) {
  *detached = false;
  bool is = false;
  napi_value ab;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  if (napi_get_typedarray_info(env, v, nullptr, nullptr, nullptr, &ab, nullptr) != napi_ok) return false;
  if (napi_is_arraybuffer(env, ab, &is) != napi_ok || !is) return false;
  if (napi_is_detached_arraybuffer(env, ab, detached) != napi_ok) return false;
  napi_value r;
  bool resizable = false;
  if (napi_get_named_property(env, ab, "resizable", &r) != napi_ok) return false;
  if (napi_get_value_bool(env, r, &resizable) != napi_ok) return false;  // no such getter: not resizable
  return resizable;
}

napi_value RouterLogitsAsyncJs(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 6) return Fail(env, false, "routerLogitsAsync: 6 arguments expected (hidden, gateT, tokens, d, experts, threads)");
  // The buffers the gate threads read in place: neither resizable (it could shrink under them) nor detached. These
  // checks run the `resizable` getter, so they come before ReadLogitsCall takes the data pointers.
  const char* names[2] = {"hidden", "gateT"};
  for (int i = 0; i < 2; i++) {
    bool detached = false;
    const bool resizable = ResizableOrDetached(env, argv[i], &detached);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) != napi_ok || pending) return nullptr;
    if (resizable)
      return Fail(env, false, std::string(names[i]) + ": a resizable ArrayBuffer could shrink under the gate threads; "
                                                      "pass a fixed-length buffer");
    if (detached) return Fail(env, false, std::string(names[i]) + ": its ArrayBuffer is detached (transferred)");
  }
  const int64_t threads = IntArg(env, argv[5], 1, 256);
  if (threads < 0) return Fail(env, true, "threads: out of range");
  LogitsCall c;
  if (!ReadLogitsCall(env, argv, &c, /*with_out=*/false)) return nullptr;
  auto* w = new LogitsWorker(Napi::Env(env), c, static_cast<int>(threads), argv);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

napi_value RouterGateJs(napi_env env, napi_callback_info info) {
  size_t argc = 12;
  napi_value argv[12];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 12) return Fail(env, false, "routerGate: 12 arguments expected");
  const int64_t tokens = IntArg(env, argv[1], 0, 1 << 30);
  if (tokens < 0) return Fail(env, true, "tokens: out of range");
  const int64_t experts = IntArg(env, argv[2], 1, 1 << 20);
  if (experts < 0) return Fail(env, true, "experts: out of range");
  const int64_t k = IntArg(env, argv[3], 1, experts);
  if (k < 0) return Fail(env, true, "k: out of range [1, experts]");
  const int64_t sigmoid = IntArg(env, argv[4], 0, 1);
  if (sigmoid < 0) return Fail(env, true, "sigmoid: 0 or 1 expected");
  const int64_t norm = IntArg(env, argv[5], 0, 1);
  if (norm < 0) return Fail(env, true, "normTopK: 0 or 1 expected");
  double scale = 0;
  if (napi_get_value_double(env, argv[6], &scale) != napi_ok) return Fail(env, false, "scale: expected a number");
  const int64_t nGroup = IntArg(env, argv[7], 1, experts);
  if (nGroup < 0 || experts % nGroup != 0 || (nGroup > 1 && experts / nGroup < 2))
    return Fail(env, true, "nGroup: must divide experts into groups of at least 2");
  const int64_t topkGroup = IntArg(env, argv[8], 1, nGroup);
  if (topkGroup < 0) return Fail(env, true, "topkGroup: out of range [1, nGroup]");
  const size_t n = static_cast<size_t>(tokens);
  const float* logits = FloatsArg(env, argv[0], n * experts, "logits");
  if (!logits) return nullptr;
  const float* bias = nullptr;
  napi_valuetype bt;
  if (napi_typeof(env, argv[9], &bt) != napi_ok) return nullptr;
  if (bt != napi_null && bt != napi_undefined) {
    bias = FloatsArg(env, argv[9], static_cast<size_t>(experts), "bias");
    if (!bias) return nullptr;
  }
  Bytes ids;
  bool isIds = false;
  napi_typedarray_type idsType;
  size_t idsLength = 0;
  void* idsData = nullptr;
  if (napi_is_typedarray(env, argv[10], &isIds) != napi_ok || !isIds ||
      napi_get_typedarray_info(env, argv[10], &idsType, &idsLength, &idsData, nullptr, nullptr) != napi_ok ||
      idsType != napi_int32_array)
    return Fail(env, false, "ids: expected an Int32Array");
  if (idsLength < n * k) return Fail(env, true, "ids: shorter than tokens*k");
  ids.data = static_cast<uint8_t*>(idsData);
  float* weights = const_cast<float*>(FloatsArg(env, argv[11], n * k, "weights"));
  if (!weights) return nullptr;
  GateArgs a{logits,
             static_cast<int>(tokens),
             static_cast<int>(experts),
             static_cast<int>(k),
             sigmoid == 1,
             norm == 1,
             scale,
             static_cast<int>(nGroup),
             static_cast<int>(topkGroup),
             bias,
             reinterpret_cast<int32_t*>(ids.data),
             weights};
  napi_value result;
  if (napi_create_double(env, static_cast<double>(Gate(a)), &result) != napi_ok) return nullptr;
  return result;
}

Napi::Value IsaJs(const Napi::CallbackInfo& info) {
#if defined(__AVX512F__)
  return Napi::String::New(info.Env(), "avx512");
#elif defined(__AVX2__)
  return Napi::String::New(info.Env(), "avx2");
#else
  return Napi::String::New(info.Env(), "generic");
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  napi_value fn;
  NAPI_THROW_IF_FAILED(env, napi_create_function(env, "combine", NAPI_AUTO_LENGTH, CombineJs, nullptr, &fn), exports);
  exports.Set("combine", Napi::Value(env, fn));
  NAPI_THROW_IF_FAILED(env,
                       napi_create_function(env, "routerLogits", NAPI_AUTO_LENGTH, RouterLogitsJs, nullptr, &fn),
                       exports);
  exports.Set("routerLogits", Napi::Value(env, fn));
  NAPI_THROW_IF_FAILED(
      env, napi_create_function(env, "routerLogitsAsync", NAPI_AUTO_LENGTH, RouterLogitsAsyncJs, nullptr, &fn),
      exports);
  exports.Set("routerLogitsAsync", Napi::Value(env, fn));
  NAPI_THROW_IF_FAILED(env,
                       napi_create_function(env, "routerGate", NAPI_AUTO_LENGTH, RouterGateJs, nullptr, &fn),
                       exports);
  exports.Set("routerGate", Napi::Value(env, fn));
  exports.Set("isa", Napi::Function::New(env, IsaJs, "isa"));
  exports.Set("asyncLogitsOut", Napi::Function::New(
                                    env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                      return Napi::Boolean::New(info.Env(), true);
                                    },
                                    "asyncLogitsOut"));
  exports.Set("gateLayout", Napi::Function::New(
                                env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                  return Napi::String::New(info.Env(), "panel" + std::to_string(kGatePanel));
                                },
                                "gateLayout"));
  return exports;
}

}  // namespace

NODE_API_MODULE(switchyard_router, Init)
