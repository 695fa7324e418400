// GGUF files written by `merlin convert` against the transformers reference (tests/data/
// reference.json): f32 exact within 1e-3 and greedy_48 identical, bf16/f16 within measured
// tolerances, Llama 3 rope scaling through rope_freqs.weight, and the held-out perplexity of
// every quantized file type (q8_0 within +0.5 % of bf16, more bits never worse).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "model_test_util.h"
#include "kernels/quant.h"
#include "model/gguf.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

using test::argmax;
using test::forward_all;
using test::greedy;
using test::run_merlin;
using test::TmpDir;

struct RefStats {
  int argmax_agree = 0, argmax_total = 0;
  float max_last_logit_diff = 0;
  int greedy_exact = 0, n_prompts = 0;
};

RefStats compare_with_reference(const LoadedModel& lm) {
  Model m(lm.weights);
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  RefStats st;
  for (const auto& pr : test::reference()["models"]["target"]["prompts"]) {
    auto ids = pr["ids"].get<std::vector<int32_t>>();
    auto want = pr["argmax_per_position"].get<std::vector<int>>();
    auto logits = forward_all(m, pool, ids);
    for (size_t i = 0; i < ids.size(); ++i) {
      st.argmax_agree += argmax(logits.data() + i * V, V) == want[i];
      ++st.argmax_total;
    }
    auto raw = test::base64_decode(pr["last_logits_f32_b64"].get<std::string>());
    std::vector<float> ref(V);
    std::memcpy(ref.data(), raw.data(), std::min(raw.size(), ref.size() * 4));
    for (int v = 0; v < V; ++v)
      st.max_last_logit_diff = std::max(st.max_last_logit_diff, std::fabs(ref[v] - logits[(ids.size() - 1) * V + v]));
    st.greedy_exact += greedy(m, pool, ids, 48) == pr["greedy_48"].get<std::vector<int32_t>>();
    ++st.n_prompts;
  }
  return st;
}

Result<LoadedModel> convert_target(const TmpDir& tmp, const std::string& type) {
  int rc = -1;
  const std::string out = tmp / ("t-" + type + ".gguf");
  run_merlin(fmt::format("convert {} {} --type {}", test::model_dir("target"), out, type), &rc);
  if (rc != 0) return Errf(Code::kInternal, "merlin convert --type {} exited with {}", type, rc);
  return load_gguf_model(out);
}

TEST(GgufQuality, F32FileReproducesReferenceLogitsAndGreedy) {
  TmpDir tmp;
  auto lm = convert_target(tmp, "f32");
  ASSERT_TRUE(lm) << lm.error().message;
  auto st = compare_with_reference(*lm);
  std::printf("  f32 GGUF: argmax %d/%d, max |last logit diff| %.2e, greedy_48 exact %d/%d\n", st.argmax_agree,
              st.argmax_total, st.max_last_logit_diff, st.greedy_exact, st.n_prompts);
  EXPECT_EQ(st.argmax_agree, st.argmax_total);
  EXPECT_LT(st.max_last_logit_diff, 1e-3f);
  EXPECT_EQ(st.greedy_exact, st.n_prompts);
}

TEST(GgufQuality, Bf16AndF16FilesWithinMeasuredTolerance) {
  // tiny-coder's weights are bf16, so a bf16 file holds them exactly (same logits as f32).
  // bf16 -> f16 is exact for every weight in f16's normal range; only weights below 2^-14
  // lose bits (f16 subnormals). Measured max |last logit diff| vs transformers: f32 1.88e-5,
  // bf16 1.88e-5, f16 1.91e-5 (after the unrolled f32 matmul of 0f19b2f: 1.72e-5, 1.72e-5,
  // 1.62e-5); all argmax and greedy_48 identical. Bound: 1e-4 (5x margin).
  TmpDir tmp;
  for (const char* type : {"bf16", "f16"}) {
    auto lm = convert_target(tmp, type);
    ASSERT_TRUE(lm) << lm.error().message;
    auto st = compare_with_reference(*lm);
    std::printf("  %s GGUF: argmax %d/%d, max |last logit diff| %.2e, greedy_48 exact %d/%d\n", type, st.argmax_agree,
                st.argmax_total, st.max_last_logit_diff, st.greedy_exact, st.n_prompts);
    EXPECT_EQ(st.argmax_agree, st.argmax_total) << type;
    EXPECT_LT(st.max_last_logit_diff, 1e-4f) << type;
    EXPECT_EQ(st.greedy_exact, st.n_prompts) << type;
  }
}

