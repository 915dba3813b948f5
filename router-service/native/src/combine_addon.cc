// N-API surface of the router's native combine (typed wrapper: router-service/src/core/native-combine.ts).
//
//   combine(dst, type, tokens, d, slots, weights, locations, results, base) -> undefined
//     dst        Uint8Array/Uint16Array/Float32Array view of the reply's data field, tokens*d elements of `type`
//     type       1 = FLOAT32 rows, 2 = BFLOAT16 rows
//     weights    Float32Array [tokens*slots]; locations Int32Array [tokens*slots*2] (result index or -1, row)
//     results    Array of typed-array views of worker replies (any alignment)
//     base       Float32Array [tokens*d] (shared-expert output) or null
//   isa() -> string
// Runs on the event loop: it is a few microseconds per token, less than a hop to a thread would cost. Every index
// is checked against the sizes it reads from, so a bad call throws RangeError instead of reading out of bounds.
#include <napi.h>

#include <string>
#include <vector>

#include "combine.h"

using namespace switchyard;

namespace {

struct Bytes {
  uint8_t* data;
  size_t length;
};

Bytes ViewOf(const Napi::Env& env, const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(env, std::string(name) + ": expected a typed array");
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  auto* base = static_cast<uint8_t*>(t.ArrayBuffer().Data());
  return {base + t.ByteOffset(), t.ByteLength()};
}

int IntArg(const Napi::Env& env, const Napi::Value& v, const char* name, int lo, int hi) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(name) + ": expected a number");
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(x >= lo && x <= hi) || x != static_cast<double>(static_cast<int64_t>(x)))
    throw Napi::RangeError::New(env, std::string(name) + ": out of range");
  return static_cast<int>(x);
}

Napi::Value CombineJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 9) throw Napi::TypeError::New(env, "combine: 9 arguments expected");
  const int type = IntArg(env, info[1], "type", 1, 2);
  const int tokens = IntArg(env, info[2], "tokens", 0, 1 << 30);
  const int d = IntArg(env, info[3], "d", 0, 1 << 24);
  const int slots = IntArg(env, info[4], "slots", 0, 1 << 16);
  const size_t el = type == 2 ? 2 : 4;
  const Bytes dst = ViewOf(env, info[0], "dst");
  const Bytes weights = ViewOf(env, info[5], "weights");
  const Bytes locations = ViewOf(env, info[6], "locations");
  const size_t n = static_cast<size_t>(tokens) * d;
  const size_t ts = static_cast<size_t>(tokens) * slots;
  if (dst.length < n * el) throw Napi::RangeError::New(env, "dst: shorter than tokens*d elements");
  if (weights.length < ts * 4) throw Napi::RangeError::New(env, "weights: shorter than tokens*slots");
  if (locations.length < ts * 8) throw Napi::RangeError::New(env, "locations: shorter than tokens*slots*2");
  if (!info[7].IsArray()) throw Napi::TypeError::New(env, "results: expected an array");
  Napi::Array arr = info[7].As<Napi::Array>();
  const uint32_t nres = arr.Length();
  std::vector<Bytes> res(nres);
  std::vector<const uint8_t*> ptrs(nres);
  for (uint32_t i = 0; i < nres; i++) {
    res[i] = ViewOf(env, arr.Get(i), "results[i]");
    ptrs[i] = res[i].data;
  }
  const float* base = nullptr;
  if (!info[8].IsNull() && !info[8].IsUndefined()) {
    const Bytes b = ViewOf(env, info[8], "base");
    if (b.length < n * 4) throw Napi::RangeError::New(env, "base: shorter than tokens*d floats");
    base = reinterpret_cast<const float*>(b.data);
  }
  // Bounds of every (result, row) the sum will read.
  const auto* loc = reinterpret_cast<const int32_t*>(locations.data);
  const size_t rowBytes = static_cast<size_t>(d) * el;
  for (size_t i = 0; i < ts; i++) {
    const int32_t r = loc[2 * i];
    if (r < 0) continue;
    const int32_t row = loc[2 * i + 1];
    if (static_cast<uint32_t>(r) >= nres || row < 0 || (static_cast<size_t>(row) + 1) * rowBytes > res[r].length)
      throw Napi::RangeError::New(env, "locations: (result, row) out of range");
  }
  CombineArgs a{type == 2 ? RowType::BF16 : RowType::F32,
                tokens,
                d,
                slots,
                reinterpret_cast<const float*>(weights.data),
                loc,
                ptrs.data(),
                base,
                dst.data};
  Combine(a);
  return env.Undefined();
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
  exports.Set("combine", Napi::Function::New(env, CombineJs, "combine"));
  exports.Set("isa", Napi::Function::New(env, IsaJs, "isa"));
  return exports;
}

}  // namespace

NODE_API_MODULE(switchyard_router, Init)
