// Engine internals shared by engine.cc (API, setup) and engine_loop.cc (the scheduling loop).
#pragma once
#include <unordered_map>

#include "engine/block_pool.h"
#include "engine/engine.h"
#include "engine/sequence.h"
#include "engine/spec.h"

namespace merlin {

struct Engine::Impl {
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<BlockPool> blocks;
  std::unique_ptr<Speculator> spec;  // null without draft or lookup use

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Sequence>> inbox;  // guarded by mu
  bool stop = false;                            // guarded by mu
  std::unordered_map<uint64_t, std::weak_ptr<RequestStream::Shared>> live;  // guarded by mu
  std::atomic<uint64_t> next_id{1};
  std::atomic<int32_t> queued[3] = {0, 0, 0};  // per Priority: submitted, not yet admitted
  int32_t n_blocks = 0;

  // Engine thread only:
  std::vector<std::unique_ptr<Sequence>> waiting, running;
  std::vector<float> logits;
  std::chrono::steady_clock::time_point lower_since{};  // lower lanes waiting on a higher one since

  // The scheduling loop's pieces (engine_loop.cc).
  void step(Engine& e);
};

}  // namespace merlin
