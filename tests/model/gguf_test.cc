// GGUF: reader on llama.cpp-written files, the Q/K un-permutation (bf16 GGUF == HF weights byte
// for byte), `merlin convert` / `merlin quantize` against llama.cpp's own outputs, and hostile files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "kernels/matmul.h"
#include "model/kv_cache.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model_test_util.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

// llama.cpp-written files (68 MB, too big for tests/data): ../shared/models/gguf beside the
// checkout. Missing, the tests skip, or fail under MERLIN_NO_SKIP (CI).
std::string shared_gguf() { return test::shared_dir() + "/models/gguf"; }

#define REQUIRE_SHARED_GGUF() MERLIN_REQUIRE_DATA(shared_gguf() + "/tiny-coder-target-bf16.gguf")

using test::TmpDir;

int run_merlin(const std::string& args) {
  int rc = -1;
  test::run_merlin(args, &rc);
  return rc;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.layout == Layout::kRowMajor && b.layout == Layout::kRowMajor && a.dtype == b.dtype && a.shape == b.shape && a.nbytes() == b.nbytes() &&
         std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

// All matrices and vectors of two loaded models, by role.
std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>> pairs(const ModelWeights& a, const ModelWeights& b) {
  std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>> v;
  v.push_back({"tok_embd", {a.tok_embd, b.tok_embd}});
  v.push_back({"norm", {a.norm, b.norm}});
  v.push_back({"output", {a.output, b.output}});
  for (size_t i = 0; i < a.layers.size() && i < b.layers.size(); ++i) {
    auto& x = a.layers[i];
    auto& y = b.layers[i];
    for (auto [n, p, q] : {std::tuple{"attn_norm", &x.attn_norm, &y.attn_norm}, {"wq", &x.wq, &y.wq}, {"wk", &x.wk, &y.wk},
                           {"wv", &x.wv, &y.wv}, {"wo", &x.wo, &y.wo}, {"ffn_norm", &x.ffn_norm, &y.ffn_norm},
                           {"w_gate", &x.w_gate, &y.w_gate}, {"w_up", &x.w_up, &y.w_up}, {"w_down", &x.w_down, &y.w_down}})
      v.push_back({fmt::format("layer{}.{}", i, n), {*p, *q}});
  }
  return v;
}

// Relative RMS difference of two tensors after dequantization to f32.
double rel_rmse(const Tensor& a, const Tensor& b) {
  const int64_t rows = a.shape.size() >= 2 ? a.rows() : 1, k = a.cols();
  std::vector<float> ra(k), rb(k);
  double se = 0, s = 0;
  for (int64_t r = 0; r < rows; ++r) {
    // dequantize_row(Tensor) also reads matrices the loaders repacked (Layout::kPanel32).
    if (a.shape.size() >= 2) dequantize_row(a, r, ra.data()); else dequantize_row(a.dtype, a.data, ra.data(), k);
    if (b.shape.size() >= 2) dequantize_row(b, r, rb.data()); else dequantize_row(b.dtype, b.data, rb.data(), k);
    for (int64_t i = 0; i < k; ++i) se += (ra[i] - rb[i]) * (ra[i] - rb[i]), s += ra[i] * ra[i];
  }
  return std::sqrt(se / std::max(s, 1e-30));
}

TEST(Gguf, ParsesLlamaCppFiles) {
  REQUIRE_SHARED_GGUF();
  for (auto& e : fs::directory_iterator(shared_gguf())) {
    if (e.path().extension() != ".gguf") continue;
    auto g = open_gguf(e.path().string());
    ASSERT_TRUE(g) << g.error().message;
    EXPECT_EQ(g->version, 3u);
    EXPECT_EQ(g->get_string("general.architecture").value_or(""), "llama");
    EXPECT_GT(g->tensors.size(), 10u);
    auto cfg = gguf_model_config(*g);
    ASSERT_TRUE(cfg) << cfg.error().message;
    EXPECT_EQ(cfg->n_vocab, 16384);
    EXPECT_TRUE(cfg->tie_embeddings);
  }
}

TEST(Gguf, Bf16FileEqualsHfWeightsByteForByte) {
  // llama.cpp permuted Q/K rows when writing; after the loader's un-permutation every tensor
  // must be exactly the HF one (this is what proves the permutation direction).
  REQUIRE_SHARED_GGUF();
  auto g = load_gguf_model(shared_gguf() + "/tiny-coder-target-bf16.gguf");
  ASSERT_TRUE(g) << g.error().message;
  auto hf = load_hf_weights(test::model_dir("target"));
  ASSERT_TRUE(hf) << hf.error().message;
  const auto& a = *g->weights;
  const auto& b = **hf;
  EXPECT_EQ(a.config.n_layer, b.config.n_layer);
  EXPECT_EQ(a.config.head_dim, b.config.head_dim);
  EXPECT_EQ(a.config.n_head_kv, b.config.n_head_kv);
  EXPECT_FLOAT_EQ(a.config.rope_theta, b.config.rope_theta);
  EXPECT_FLOAT_EQ(a.config.rms_eps, b.config.rms_eps);
  EXPECT_EQ(a.config.tie_embeddings, b.config.tie_embeddings);
  // Both loaders repack bf16 matrices (Layout::kPanel32) the same way, so compare values: bf16
  // -> f32 is exact, any difference (a wrong row order included) shows.
  int n = 0;
  for (auto& [name, t] : pairs(a, b)) {
    EXPECT_EQ(t.first.dtype, t.second.dtype) << name;
    EXPECT_EQ(t.first.layout, t.second.layout) << name;
    EXPECT_EQ(rel_rmse(t.first, t.second), 0.0) << name;
    if (t.first.layout == t.second.layout && t.first.nbytes() == t.second.nbytes())
      EXPECT_EQ(std::memcmp(t.first.data, t.second.data, t.first.nbytes()), 0) << name;
    ++n;
  }
  EXPECT_EQ(n, 3 + 9 * 10);
  // Without the un-permutation Q would differ: guard against a silently disabled step.
  auto raw = open_gguf(shared_gguf() + "/tiny-coder-target-bf16.gguf");
  ASSERT_TRUE(raw);
  Tensor rq = raw->find_tensor("blk.0.attn_q.weight")->tensor();
  EXPECT_GT(rel_rmse(rq, b.layers[0].wq), 0.1);
  ASSERT_TRUE(g->tokenizer);
  EXPECT_EQ(g->tokenizer->n_vocab(), 16384);
}

TEST(Gguf, QuantizedLlamaCppFileLoadsCloseToHf) {
  REQUIRE_SHARED_GGUF();
  auto g = load_gguf_model(shared_gguf() + "/tiny-coder-target-Q4_K_M.gguf");
  ASSERT_TRUE(g) << g.error().message;
  auto hf = load_hf_weights(test::model_dir("target"));
  ASSERT_TRUE(hf);
  for (auto& [name, t] : pairs(*g->weights, **hf)) {
    const double e = rel_rmse(t.second, t.first);
    EXPECT_LT(e, 0.12) << name << " " << dtype_name(t.first.dtype);
  }
}

TEST(Gguf, ConvertBf16ReproducesLlamaCppFile) {
  REQUIRE_SHARED_GGUF();
  TmpDir tmp;
  ASSERT_EQ(run_merlin(fmt::format("convert {} {} --type bf16", test::model_dir("target"), tmp / "t.gguf")), 0);
  auto ours = open_gguf(tmp / "t.gguf");
  ASSERT_TRUE(ours) << ours.error().message;
  auto theirs = open_gguf(shared_gguf() + "/tiny-coder-target-bf16.gguf");
  ASSERT_TRUE(theirs);
  ASSERT_EQ(ours->tensors.size(), theirs->tensors.size());
  for (auto& ti : theirs->tensors) {
    auto* mine = ours->find_tensor(ti.name);
    ASSERT_NE(mine, nullptr) << ti.name;
    EXPECT_TRUE(same_bytes(mine->tensor(), ti.tensor())) << ti.name;
  }
  // Every metadata key llama.cpp wrote is present with the same value (general.name aside).
  for (auto& [k, v] : theirs->kv) {
    if (k == "general.name" || k == "general.size_label") continue;
    auto* m = ours->find(k);
    ASSERT_NE(m, nullptr) << k;
    EXPECT_EQ(m->type, v.type) << k;
    if (v.type == GgufType::kArray) {
      ASSERT_EQ(m->arr.size(), v.arr.size()) << k;
      for (size_t i = 0; i < v.arr.size(); ++i) {
        ASSERT_EQ(m->arr[i].str, v.arr[i].str) << k << "[" << i << "]";
        ASSERT_EQ(m->arr[i].as_double(), v.arr[i].as_double()) << k << "[" << i << "]";
      }
    } else {
      EXPECT_EQ(m->str, v.str) << k;
      EXPECT_EQ(m->as_double(), v.as_double()) << k;
    }
  }
}

TEST(Gguf, ConvertF32RoundTripsHfWeights) {
  TmpDir tmp;
  ASSERT_EQ(run_merlin(fmt::format("convert {} {} --type f32", test::model_dir("target"), tmp / "t.gguf")), 0);
  auto g = load_gguf_model(tmp / "t.gguf");
  ASSERT_TRUE(g) << g.error().message;
  auto hf = load_hf_weights(test::model_dir("target"));
  ASSERT_TRUE(hf);
  for (auto& [name, t] : pairs(*g->weights, **hf)) {
    EXPECT_EQ(t.first.dtype, DType::F32) << name;
    EXPECT_EQ(t.first.shape, t.second.shape) << name;
    EXPECT_EQ(rel_rmse(t.first, t.second), 0.0) << name;  // bf16 -> f32 is exact
  }
}

TEST(Gguf, QuantizeQ4KMFollowsLlamaCppRecipe) {
  REQUIRE_SHARED_GGUF();
  TmpDir tmp;
  ASSERT_EQ(run_merlin(fmt::format("quantize {} {} q4_k_m", shared_gguf() + "/tiny-coder-target-bf16.gguf", tmp / "q.gguf")), 0);
  auto ours = open_gguf(tmp / "q.gguf");
  ASSERT_TRUE(ours) << ours.error().message;
  auto theirs = open_gguf(shared_gguf() + "/tiny-coder-target-Q4_K_M.gguf");
  ASSERT_TRUE(theirs);
  EXPECT_EQ(ours->get_int("general.file_type"), theirs->get_int("general.file_type"));
  int identical = 0;
  for (auto& ti : theirs->tensors) {
    auto* mine = ours->find_tensor(ti.name);
    ASSERT_NE(mine, nullptr) << ti.name;
    EXPECT_EQ(dtype_name(mine->dtype), std::string(dtype_name(ti.dtype))) << ti.name;
    if (mine->dtype != ti.dtype) continue;
    identical += same_bytes(mine->tensor(), ti.tensor());
    // Same reference quantizers: at worst a few blocks round differently.
    EXPECT_LT(rel_rmse(mine->tensor(), ti.tensor()), 0.01) << ti.name;
  }
  std::printf("  %d of %zu tensors byte-identical to llama-quantize's output\n", identical, theirs->tensors.size());
  auto m = load_gguf_model(tmp / "q.gguf");
  ASSERT_TRUE(m) << m.error().message;
}


// Logits of every position of `ids` in one batch: [n, vocab].
std::vector<float> forward_all(const LoadedModel& lm, const std::vector<int32_t>& ids) {
  Model m(lm.weights);
  ThreadPool pool(2);
  const int n = static_cast<int>(ids.size()), bs = 16;
  KvCache kv(m.config(), (n + bs - 1) / bs + 1, bs);
  std::vector<int32_t> table(kv.n_blocks());
  for (int i = 0; i < kv.n_blocks(); ++i) table[i] = i;
  StepBatch b;
  b.tokens = ids;
  b.seqs.push_back({0, n, 0, table.data(), kv.n_blocks()});
  for (int i = 0; i < n; ++i) b.logit_rows.push_back(i);
  std::vector<float> logits(static_cast<size_t>(n) * m.config().n_vocab);
  EXPECT_TRUE(m.forward(pool, b, kv, logits.data()).ok());
  return logits;
}

TEST(Gguf, ForwardPassOfLlamaCppFilesMatchesReference) {
  // bf16 GGUF: same weights as HF after un-permutation -> transformers' argmax at every position
  // and last logits within 1e-3. Q4_K_M: quantization noise, so a looser check: argmax agreement
  // and the mean log-likelihood of the reference argmax tokens close to bf16's.
  REQUIRE_SHARED_GGUF();
  const auto& prompts = test::reference()["models"]["target"]["prompts"];
  ASSERT_GE(prompts.size(), 1u);
  for (const char* file : {"tiny-coder-target-bf16.gguf", "tiny-coder-target-Q4_K_M.gguf"}) {
    auto lm = load_gguf_model(shared_gguf() + "/" + file);
    ASSERT_TRUE(lm) << lm.error().message;
    const int V = lm->weights->config.n_vocab;
    int agree = 0, total = 0;
    for (const auto& pr : prompts) {
      auto ids = pr["ids"].get<std::vector<int32_t>>();
      auto want = pr["argmax_per_position"].get<std::vector<int>>();
      auto logits = forward_all(*lm, ids);
      for (size_t i = 0; i < ids.size(); ++i) {
        const float* row = logits.data() + i * V;
        agree += static_cast<int>(std::max_element(row, row + V) - row) == want[i];
        ++total;
      }
      if (std::string(file).find("bf16") != std::string::npos) {
        auto raw = test::base64_decode(pr["last_logits_f32_b64"].get<std::string>());
        std::vector<float> ref(V);
        std::memcpy(ref.data(), raw.data(), raw.size());
        float md = 0;
        for (int v = 0; v < V; ++v) md = std::max(md, std::fabs(ref[v] - logits[(ids.size() - 1) * V + v]));
        EXPECT_LT(md, 1e-3f) << file;
      }
    }
    std::printf("  %s: argmax agrees with transformers at %d/%d positions\n", file, agree, total);
    if (std::string(file).find("bf16") != std::string::npos) EXPECT_EQ(agree, total);
    else EXPECT_GE(agree, total * 85 / 100);
  }
}

// ---------------------------------------------------------------- hostile files

// A small valid file: scalars of every type, strings, nested arrays and two tensors.
std::vector<uint8_t> small_file(uint32_t alignment = 32) {
  GgufWriter w(alignment);
  w.set("general.architecture", GgufValue::Str("llama"));
  GgufValue v;
  v.type = GgufType::kU8; v.u = 7; w.set("u8", v);
  v.type = GgufType::kI8; v.i = -7; w.set("i8", v);
  v.type = GgufType::kU16; v.u = 700; w.set("u16", v);
  v.type = GgufType::kI16; v.i = -700; w.set("i16", v);
  w.set("u32", GgufValue::U32(70000));
  w.set("i32", GgufValue::I32(-70000));
  w.set("u64", GgufValue::U64(uint64_t{1} << 40));
  v = {}; v.type = GgufType::kI64; v.i = -(int64_t{1} << 40); w.set("i64", v);
  w.set("f32", GgufValue::F32(1.5f));
  v = {}; v.type = GgufType::kF64; v.f = 2.25; w.set("f64", v);
  w.set("bool", GgufValue::Bool(true));
  w.set("str", GgufValue::Str("héllo"));
  w.set("strs", GgufValue::StrArray({"a", "", "bc"}));
  GgufValue nested;
  nested.type = GgufType::kArray;
  nested.elem = GgufType::kArray;
  nested.arr = {GgufValue::I32Array({1, 2}), GgufValue::I32Array({3})};
  w.set("nested", nested);
  std::vector<float> a(64), b(3 * 32);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) * 0.5f;
  w.add_tensor("a", DType::F32, {2, 32}, [a] {
    auto* p = reinterpret_cast<const uint8_t*>(a.data());
    return Result<std::vector<uint8_t>>(std::vector<uint8_t>(p, p + a.size() * 4));
  });
  w.add_tensor("b", DType::F32, {3, 32}, [b] {
    auto* p = reinterpret_cast<const uint8_t*>(b.data());
    return Result<std::vector<uint8_t>>(std::vector<uint8_t>(p, p + b.size() * 4));
  });
  auto r = w.write_to_buffer();
  EXPECT_TRUE(r);
  return *r;
}

