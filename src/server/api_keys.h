// API keys for `merlin serve`, kept out of the command line (where `ps` shows them to every
// user): from the MERLIN_API_KEY environment variable or a key file (--api-key-file).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace merlin::server {

// A key file's keys: one per line, surrounding blanks (and a CR) trimmed; blank lines and lines
// whose first non-blank character is '#' are ignored.
std::vector<std::string> parse_api_key_lines(std::string_view text);

// Reads and parses a key file; an error when it cannot be read or holds no key.
Result<std::vector<std::string>> read_api_key_file(const std::string& path);

}  // namespace merlin::server