// The Llama 3 rope route: HF config with rope_scaling llama3 (formula at load) against the GGUF
// file with rope_freqs.weight (divisors), on tiny-coder's weights with a rescaled config.
TEST(GgufQuality, Llama3RopeScalingSurvivesConversion) {
  // Formula vs divisors on the 8B preset's numbers (theta 5e5, head_dim 128, factor 8).
  {
    auto w = std::make_shared<ModelWeights>();
    auto& c = w->config;
    c.n_embd = 4096; c.n_head = 32; c.n_head_kv = 8; c.head_dim = 128; c.rope_theta = 500000.0f;
    c.rope_scaling = RopeScaling::kLlama3; c.rope_factor = 8; c.rope_low_freq_factor = 1;
    c.rope_high_freq_factor = 4; c.rope_orig_max_pos = 8192;
    Model hf(w);
    auto w2 = std::make_shared<ModelWeights>();
    w2->config = c;
    w2->config.rope_freq_factors = gguf_llama3_rope_freq_factors(c);
    w2->config.rope_scaling = RopeScaling::kNone;
    Model gg(w2);
    ASSERT_EQ(hf.inv_freq().size(), 64u);
    ASSERT_EQ(gg.inv_freq().size(), 64u);
    int smooth = 0;
    for (size_t i = 0; i < 64; ++i) {
      EXPECT_NEAR(gg.inv_freq()[i], hf.inv_freq()[i], 1e-6 * hf.inv_freq()[i]) << i;
      const float f = w2->config.rope_freq_factors[i];
      smooth += f != 1.0f && f != 8.0f;
    }
    EXPECT_GT(smooth, 0);  // the blend region is exercised
  }
  // End to end through `merlin convert` and the GGUF loader.
  TmpDir tmp;
  const fs::path hf = tmp.p / "hf";
  fs::create_directories(hf);
  for (auto& e : fs::directory_iterator(test::model_dir("target"))) {
    if (e.path().filename() == "config.json") continue;
    fs::create_symlink(e.path(), hf / e.path().filename());
  }
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(test::model_dir("target") + "/config.json"));
  cfg.erase("rope_parameters");
  // Small original context so tiny-coder's 32 frequencies fall in all three regions.
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 1024}};
  std::ofstream(hf / "config.json") << cfg.dump(2);
  int rc = -1;
  run_merlin(fmt::format("convert {} {} --type f32", hf.string(), tmp / "r.gguf"), &rc);
  ASSERT_EQ(rc, 0);
  auto raw = open_gguf(tmp / "r.gguf");
  ASSERT_TRUE(raw) << raw.error().message;
  auto* rf = raw->find_tensor("rope_freqs.weight");
  ASSERT_NE(rf, nullptr);
  EXPECT_EQ(rf->dtype, DType::F32);
  EXPECT_FALSE(raw->get_string("llama.rope.scaling.type"));  // llama.cpp writes none for llama3
  auto g = load_gguf_model(tmp / "r.gguf");
  ASSERT_TRUE(g) << g.error().message;
  auto h = load_hf_weights(hf.string());
  ASSERT_TRUE(h) << h.error().message;
  ASSERT_EQ((*h)->config.rope_scaling, RopeScaling::kLlama3);
  Model mg(g->weights), mh(*h);
  ASSERT_EQ(mg.inv_freq().size(), mh.inv_freq().size());
  for (size_t i = 0; i < mh.inv_freq().size(); ++i)
    EXPECT_NEAR(mg.inv_freq()[i], mh.inv_freq()[i], 1e-6 * mh.inv_freq()[i]) << i;
  ThreadPool pool(2);
  auto ids = test::reference()["models"]["target"]["prompts"][0]["ids"].get<std::vector<int32_t>>();
  auto a = forward_all(mg, pool, ids), b = forward_all(mh, pool, ids);
  float md = 0;
  for (size_t i = 0; i < a.size(); ++i) md = std::max(md, std::fabs(a[i] - b[i]));
  std::printf("  llama3 rope: max |logit diff| HF folder vs GGUF %.2e over %zu positions\n", md, ids.size());
  EXPECT_LT(md, 1e-3f);
}