TEST(Gguf, WriterRoundTripsEveryValueType) {
  auto buf = small_file();
  auto g = parse_gguf(buf.data(), buf.size(), "small");
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->get_int("u8"), 7);
  EXPECT_EQ(g->get_int("i8"), -7);
  EXPECT_EQ(g->get_int("u16"), 700);
  EXPECT_EQ(g->get_int("i16"), -700);
  EXPECT_EQ(g->get_int("u32"), 70000);
  EXPECT_EQ(g->get_int("i32"), -70000);
  EXPECT_EQ(g->get_int("u64"), int64_t{1} << 40);
  EXPECT_EQ(g->get_int("i64"), -(int64_t{1} << 40));
  EXPECT_EQ(g->get_float("f32"), 1.5);
  EXPECT_EQ(g->get_float("f64"), 2.25);
  EXPECT_EQ(g->get_bool("bool"), true);
  EXPECT_EQ(g->get_string("str"), "héllo");
  ASSERT_EQ(g->find("strs")->arr.size(), 3u);
  EXPECT_EQ(g->find("strs")->arr[2].str, "bc");
  auto* n = g->find("nested");
  ASSERT_EQ(n->arr.size(), 2u);
  EXPECT_EQ(n->arr[0].arr[1].i, 2);
  auto* tb = g->find_tensor("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->ne, (std::vector<int64_t>{32, 3}));
  EXPECT_EQ(tb->tensor().shape, (std::vector<int64_t>{3, 32}));
  EXPECT_EQ(reinterpret_cast<const float*>(tb->data)[5], 2.5f);
  EXPECT_EQ(tb->offset % 32, 0u);
}

