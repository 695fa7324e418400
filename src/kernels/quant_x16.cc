// Layout::kInterleave16 (see quant.h): repacking, row recovery and the portable fallback. The
// AVX512-VNNI gemv is in quant_x16_avx512.cc.
#include <cstring>
#include <vector>

#include "core/cpu.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace merlin {

namespace quant {
void matmul_x16_vnni(ThreadPool& pool, const MatmulArgs& a);  // quant_x16_avx512.cc
}

namespace {
constexpr int kRows = 16;

void put4(uint8_t* body, int64_t off, int chunk, int l, const uint8_t* src) { std::memcpy(body + off + 64 * chunk + 4 * l, src, 4); }
void get4(const uint8_t* body, int64_t off, int chunk, int l, uint8_t* dst) { std::memcpy(dst, body + off + 64 * chunk + 4 * l, 4); }

// Row l's block `blk` (file layout) into the group's block position (head, body).
void put_block(DType t, const uint8_t* blk, int l, uint8_t* head, uint8_t* body) {
  switch (t) {
    case DType::Q4_0:
      std::memcpy(head + 2 * l, blk, 2);
      for (int c = 0; c < 4; ++c) put4(body, 0, c, l, blk + 2 + 4 * c);
      break;
    case DType::Q8_0: {
      std::memcpy(head + 2 * l, blk, 2);
      uint8_t q[32];
      for (int i = 0; i < 32; ++i) q[i] = static_cast<uint8_t>(blk[2 + i] ^ 0x80);
      for (int c = 0; c < 8; ++c) put4(body, 0, c, l, q + 4 * c);
      break;
    }
    case DType::Q4_K: {
      const auto& b = *reinterpret_cast<const quant::BlockQ4_K*>(blk);
      std::memcpy(head + 2 * l, &b.d, 2);
      std::memcpy(head + 32 + 2 * l, &b.dmin, 2);
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        quant::scale_min_k4(j, b.scales, sc, m);
        body[16 * j + l] = sc;
        body[128 + 16 * j + l] = m;
      }
      for (int c = 0; c < 32; ++c) put4(body, 256, c, l, b.qs + 4 * c);
      break;
    }
    case DType::Q6_K: {
      const auto& b = *reinterpret_cast<const quant::BlockQ6_K*>(blk);
      std::memcpy(head + 2 * l, &b.d, 2);
      for (int g = 0; g < 16; ++g) body[16 * g + l] = static_cast<uint8_t>(b.scales[g]);
      for (int c = 0; c < 32; ++c) put4(body, 256, quant::q6k_ql_chunk(c), l, b.ql + 4 * c);
      for (int c = 0; c < 16; ++c) put4(body, 256, quant::q6k_qh_chunk(c), l, b.qh + 4 * c);
      break;
    }
    default: break;
  }
}

// The inverse: row l's block, byte-exact.
void get_block(DType t, const uint8_t* head, const uint8_t* body, int l, uint8_t* blk) {
  switch (t) {
    case DType::Q4_0:
      std::memcpy(blk, head + 2 * l, 2);
      for (int c = 0; c < 4; ++c) get4(body, 0, c, l, blk + 2 + 4 * c);
      break;
    case DType::Q8_0:
      std::memcpy(blk, head + 2 * l, 2);
      for (int c = 0; c < 8; ++c) get4(body, 0, c, l, blk + 2 + 4 * c);
      for (int i = 0; i < 32; ++i) blk[2 + i] ^= 0x80;
      break;
    case DType::Q4_K: {
      auto& b = *reinterpret_cast<quant::BlockQ4_K*>(blk);
      std::memcpy(&b.d, head + 2 * l, 2);
      std::memcpy(&b.dmin, head + 32 + 2 * l, 2);
      uint8_t sc[8], m[8];
      for (int j = 0; j < 8; ++j) {
        sc[j] = body[16 * j + l];
        m[j] = body[128 + 16 * j + l];
      }
      // ggml's 12-byte packing of eight 6-bit scales and mins (inverse of scale_min_k4).
      for (int j = 0; j < 4; ++j) {
        b.scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
        b.scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
        b.scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
      }
      for (int c = 0; c < 32; ++c) get4(body, 256, c, l, b.qs + 4 * c);
      break;
    }
    case DType::Q6_K: {
      auto& b = *reinterpret_cast<quant::BlockQ6_K*>(blk);
      std::memcpy(&b.d, head + 2 * l, 2);
      for (int g = 0; g < 16; ++g) b.scales[g] = static_cast<int8_t>(body[16 * g + l]);
      for (int c = 0; c < 32; ++c) get4(body, 256, quant::q6k_ql_chunk(c), l, b.ql + 4 * c);
      for (int c = 0; c < 16; ++c) get4(body, 256, quant::q6k_qh_chunk(c), l, b.qh + 4 * c);
      break;
    }
    default: break;
  }
}
}  // namespace

