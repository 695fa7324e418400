// kernel_bw: DRAM throughput of the decode gemv (one activation row) per weight type, next to a
// read-bandwidth probe taken in the same process. Each type streams a set of 4096x4096 matrices
// (--mib in total, far beyond the L3) through matmul() one call at a time, as decode does, in
// the layout the model loader gives them (interleaved quantized blocks, bf16 panels), on
// transparent huge pages like ModelWeights. Each round prints the probe before, every type's
// GB/s and its fraction of that probe, and the probe after.
//
// The shared VM this was written on alternates between ~35 and ~65 GB/s read bandwidth within
// minutes; --min-probe N waits (probing every 3 s) until the probe reaches N GB/s before each
// round, to measure the fast phase on purpose.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/memory.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"

using namespace merlin;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Set {
  DType type;
  std::vector<Tensor> mats;
  double bytes_per_call;  // the file's bytes for one matrix
};

Set make_set(ThreadPool& pool, DType t, int64_t n, int64_t k, size_t total) {
  const size_t rb = t == DType::BF16 ? static_cast<size_t>(2 * k) : row_bytes(t, k);
  std::vector<uint8_t> raw(rb * n);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  std::vector<float> row(k);
  for (int64_t r = 0; r < n; ++r) {
    for (auto& v : row) v = nd(g);
    uint8_t* dst = raw.data() + r * rb;
    if (t == DType::BF16) {
      for (int64_t c = 0; c < k; ++c) {
        uint32_t u;
        std::memcpy(&u, &row[c], 4);
        const uint16_t h = static_cast<uint16_t>(u >> 16);
        std::memcpy(dst + 2 * c, &h, 2);
      }
    } else {
      quant_quantize_row(t, row.data(), dst, k);
    }
  }
  Tensor w;
  w.data = raw.data();
  w.dtype = t;
  w.shape = {n, k};
  Set s{t, {}, static_cast<double>(rb * n)};
  const int count = std::max<int>(1, static_cast<int>(total / (rb * n)));
  for (int j = 0; j < count; ++j) {
    if (t == DType::BF16) {
      s.mats.push_back(pack_matrix(pool, w, alloc_huge_pages(packed_bytes(w))));
    } else if (can_interleave(w) && interleave_pays()) {
      s.mats.push_back(interleave_matrix(pool, w, alloc_huge_pages(interleaved_bytes(w))));
    } else {
      void* p = alloc_huge_pages(raw.size());
      std::memcpy(p, raw.data(), raw.size());
      Tensor c = w;
      c.data = p;
      s.mats.push_back(c);
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kernel_bw: decode gemv DRAM throughput per weight type vs a read-bandwidth probe"};
  int threads = 2, rounds = 3;
  size_t mib = 512;
  double min_probe = 0;
  app.add_option("-t,--threads", threads, "Threads")->capture_default_str();
  app.add_option("--mib", mib, "MiB of matrices per type (beyond the L3 so weights come from DRAM)")->capture_default_str();
  int64_t rows = 4096;
  app.add_option("--rows", rows, "Rows per matrix (k is 4096); e.g. -t 1 --rows 128 --mib 0 keeps one matrix in L2: the compute ceiling")
      ->check(CLI::Range(16, 65536))
      ->capture_default_str();
  app.add_option("-r,--rounds", rounds, "Rounds; each probes, runs every type once, probes again")->capture_default_str();
  app.add_option("--min-probe", min_probe, "Before each round, wait until the probe reads at least this many GB/s (0: no wait)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ThreadPool pool(threads);
  const int64_t n = rows, k = 4096;
  BandwidthProbe probe;
  auto probe_gbs = [&] { return probe.measure(pool) / 1e9; };
  std::vector<Set> sets;
  for (DType t : {DType::Q4_0, DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::BF16}) {
    fmt::print(stderr, "preparing {} MiB of {} {}x4096 matrices ...\n", mib, dtype_name(t), n);
    sets.push_back(make_set(pool, t, n, k, mib << 20));
  }
  std::vector<float> x(k), y(n);
  std::mt19937 g(2);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(g);
  for (int r = 0; r < rounds; ++r) {
    double before = probe_gbs();
    while (before < min_probe) {
      sleep(3);
      before = probe_gbs();
    }
    fmt::print("probe {:.1f} GB/s |", before);
    for (auto& s : sets) {
      const int count = static_cast<int>(s.mats.size()), calls = std::max(2 * count, static_cast<int>(2'000'000 / n));
      for (int i = 0; i < count; ++i) {  // warm-up pass (page faults, pool wake-up)
        MatmulArgs a{&s.mats[i], x.data(), y.data(), 1, k, n};
        matmul(pool, a);
      }
      const double t0 = now_s();
      for (int i = 0; i < calls; ++i) {
        MatmulArgs a{&s.mats[i % count], x.data(), y.data(), 1, k, n};
        matmul(pool, a);
      }
      const double gbs = s.bytes_per_call * calls / (now_s() - t0) / 1e9;
      fmt::print(" {} {:.1f} ({:.0f}%)", dtype_name(s.type), gbs, 100 * gbs / before);
    }
    fmt::print(" | probe {:.1f}\n", probe_gbs());
    std::fflush(stdout);
  }
  return 0;
}