TEST(Gguf, TruncatedFilesAreRefused) {
  auto buf = small_file();
  auto g = parse_gguf(buf.data(), buf.size(), "small");
  ASSERT_TRUE(g);
  const size_t need = g->data_offset + g->find_tensor("b")->offset + g->find_tensor("b")->nbytes;
  for (size_t len = 0; len < buf.size(); ++len) {
    std::vector<uint8_t> cut(buf.begin(), buf.begin() + len);  // own allocation: ASan sees overreads
    auto r = parse_gguf(cut.data(), cut.size(), "cut.gguf");
    if (len < need) {
      ASSERT_FALSE(r) << "accepted a file truncated to " << len << " bytes";
      EXPECT_NE(r.error().message.find("cut.gguf"), std::string::npos);
    }
  }
}

// Offsets of fields in small_file(): found by scanning for known byte patterns.
size_t find_bytes(const std::vector<uint8_t>& buf, const std::string& s) {
  auto it = std::search(buf.begin(), buf.end(), s.begin(), s.end());
  return it == buf.end() ? std::string::npos : static_cast<size_t>(it - buf.begin());
}

template <class T>
void poke(std::vector<uint8_t>& buf, size_t off, T v) {
  std::memcpy(buf.data() + off, &v, sizeof(T));
}

