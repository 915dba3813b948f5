// bf16 / fp16 <-> fp32 element conversions (IEEE round-to-nearest-even, NaN kept quiet), little-endian storage.
#pragma once

#include <cstdint>
#include <cstring>

namespace switchyard {

// Element types, numbered as switchyard.v1.DType on the wire.
enum class DType : int { F32 = 1, BF16 = 2, F16 = 3 };

inline int dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline bool dtype_valid(int t) { return t >= 1 && t <= 3; }

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// _Float16 (GCC >= 12 on x86-64) converts with IEEE rounding in hardware or libgcc.
inline float f16_to_f32(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline uint16_t f32_to_f16(float f) {
  _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// Element i of a little-endian array of `t`, as fp32.
inline float load_elem(DType t, const uint8_t* data, int64_t i) {
  switch (t) {
    case DType::F32: {
      float f;
      std::memcpy(&f, data + i * 4, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, data + i * 2, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, data + i * 2, 2);
      return f16_to_f32(h);
    }
  }
  return 0.f;
}

inline void store_elem(DType t, uint8_t* data, int64_t i, float v) {
  switch (t) {
    case DType::F32:
      std::memcpy(data + i * 4, &v, 4);
      break;
    case DType::BF16: {
      uint16_t h = f32_to_bf16(v);
      std::memcpy(data + i * 2, &h, 2);
      break;
    }
    case DType::F16: {
      uint16_t h = f32_to_f16(v);
      std::memcpy(data + i * 2, &h, 2);
      break;
    }
  }
}

}  // namespace switchyard
