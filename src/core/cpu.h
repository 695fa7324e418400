// Run-time CPU feature detection: kernels compiled for AVX2 / AVX-512 are only called when the
// running CPU has those features. MERLIN_CPU=scalar|avx2|avx512 caps the level (tests use it).
#pragma once

namespace merlin {

enum class CpuLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false;
};

const CpuFeatures& cpu_features();
// Highest level usable: detected features, capped by MERLIN_CPU and set_cpu_level_cap().
CpuLevel cpu_level();
void set_cpu_level_cap(CpuLevel cap);  // for tests: force a lower level
const char* cpu_level_name(CpuLevel l);

}  // namespace merlin