Code parse_code(const std::vector<uint8_t>& buf) {
  auto r = parse_gguf(buf.data(), buf.size(), "hostile.gguf");
  return r ? Code::kOk : r.error().code;
}

TEST(Gguf, HostileHeadersAreRefused) {
  const auto good = small_file();
  ASSERT_EQ(parse_code(good), Code::kOk);
  auto b = good;
  b[0] = 'X';
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // magic
  b = good;
  poke<uint32_t>(b, 4, 99);
  EXPECT_EQ(parse_code(b), Code::kUnsupported);  // version
  b = good;
  poke<uint64_t>(b, 8, uint64_t{1} << 60);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // tensor count
  b = good;
  poke<uint64_t>(b, 16, ~uint64_t{0});
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // kv count
  b = good;
  poke<uint64_t>(b, 24, uint64_t{1} << 62);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // first key length
  // String value length (the "str" key's value follows its type).
  const size_t str_key = find_bytes(good, "str");
  b = good;
  poke<uint64_t>(b, str_key + 3 + 4, uint64_t{1} << 40);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);
  // Array length of "strs".
  const size_t strs_key = find_bytes(good, "strs");
  b = good;
  poke<uint64_t>(b, strs_key + 4 + 4 + 4, uint64_t{1} << 50);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);
  // Unknown value type.
  b = good;
  poke<uint32_t>(b, str_key + 3, 77);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);
  // Tensor "b": name at tb, then n_dims u32, dims, type u32, offset u64.
  size_t tb = good.size();
  for (size_t i = 0; i + 9 < good.size(); ++i)
    if (good[i] == 1 && std::memcmp(&good[i], "\x01\0\0\0\0\0\0\0b", 9) == 0) tb = i + 9;
  ASSERT_LT(tb, good.size());
  b = good;
  poke<uint32_t>(b, tb, 5);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // n_dims > 4
  b = good;
  poke<uint32_t>(b, tb, 0);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // n_dims == 0
  b = good;
  poke<int64_t>(b, tb + 4 + 8, int64_t{1} << 40);
  poke<int64_t>(b, tb + 4, int64_t{1} << 40);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // dims overflow
  b = good;
  poke<int64_t>(b, tb + 4 + 8, -3);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // negative dim
  b = good;
  poke<int64_t>(b, tb + 4 + 8, 1000000);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // data beyond the end
  b = good;
  poke<uint32_t>(b, tb + 4 + 16, 99);
  EXPECT_EQ(parse_code(b), Code::kUnsupported);  // unknown ggml type
  b = good;
  poke<uint32_t>(b, tb + 4 + 16, static_cast<uint32_t>(DType::Q4_K));
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // row of 32 is not a multiple of 256
  b = good;
  poke<uint64_t>(b, tb + 4 + 16 + 4, 256 + 4);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // misaligned offset
  b = good;
  poke<uint64_t>(b, tb + 4 + 16 + 4, ~uint64_t{0} - 31);
  EXPECT_EQ(parse_code(b), Code::kCorrupt);  // offset overflow
}

