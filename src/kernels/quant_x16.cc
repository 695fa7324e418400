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

int n_chunks(DType t) { return t == DType::Q4_0 ? 4 : 8; }
int block_bytes(DType t) { return t == DType::Q4_0 ? static_cast<int>(sizeof(quant::BlockQ4_0)) : static_cast<int>(sizeof(quant::BlockQ8_0)); }
// Bytes of one block position of a 16-row group: 16 scales + the quant chunks.
int64_t group_block_bytes(DType t) { return static_cast<int64_t>(block_bytes(t)) * kRows; }
}  // namespace

bool can_interleave(const Tensor& w) {
  return w.layout == Layout::kRowMajor && w.shape.size() == 2 && (w.dtype == DType::Q4_0 || w.dtype == DType::Q8_0) &&
         w.cols() % 32 == 0 && w.cols() > 0;
}

bool interleave_pays() { return cpu_level() == CpuLevel::kAvx512 && cpu_features().avx512_vnni; }

size_t interleaved_bytes(const Tensor& w) {
  return static_cast<size_t>((w.rows() + kRows - 1) / kRows * kRows) * row_bytes(w.dtype, w.cols());
}

Tensor interleave_matrix(ThreadPool& pool, const Tensor& w, void* dst) {
  Tensor o = w;
  o.layout = Layout::kInterleave16;
  o.data = dst;
  const DType t = w.dtype;
  const int64_t n = w.rows(), nb = w.cols() / 32, n_groups = (n + kRows - 1) / kRows;
  const int64_t gbb = group_block_bytes(t);
  const int nc = n_chunks(t);
  pool.parallel_for(n_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      auto* out = static_cast<uint8_t*>(dst) + g * nb * gbb;
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* ob = out + b * gbb;
        for (int l = 0; l < kRows; ++l) {
          const int64_t r = g * kRows + l;
          uint16_t d = 0;
          uint8_t q[32] = {};
          if (r < n) {
            const uint8_t* blk = w.row(r) + b * block_bytes(t);
            std::memcpy(&d, blk, 2);
            if (t == DType::Q4_0) {
              std::memcpy(q, blk + 2, 16);
            } else {
              for (int i = 0; i < 32; ++i) q[i] = static_cast<uint8_t>(blk[2 + i] ^ 0x80);
            }
          } else if (t == DType::Q8_0) {
            std::memset(q, 0x80, 32);  // padding rows: zero weights, zero scale
          }
          std::memcpy(ob + 2 * l, &d, 2);
          for (int c = 0; c < nc; ++c) std::memcpy(ob + 32 + c * 64 + 4 * l, q + 4 * c, 4);
        }
      }
    }
  });
  return o;
}

void interleaved_row_blocks(const Tensor& w, int64_t r, void* dst) {
  const DType t = w.dtype;
  const int64_t nb = w.cols() / 32, g = r / kRows, l = r % kRows, gbb = group_block_bytes(t);
  const int nc = n_chunks(t);
  const auto* grp = static_cast<const uint8_t*>(w.data) + g * nb * gbb;
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* ib = grp + b * gbb;
    uint8_t* blk = out + b * block_bytes(t);
    std::memcpy(blk, ib + 2 * l, 2);
    for (int c = 0; c < nc; ++c) std::memcpy(blk + 2 + 4 * c, ib + 32 + c * 64 + 4 * l, 4);
    if (t == DType::Q8_0)
      for (int i = 0; i < 32; ++i) blk[2 + i] ^= 0x80;
  }
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
