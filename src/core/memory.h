// Large buffers on transparent huge pages, and the read-bandwidth probe that decode speed is
// measured against (merlin bench, bench/kernel_bw).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/thread_pool.h"

namespace merlin {

// A 2 MiB-aligned buffer of at least nbytes (rounded up to 2 MiB), advised MADV_HUGEPAGE; free
// with std::free. A stream over 4 KiB pages takes a TLB miss every 4 KiB and faults each page in
// separately. MADV_HUGEPAGE works where THP is in "madvise" mode (Debian's default); elsewhere it
// is a harmless no-op. Throws std::bad_alloc.
uint8_t* alloc_huge_pages(size_t nbytes);

// Read bandwidth: every thread sums its share of a 512 MiB buffer (on huge pages, like the
// weights: with 4 KiB pages the probe reads ~30 % slower and would flatter every fraction).
// On a shared VM this moves by up to 2x within minutes, so callers probe right before and after
// what they measure.
class BandwidthProbe {
 public:
  static constexpr size_t kBytes = size_t{512} << 20;
  BandwidthProbe();
  double measure(ThreadPool& pool, int passes = 2);  // bytes/s, best of `passes`

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> mem_;
};

}  // namespace merlin
