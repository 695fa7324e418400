#include "server/api_keys.h"

#include <fstream>
#include <sstream>

namespace merlin::server {

std::vector<std::string> parse_api_key_lines(std::string_view text) {
  std::vector<std::string> keys;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    size_t a = line.find_first_not_of(" \t\r\f\v");
    if (a != std::string_view::npos && line[a] != '#') {
      size_t b = line.find_last_not_of(" \t\r\f\v");
      keys.emplace_back(line.substr(a, b - a + 1));
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return keys;
}

Result<std::vector<std::string>> read_api_key_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Errf(Code::kNotFound, "cannot read API key file {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto keys = parse_api_key_lines(ss.str());
  if (keys.empty()) return Errf(Code::kInvalidArgument, "API key file {} holds no key", path);
  return keys;
}

}  // namespace merlin::server