// Held-out perplexity of every file type, by `merlin perplexity --ctx 512 --limit-tokens 8192`
// (about 1.5 min on 2 idle cores). tiny-coder's hidden size 384 is not a multiple of 256, so
// llama.cpp's recipes put K-quants only on ffn_down (rows of 1024) and fall back elsewhere:
// q6_k -> q8_0, q5_k_m -> q5_1, q4_k_m -> q5_0. On these near-symmetric weights q5_1 (step
// (max-min)/31, f16 min) is no better than q5_0 (step amax/16): measured weights-only (files
// dequantized to f32), q5_1 9.399 vs q5_0 9.379 on 4096 tokens; q5_k_m vs q4_k_m 8.1045 vs
// 8.1048 on 8192, and with the kernels' on-the-fly activation quantization 8.113 vs 8.106. So
// that one pair is a tie by construction here and gets a 0.2 % band; every other step is strict.
TEST(GgufQuality, PerplexityOfQuantizedFilesIsOrderedByBits) {
  TmpDir tmp;
  const std::string text = tmp / "heldout.txt";
  std::ofstream(text) << test::reference()["tokenizer"]["heldout_text"].get<std::string>();
  std::map<std::string, double> ppl;
  for (const char* type : {"bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"}) {
    const std::string f = tmp / (std::string(type) + ".gguf");
    int rc = -1;
    run_merlin(fmt::format("convert {} {} --type {}", test::model_dir("target"), f, type), &rc);
    ASSERT_EQ(rc, 0) << type;
    auto out = run_merlin(fmt::format("perplexity -m {} -f {} --ctx 512 --limit-tokens 8192 -t 2 --json", f, text), &rc);
    ASSERT_EQ(rc, 0) << type;
    auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("ppl")) << out;
    ppl[type] = j["ppl"].get<double>();
    std::printf("  %-7s ppl %.4f\n", type, ppl[type]);
    fs::remove(f);
  }
  EXPECT_LE(ppl["q8_0"], ppl["bf16"] * 1.005);
  EXPECT_LE(ppl["q6_k"], ppl["q5_k_m"]);
  EXPECT_LE(ppl["q5_k_m"], ppl["q4_k_m"] * 1.002);
  EXPECT_LE(ppl["q4_k_m"], ppl["q4_0"]);
}

// Quantized files through the interleaved kernels: a prompt computed in one batch gives, at
// every position, bitwise the logits of the same prompt fed one token at a time (what makes a
// quantized model's output independent of batching and speculation, as for the bf16 panels).
TEST(GgufQuality, QuantizedLogitsAreBatchInvariant) {
  TmpDir tmp;
  for (const char* type : {"q8_0", "q4_0", "q4_k_m"}) {
    auto lm = convert_target(tmp, type);
    ASSERT_TRUE(lm) << lm.error().message;
    const auto& w = *lm->weights;
    if (interleave_pays()) {
      // q4_k_m: ffn_down is Q4_K or Q6_K (rows of 1024); the others are Q8_0 / Q4_0 throughout.
      const Tensor& t = std::string(type) == "q4_k_m" ? w.layers[0].w_down : w.layers[0].wq;
      EXPECT_EQ(t.layout, Layout::kInterleave16) << type << " " << dtype_name(t.dtype);
    }
    Model m(lm->weights);
    ThreadPool pool(2);
    const int V = m.config().n_vocab;
    auto ids = test::reference()["models"]["target"]["prompts"][0]["ids"].get<std::vector<int32_t>>();
    auto batched = forward_all(m, pool, ids);
    const int n = static_cast<int>(ids.size());
    test::OneSeqCache c(m.config(), n);
    for (int i = 0; i < n; ++i) {
      auto lg = c.feed(m, pool, {ids[i]}, i, false);
      ASSERT_EQ(0, std::memcmp(lg.data(), batched.data() + static_cast<size_t>(i) * V, V * sizeof(float)))
          << type << ": position " << i << " differs between the batch and one-at-a-time";
    }
  }
}