TEST(Gguf, BadAlignmentIsRefused) {
  auto buf = small_file(64);
  ASSERT_EQ(parse_code(buf), Code::kOk);
  const size_t k = find_bytes(buf, "general.alignment");
  ASSERT_NE(k, std::string::npos);
  poke<uint32_t>(buf, k + 17 + 4, 48);
  EXPECT_EQ(parse_code(buf), Code::kCorrupt);
  poke<uint32_t>(buf, k + 17 + 4, 0);
  EXPECT_EQ(parse_code(buf), Code::kCorrupt);
}

TEST(Gguf, RandomCorruptionNeverCrashes) {
  const auto good = small_file();
  std::mt19937 rng(1234);
  int refused = 0;
  for (int it = 0; it < 3000; ++it) {
    auto b = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    auto r = parse_gguf(b.data(), b.size(), "fuzz.gguf");
    refused += !r;
  }
  EXPECT_GT(refused, 0);
}

TEST(Gguf, QkRowOrderIsAPermutationAndInverts) {
  for (int64_t hd : {4, 64, 128}) {
    const int64_t rows = 3 * hd;
    auto to = gguf_qk_row_order(rows, hd, true), from = gguf_qk_row_order(rows, hd, false);
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(from[to[r]], r);
  }
  // head_dim 4: GGUF rows are HF rows 0,2,1,3 (pairs (0,2) and (1,3) interleaved).
  EXPECT_EQ(gguf_qk_row_order(4, 4, true), (std::vector<int64_t>{0, 2, 1, 3}));
}

