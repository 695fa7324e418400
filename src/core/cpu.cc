#include "core/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace merlin {

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures r;
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2");
    r.fma = __builtin_cpu_supports("fma");
    r.f16c = true;  // every AVX2 CPU Merlin targets has F16C; checked via avx2 gate
    r.avx512f = __builtin_cpu_supports("avx512f");
    r.avx512bw = __builtin_cpu_supports("avx512bw");
    r.avx512vl = __builtin_cpu_supports("avx512vl");
    r.avx512dq = __builtin_cpu_supports("avx512dq");
    r.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    r.avx512_vnni = __builtin_cpu_supports("avx512vnni");
    return r;
  }();
  return f;
}

static std::atomic<int> g_cap{2};

CpuLevel cpu_level() {
  static const int env_cap = [] {
    const char* e = std::getenv("MERLIN_CPU");
    if (!e) return 2;
    if (!std::strcmp(e, "scalar")) return 0;
    if (!std::strcmp(e, "avx2")) return 1;
    return 2;
  }();
  const auto& f = cpu_features();
  int lvl = 0;
  if (f.avx2 && f.fma) lvl = 1;
  if (lvl == 1 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_bf16 &&
      f.avx512_vnni)
    lvl = 2;
  int cap = g_cap.load(std::memory_order_relaxed);
  if (env_cap < cap) cap = env_cap;
  return static_cast<CpuLevel>(lvl < cap ? lvl : cap);
}

void set_cpu_level_cap(CpuLevel cap) { g_cap.store(static_cast<int>(cap)); }

const char* cpu_level_name(CpuLevel l) {
  switch (l) {
    case CpuLevel::kScalar: return "scalar";
    case CpuLevel::kAvx2: return "avx2";
    case CpuLevel::kAvx512: return "avx512";
  }
  return "?";
}

}  // namespace merlin
