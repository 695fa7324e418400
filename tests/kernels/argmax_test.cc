#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/cpu.h"
#include "kernels/ops.h"

namespace merlin {
namespace {

TEST(Argmax, MatchesMaxElementOnRandomRowsOfEveryLength) {
  std::mt19937 g(7);
  std::normal_distribution<float> d(0.0f, 4.0f);
  for (int64_t n : {1, 2, 7, 8, 9, 31, 32, 33, 63, 100, 1000, 16384, 16387}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) v = d(g);
      const int64_t want = std::max_element(x.begin(), x.end()) - x.begin();
      ASSERT_EQ(argmax_ref(x.data(), n), want) << n;
      ASSERT_EQ(argmax(x.data(), n), want) << n;
    }
  }
}

TEST(Argmax, TiesGiveTheFirstIndex) {
  std::vector<float> x(1000, 1.0f);
  x[700] = x[300] = x[999] = 5.0f;
  EXPECT_EQ(argmax(x.data(), 1000), 300);
  std::vector<float> same(77, -2.0f);
  EXPECT_EQ(argmax(same.data(), 77), 0);
}

TEST(Argmax, SkipsNaNsAndHandlesInfinities) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t n : {5, 40, 300}) {
    std::vector<float> x(static_cast<size_t>(n), nan);
    EXPECT_EQ(argmax(x.data(), n), 0) << "all NaN";
    x[static_cast<size_t>(n - 2)] = -inf;
    EXPECT_EQ(argmax(x.data(), n), n - 2) << "only -inf besides NaN";
    x[3] = 1.5f;
    EXPECT_EQ(argmax(x.data(), n), 3);
    x[1] = inf;
    EXPECT_EQ(argmax(x.data(), n), 1);
    EXPECT_EQ(argmax_ref(x.data(), n), 1);
  }
}

TEST(Argmax, PortablePathAgrees) {
  std::vector<float> x(5000);
  std::mt19937 g(3);
  for (auto& v : x) v = std::uniform_real_distribution<float>(-1, 1)(g);
  set_cpu_level_cap(CpuLevel::kScalar);
  const int64_t portable = argmax(x.data(), 5000);
  set_cpu_level_cap(CpuLevel::kAvx512);
  EXPECT_EQ(portable, argmax(x.data(), 5000));
  EXPECT_EQ(portable, std::max_element(x.begin(), x.end()) - x.begin());
}

}  // namespace
}  // namespace merlin