TEST(Gguf, RecipeMatchesLlamaCppRules) {
  auto t = [](const char* name, std::vector<int64_t> shape, bool has_output = false) {
    return gguf_choose_tensor_type(GgufFileType::kQ4_K_M, {name, shape, 10, 6, 2, has_output});
  };
  EXPECT_EQ(t("blk.0.ffn_down.weight", {384, 1024}), DType::Q6_K);
  EXPECT_EQ(t("blk.1.ffn_down.weight", {384, 1024}), DType::Q4_K);
  EXPECT_EQ(t("blk.3.attn_v.weight", {128, 384}), DType::Q8_0);     // Q6_K, row 384 -> Q8_0
  EXPECT_EQ(t("blk.2.attn_q.weight", {384, 384}), DType::Q5_0);     // Q4_K, row 384 -> Q5_0
  EXPECT_EQ(t("blk.2.attn_q.weight", {512, 512}), DType::Q4_K);
  EXPECT_EQ(t("token_embd.weight", {16384, 512}), DType::Q6_K);     // tied: treated as output
  EXPECT_EQ(t("token_embd.weight", {16384, 512}, true), DType::Q4_K);
  EXPECT_EQ(t("output.weight", {16384, 512}, true), DType::Q6_K);
  EXPECT_EQ(t("blk.0.attn_norm.weight", {512}), DType::F32);
  EXPECT_EQ(gguf_choose_tensor_type(GgufFileType::kQ8_0, {"output.weight", {10, 512}, 10, 6, 2, true}), DType::Q8_0);
  EXPECT_EQ(gguf_choose_tensor_type(GgufFileType::kQ4_0, {"output.weight", {10, 512}, 10, 6, 2, true}), DType::Q6_K);
  EXPECT_EQ(gguf_choose_tensor_type(GgufFileType::kQ4_0, {"blk.0.attn_q.weight", {10, 48}, 10, 6, 2, true}), DType::F16);
}

}  // namespace
}  // namespace merlin
