// Response ids and timestamps shared by the API handlers.
#pragma once
#include <chrono>
#include <cstdint>
#include <random>
#include <string>

namespace merlin::server {

// "prefix" followed by 24 random hex digits, as OpenAI and Anthropic ids look.
inline std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[rng() & 15];
  return s;
}

inline int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace merlin::server
