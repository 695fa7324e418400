#include "core/memory.h"

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/cpu.h"

namespace merlin {

uint8_t* alloc_huge_pages(size_t nbytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t rounded = (nbytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, rounded);
  if (!p) throw std::bad_alloc();
  madvise(p, rounded, MADV_HUGEPAGE);
  return static_cast<uint8_t*>(p);
}

namespace {

__attribute__((target("avx2"))) uint64_t sum_avx2(const uint8_t* p, size_t n) {
  // Four independent accumulators, 128 bytes per iteration: enough loads in flight to
  // saturate the memory system from one core.
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t o[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(o), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  uint64_t s = o[0] + o[1] + o[2] + o[3];
  for (; i < n; ++i) s += p[i];
  return s;
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

void BandwidthProbe::Free::operator()(uint8_t* p) const { std::free(p); }

BandwidthProbe::BandwidthProbe() : mem_(alloc_huge_pages(kBytes)) { std::memset(mem_.get(), 1, kBytes); }

double BandwidthProbe::measure(ThreadPool& pool, int passes) {
  double best = 0;
  for (int r = 0; r < passes; ++r) {
    std::atomic<uint64_t> sink{0};
    const double t0 = now_s();
    pool.run([&](int ith, int nth) {
      const size_t per = kBytes / nth / 64 * 64;
      const uint8_t* p = mem_.get() + per * ith;
      uint64_t acc = 0;
      if (cpu_level() >= CpuLevel::kAvx2) {
        acc = sum_avx2(p, per);
      } else {
        for (size_t i = 0; i < per; i += 8) acc += *reinterpret_cast<const uint64_t*>(p + i);
      }
      sink += acc;
    });
    best = std::max(best, kBytes / (now_s() - t0));
  }
  return best;
}

}  // namespace merlin