bool can_interleave(const Tensor& w) {
  if (w.layout != Layout::kRowMajor || w.shape.size() != 2 || w.cols() <= 0) return false;
  switch (w.dtype) {
    case DType::Q4_0:
    case DType::Q8_0: return w.cols() % 32 == 0;
    case DType::Q4_K:
    case DType::Q6_K: return w.cols() % 256 == 0;
    default: return false;
  }
}

bool interleave_pays() { return cpu_level() == CpuLevel::kAvx512 && cpu_features().avx512_vnni; }

size_t interleaved_bytes(const Tensor& w) {
  const int64_t nb = w.cols() / dtype_info(w.dtype).block_elems;
  return static_cast<size_t>((w.rows() + kRows - 1) / kRows * quant::X16Geom::of(w.dtype).group_bytes(nb));
}

Tensor interleave_matrix(ThreadPool& pool, const Tensor& w, void* dst) {
  Tensor o = w;
  o.layout = Layout::kInterleave16;
  o.data = dst;
  const DType t = w.dtype;
  const int64_t n = w.rows(), nb = w.cols() / dtype_info(t).block_elems, n_groups = (n + kRows - 1) / kRows;
  const auto geom = quant::X16Geom::of(t);
  const int64_t gb = geom.group_bytes(nb), bb = dtype_info(t).block_bytes;
  pool.parallel_for(n_groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<uint8_t> zero(static_cast<size_t>(bb), 0);  // padding rows: scale 0
    for (int64_t g = g0; g < g1; ++g) {
      auto* out = static_cast<uint8_t*>(dst) + g * gb;
      if (nb % 2 == 1 && geom.paired()) std::memset(out + geom.head_at(nb - 1) + 32, 0, 32);  // unused half
      for (int64_t b = 0; b < nb; ++b)
        for (int l = 0; l < kRows; ++l) {
          const int64_t r = g * kRows + l;
          put_block(t, r < n ? w.row(r) + b * bb : zero.data(), l, out + geom.head_at(b), out + geom.body_at(b));
        }
    }
  });
  return o;
}

void interleaved_row_blocks(const Tensor& w, int64_t r, void* dst) {
  const DType t = w.dtype;
  const int64_t nb = w.cols() / dtype_info(t).block_elems, g = r / kRows;
  const auto geom = quant::X16Geom::of(t);
  const int64_t bb = dtype_info(t).block_bytes;
  const auto* grp = static_cast<const uint8_t*>(w.data) + g * geom.group_bytes(nb);
  for (int64_t b = 0; b < nb; ++b)
    get_block(t, grp + geom.head_at(b), grp + geom.body_at(b), static_cast<int>(r % kRows),
              static_cast<uint8_t*>(dst) + b * bb);
}

void quant_matmul_x16(ThreadPool& pool, const MatmulArgs& a) {
  if (interleave_pays()) {
    quant::matmul_x16_vnni(pool, a);
    return;
  }
  // Without VNNI (or with the level capped in tests): one dequantized row at a time.
  pool.parallel_for(a.w->rows(), 16, [&](int64_t n0, int64_t n1) { detail::gemm_portable(a, n0, n1); });
}

}  // namespace merlin
