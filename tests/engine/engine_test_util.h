// Helpers shared by the engine tests: the shipped models, loaded once per test binary, and an
// engine with test defaults (2 threads, 1,024-token context unless the options say otherwise).
#pragma once
#include <memory>

#include <gtest/gtest.h>

#include "../test_util.h"
#include "engine/engine.h"

namespace merlin::engine_test {

inline LoadedModel& target() {
  static LoadedModel m = [] {
    auto r = load_model(test::model_dir("target"));
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return *r;
  }();
  return m;
}

inline std::shared_ptr<const ModelWeights> draft_weights() {
  static std::shared_ptr<const ModelWeights> w = [] {
    auto r = load_hf_weights(test::model_dir("draft"));
    EXPECT_TRUE(r.has_value());
    return std::shared_ptr<const ModelWeights>(*r);
  }();
  return w;
}

inline std::unique_ptr<Engine> make_engine(EngineOptions o = {}) {
  if (o.n_threads == 0) o.n_threads = 2;
  if (o.ctx_size == 0) o.ctx_size = 1024;
  auto e = Engine::create(target(), o);
  EXPECT_TRUE(e.has_value()) << (e ? "" : e.error().message);
  return std::move(*e);
}

// A greedy request that ignores end-of-generation tokens (the references do not stop there).
inline GenerationRequest greedy(const Ids& prompt, int n, Priority prio = Priority::kChat) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = n;
  r.ignore_eos = true;
  r.sampling.temperature = 0;
  r.priority = prio;
  return r;
}

}  // namespace merlin::engine_test
