// Writes seed corpora for the fuzz targets: small valid GGUF files (every metadata value type,
// nested arrays, tensors of several block types, a tokenizer) and safetensors files.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "model/gguf.h"

using namespace merlin;

static void save(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

static GgufWriter::Producer bytes(size_t n, uint8_t fill) {
  return [n, fill] { return Result<std::vector<uint8_t>>(std::vector<uint8_t>(n, fill)); };
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_seeds GGUF_DIR SAFETENSORS_DIR\n");
    return 2;
  }
  std::filesystem::create_directories(argv[1]);
  std::filesystem::create_directories(argv[2]);
  const std::string gd = argv[1], sd = argv[2];
  {
    // A tiny llama model: 1 layer, embd 32, 2 heads, vocab 4.
    GgufWriter w(32);
    w.set("general.architecture", GgufValue::Str("llama"));
    for (auto [k, v] : {std::pair{"block_count", 1}, {"embedding_length", 32}, {"feed_forward_length", 64},
                        {"attention.head_count", 2}, {"attention.head_count_kv", 1}, {"context_length", 128}})
      w.set(std::string("llama.") + k, GgufValue::U32(v));
    w.set("llama.rope.freq_base", GgufValue::F32(10000.f));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5f));
    w.set("tokenizer.ggml.model", GgufValue::Str("gpt2"));
    w.set("tokenizer.ggml.pre", GgufValue::Str("llama-bpe"));
    w.set("tokenizer.ggml.tokens", GgufValue::StrArray({"a", "b", "ab", "<|endoftext|>"}));
    w.set("tokenizer.ggml.token_type", GgufValue::I32Array({1, 1, 1, 3}));
    w.set("tokenizer.ggml.merges", GgufValue::StrArray({"a b"}));
    w.set("tokenizer.ggml.scores", GgufValue::F32Array({0, -1, -2, 0}));
    w.set("tokenizer.ggml.eos_token_id", GgufValue::U32(3));
    w.set("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
    GgufValue nested;
    nested.type = GgufType::kArray;
    nested.elem = GgufType::kArray;
    nested.arr = {GgufValue::I32Array({1, 2}), GgufValue::StrArray({"x"})};
    w.set("test.nested", nested);
    GgufValue v;
    v.type = GgufType::kF64; v.f = 0.5; w.set("test.f64", v);
    v = {}; v.type = GgufType::kI64; v.i = -5; w.set("test.i64", v);
    v = {}; v.type = GgufType::kU16; v.u = 9; w.set("test.u16", v);
    v = {}; v.type = GgufType::kI8; v.i = -1; w.set("test.i8", v);
    w.add_tensor("token_embd.weight", DType::F32, {4, 32}, bytes(4 * 32 * 4, 0));
    w.add_tensor("output_norm.weight", DType::F32, {32}, bytes(32 * 4, 0));
    w.add_tensor("blk.0.attn_q.weight", DType::Q8_0, {32, 32}, bytes(32 * 34, 1));
    w.add_tensor("blk.0.attn_k.weight", DType::Q4_0, {16, 32}, bytes(16 * 18, 2));
    w.add_tensor("blk.0.ffn_down.weight", DType::Q4_K, {32, 256}, bytes(32 * 144, 3));
    w.add_tensor("blk.0.ffn_up.weight", DType::BF16, {64, 32}, bytes(64 * 32 * 2, 4));
    auto b = w.write_to_buffer();
    if (!b) return 1;
    save(gd + "/tiny-llama.gguf", *b);
  }
  {
    GgufWriter w(64);
    w.set("general.architecture", GgufValue::Str("qwen2"));
    w.set("general.alignment", GgufValue::U32(64));
    w.add_tensor("t", DType::Q6_K, {1, 256}, bytes(210, 7));
    auto b = w.write_to_buffer();
    if (!b) return 1;
    save(gd + "/align64.gguf", *b);
  }
  {
    GgufWriter w(32);
    auto b = w.write_to_buffer();
    if (!b) return 1;
    save(gd + "/empty.gguf", *b);
  }
  auto st = [&](const std::string& name, const std::string& header, size_t data_bytes) {
    std::vector<uint8_t> b(8);
    uint64_t n = header.size();
    std::memcpy(b.data(), &n, 8);
    b.insert(b.end(), header.begin(), header.end());
    b.resize(b.size() + data_bytes, 0x3f);
    save(sd + "/" + name, b);
  };
  st("two.safetensors",
     R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
     R"("b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}})",
     28);
  st("empty.safetensors", "{}", 0);
  st("scalar.safetensors", R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4);
  return 0;
}
