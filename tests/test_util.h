// Helpers shared by the test binaries.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace merlin::test {

inline std::string source_dir() { return MERLIN_SOURCE_DIR; }
// The shared data folder (llama.cpp-written GGUF files, vocab vectors, ...): `shared` beside the
// checkout, as on the development machines and in CI. Small data is copied into tests/data.
inline std::string shared_dir() { return source_dir() + "/../shared"; }
// MERLIN_NO_SKIP=1 (set by .ci/run) turns a skip for missing test data into a failure, so that
// CI cannot pass without running the compatibility tests.
inline bool no_skip() {
  const char* v = std::getenv("MERLIN_NO_SKIP");
  return v && *v && std::string(v) != "0";
}
inline std::string model_dir(const std::string& which = "target") {
  return source_dir() + "/models/tiny-coder-" + which;
}

inline const nlohmann::json& reference() {
  static const nlohmann::json j = [] {
    std::ifstream in(source_dir() + "/tests/data/reference.json");
    return nlohmann::json::parse(in);
  }();
  return j;
}

inline std::vector<uint8_t> base64_decode(const std::string& s) {
  static const std::string chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::vector<uint8_t> out;
  uint32_t buf = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    auto p = chars.find(c);
    if (p == std::string::npos) continue;
    buf = (buf << 6) | static_cast<uint32_t>(p);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((buf >> bits) & 0xff));
    }
  }
  return out;
}

// Runs a shell command, returns its stdout and sets *rc to its exit status.
inline std::string run_cmd(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("merlin-test-" + name + "-" + std::to_string(getpid()));
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace merlin::test

// Skips the test when `path` (test data) is absent; fails instead under MERLIN_NO_SKIP.
#define MERLIN_REQUIRE_DATA(path)                                                                \
  do {                                                                                           \
    const std::string merlin_data_path_ = (path);                                                \
    if (!std::filesystem::exists(merlin_data_path_)) {                                           \
      if (::merlin::test::no_skip())                                                             \
        FAIL() << merlin_data_path_ << " is absent and MERLIN_NO_SKIP is set (CI runs every test)"; \
      GTEST_SKIP() << merlin_data_path_ << " is absent";                                         \
    }                                                                                            \
  } while (0)