// q8_0 KV cache on the HF tiny-coder: the same reference prompts, greedy through the decode path,
// compared with the f32 cache (which reproduces transformers), and the held-out perplexity.
TEST(KvQ8, GreedyAndPerplexityStayClose) {
  auto w = load_hf_weights(test::model_dir("target"));
  ASSERT_TRUE(w) << w.error().message;
  Model m(*w);
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  int same_tokens = 0, total = 0, prompts_exact = 0, n_prompts = 0;
  float max_prefill_diff = 0;
  for (const auto& pr : test::reference()["models"]["target"]["prompts"]) {
    auto ids = pr["ids"].get<std::vector<int32_t>>();
    auto want = pr["greedy_48"].get<std::vector<int32_t>>();
    auto a = forward_all(m, pool, ids, DType::F32), b = forward_all(m, pool, ids, DType::Q8_0);
    for (size_t i = 0; i < a.size(); ++i) max_prefill_diff = std::max(max_prefill_diff, std::fabs(a[i] - b[i]));
    auto got = greedy(m, pool, ids, 48, DType::Q8_0);
    // Agreement up to the first divergence (after it the contexts differ, so later tokens are
    // not comparable).
    size_t k = 0;
    while (k < got.size() && got[k] == want[k]) ++k;
    same_tokens += static_cast<int>(k);
    total += static_cast<int>(want.size());
    prompts_exact += got == want;
    ++n_prompts;
  }
  std::printf("  q8_0 KV: greedy_48 identical for %d/%d prompts, %d/%d tokens before first divergence, "
              "max |logit diff| over all prompt positions %.3f\n", prompts_exact, n_prompts, same_tokens, total, max_prefill_diff);
  EXPECT_GE(prompts_exact * 10, n_prompts * 6);  // measured: see docs/benchmarks.md
  EXPECT_LT(max_prefill_diff, 0.5f);

  // Held-out perplexity with both caches, 4 windows of 512 (the perplexity command's method).
  auto lm = load_model(test::model_dir("target"));
  ASSERT_TRUE(lm) << lm.error().message;
  auto all = lm->tokenizer->encode(test::reference()["tokenizer"]["heldout_text"].get<std::string>(), false, false);
  double nll[2] = {0, 0};
  int64_t n_scored = 0;
  for (int w = 0; w < 4; ++w) {
    std::vector<int32_t> ids(all.begin() + w * 512, all.begin() + (w + 1) * 512);
    for (int t = 0; t < 2; ++t) {
      auto lg = forward_all(m, pool, ids, t ? DType::Q8_0 : DType::F32);
      for (int i = 0; i + 1 < 512; ++i) {
        const float* r = lg.data() + static_cast<size_t>(i) * V;
        const float mx = *std::max_element(r, r + V);
        double s = 0;
        for (int v = 0; v < V; ++v) s += std::exp(static_cast<double>(r[v] - mx));
        nll[t] += mx + std::log(s) - r[ids[i + 1]];
        if (t == 0) ++n_scored;
      }
    }
  }
  const double p32 = std::exp(nll[0] / n_scored), p8 = std::exp(nll[1] / n_scored);
  std::printf("  held-out ppl (2044 tokens): f32 KV %.4f, q8_0 KV %.4f (%+.3f%%)\n", p32, p8, 100 * (p8 / p32 - 1));
  EXPECT_LT(std::fabs(p8 / p32 - 1), 0.005);
}

}  // namespace
}  // namespace merlin
