// Hostile and broken HF model folders: every problem is refused with a message naming the file
// and the problem, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

class CorruptModel : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("corrupt-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(fs::path(test::model_dir("draft")) / f, fs::path(dir_) / f, fs::copy_options::overwrite_existing);
    std::ifstream in(fs::path(test::model_dir("draft")) / "model.safetensors", std::ios::binary);
    bytes_.assign(std::istreambuf_iterator<char>(in), {});
    std::memcpy(&hlen_, bytes_.data(), 8);
    header_ = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<long>(hlen_));
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes model.safetensors with `header` and the original data section.
  void write(const nlohmann::json& header, size_t truncate_data_to = SIZE_MAX) {
    std::string h = header.dump();
    uint64_t n = h.size();
    std::ofstream out(fs::path(dir_) / "model.safetensors", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(h.data(), static_cast<long>(h.size()));
    const size_t data = bytes_.size() - 8 - hlen_;
    out.write(bytes_.data() + 8 + hlen_, static_cast<long>(std::min(data, truncate_data_to)));
  }
  void write_raw(const std::string& s) {
    std::ofstream out(fs::path(dir_) / "model.safetensors", std::ios::binary | std::ios::trunc);
    out << s;
  }
  void write_config(const std::function<void(nlohmann::json&)>& edit) {
    std::ifstream in(fs::path(test::model_dir("draft")) / "config.json");
    auto j = nlohmann::json::parse(in);
    edit(j);
    std::ofstream(fs::path(dir_) / "config.json") << j.dump();
  }
  // The load must fail with a message containing every `needles`.
  void expect_refused(std::initializer_list<std::string> needles) {
    auto r = load_model(dir_);
    ASSERT_FALSE(r.has_value()) << "a broken model loaded";
    for (const auto& n : needles) EXPECT_NE(r.error().message.find(n), std::string::npos) << r.error().message;
  }

  std::string dir_;
  std::vector<char> bytes_;
  uint64_t hlen_ = 0;
  nlohmann::json header_;
};

TEST_F(CorruptModel, IntactCopyLoads) {
  write(header_);
  auto r = load_model(dir_);
  ASSERT_TRUE(r.has_value()) << r.error().message;
}

TEST_F(CorruptModel, HeaderLengthPastEnd) {
  std::string s(8, '\0');
  uint64_t big = 1 << 20;
  std::memcpy(s.data(), &big, 8);
  write_raw(s + "{}");
  expect_refused({"model.safetensors", "header length"});
}

TEST_F(CorruptModel, TooShortAndNotJson) {
  write_raw("abc");
  expect_refused({"model.safetensors", "too short"});
  std::string s(8, '\0');
  uint64_t n = 5;
  std::memcpy(s.data(), &n, 8);
  write_raw(s + "nope!");
  expect_refused({"model.safetensors", "not a JSON object"});
}

TEST_F(CorruptModel, TruncatedData) {
  write(header_, 1000);
  expect_refused({"model.safetensors", "out of range"});
}

TEST_F(CorruptModel, OffsetsOutOfRange) {
  auto h = header_;
  h["model.norm.weight"]["data_offsets"][1] = 1ull << 40;
  write(h);
  expect_refused({"model.safetensors", "model.norm.weight", "out of range"});
}

TEST_F(CorruptModel, ShapeDtypeMismatch) {
  auto h = header_;
  h["model.norm.weight"]["dtype"] = "F32";  // same bytes, twice the element size
  write(h);
  expect_refused({"model.safetensors", "model.norm.weight", "bytes"});
}

TEST_F(CorruptModel, WrongShapeForConfig) {
  auto h = header_;
  auto& t = h["model.layers.0.mlp.up_proj.weight"];
  auto shape = t["shape"].get<std::vector<int64_t>>();
  t["shape"] = std::vector<int64_t>{shape[1], shape[0]};  // transposed: same bytes, wrong shape
  write(h);
  expect_refused({"model.layers.0.mlp.up_proj.weight", "shape"});
}

TEST_F(CorruptModel, MissingTensor) {
  auto h = header_;
  h.erase("model.layers.1.self_attn.k_proj.weight");
  write(h);
  expect_refused({"missing tensor", "model.layers.1.self_attn.k_proj.weight"});
}

TEST_F(CorruptModel, DuplicateTensorAcrossShards) {
  // Two shards that both hold model.norm.weight.
  write(header_);
  fs::copy_file(fs::path(dir_) / "model.safetensors", fs::path(dir_) / "b.safetensors");
  fs::rename(fs::path(dir_) / "model.safetensors", fs::path(dir_) / "a.safetensors");
  nlohmann::json idx;
  for (auto& [k, v] : header_.items())
    if (k != "__metadata__") idx["weight_map"][k] = "a.safetensors";
  idx["weight_map"]["model.norm.weight"] = "b.safetensors";
  std::ofstream(fs::path(dir_) / "model.safetensors.index.json") << idx.dump();
  expect_refused({".safetensors", "also appears"});
}

TEST_F(CorruptModel, OverlappingRanges) {
  auto h = header_;
  h["model.norm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  write(h);
  expect_refused({"model.safetensors", "overlap"});
}

TEST_F(CorruptModel, UnknownArchitectureAndBadConfig) {
  write(header_);
  write_config([](nlohmann::json& j) { j["model_type"] = "mamba"; });
  expect_refused({"config.json", "unsupported architecture", "mamba"});
  write_config([](nlohmann::json& j) { j["hidden_size"] = "384"; });
  expect_refused({"config.json", "hidden_size", "number"});
  write_config([](nlohmann::json& j) { j["num_key_value_heads"] = 2; });  // 3 heads
  expect_refused({"config.json", "num_key_value_heads"});
  write_config([](nlohmann::json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; j.erase("rope_parameters"); });
  expect_refused({"config.json", "yarn"});
}

TEST_F(CorruptModel, UnsupportedDtype) {
  auto h = header_;
  h["model.norm.weight"]["dtype"] = "F8_E4M3";
  write(h);
  expect_refused({"model.safetensors", "unsupported dtype"});
}

TEST(Safetensors, EveryTruncationIsRefusedCleanly) {
  std::ifstream in(fs::path(test::model_dir("draft")) / "model.safetensors", std::ios::binary);
  std::vector<uint8_t> b(std::istreambuf_iterator<char>(in), {});
  b.resize(40000);  // the header and the first tensors are enough
  for (size_t n = 0; n < 20000; n += 97) {
    auto r = parse_safetensors(b.data(), n, "cut.safetensors");
    EXPECT_FALSE(r.has_value()) << n;
  }
}

}  // namespace
}  // namespace merlin
