// Helpers shared by the model tests: a temporary folder, the merlin CLI, argmax, a prompt's
// forward pass through a fresh KV cache, and greedy decoding through the cache.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "../test_util.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace merlin::test {

struct TmpDir {
  std::filesystem::path p;
  TmpDir() {
    p = std::filesystem::temp_directory_path() / fmt::format("merlin-model-test-{}-{}", getpid(), std::random_device{}());
    std::filesystem::create_directories(p);
  }
  ~TmpDir() {
    std::error_code ec;
    std::filesystem::remove_all(p, ec);
  }
  std::string operator/(const std::string& f) const { return (p / f).string(); }
};

// `merlin ARGS` with stderr discarded: its stdout, and its exit status in *rc.
inline std::string run_merlin(const std::string& args, int* rc) {
  return run_cmd(std::string(MERLIN_BINARY) + " " + args + " 2>/dev/null", rc);
}

inline int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

// A KV cache for one sequence of up to n_tokens, its blocks in order.
struct OneSeqCache {
  KvCache kv;
  std::vector<int32_t> table;
  OneSeqCache(const ModelConfig& c, int n_tokens, DType kv_type = DType::F32)
      : kv(c, (n_tokens + 15) / 16 + 1, 16, kv_type), table(static_cast<size_t>(kv.n_blocks())) {
    for (int i = 0; i < kv.n_blocks(); ++i) table[static_cast<size_t>(i)] = i;
  }
  // Feeds `tokens` at positions pos..; the logits of every fed position ([n, vocab]) or of the
  // last one only ([vocab]).
  std::vector<float> feed(Model& m, ThreadPool& pool, const std::vector<int32_t>& tokens, int pos, bool all_rows,
                          const ForwardOptions& fo = {}) {
    const int n = static_cast<int>(tokens.size());
    StepBatch b;
    b.tokens = tokens;
    b.seqs.push_back({0, n, pos, table.data(), kv.n_blocks()});
    if (all_rows)
      for (int i = 0; i < n; ++i) b.logit_rows.push_back(i);
    else
      b.logit_rows = {n - 1};
    std::vector<float> logits(b.logit_rows.size() * static_cast<size_t>(m.config().n_vocab));
    EXPECT_TRUE(m.forward(pool, b, kv, logits.data(), fo).ok());
    return logits;
  }
};

// Every position's logits of one prompt computed in one batch, [n, vocab].
inline std::vector<float> forward_all(Model& m, ThreadPool& pool, const std::vector<int32_t>& ids,
                                      DType kv_type = DType::F32, Precision p = Precision::kF32) {
  OneSeqCache c(m.config(), static_cast<int>(ids.size()), kv_type);
  ForwardOptions fo;
  fo.precision = p;
  return c.feed(m, pool, ids, 0, true, fo);
}

// Greedy continuation, one token per forward through the cache (the decode path).
inline std::vector<int32_t> greedy(Model& m, ThreadPool& pool, const std::vector<int32_t>& ids, int steps,
                                   DType kv_type = DType::F32, std::vector<float>* step_logits = nullptr) {
  const int n = static_cast<int>(ids.size()), V = m.config().n_vocab;
  OneSeqCache c(m.config(), n + steps, kv_type);
  std::vector<float> lg = c.feed(m, pool, ids, 0, false);
  std::vector<int32_t> out;
  for (int s = 0; s < steps; ++s) {
    const int tok = argmax(lg.data(), V);
    out.push_back(tok);
    if (step_logits) step_logits->insert(step_logits->end(), lg.begin(), lg.end());
    lg = c.feed(m, pool, {tok}, n + s, false);
  }
  return out;
}

}  // namespace merlin::test
