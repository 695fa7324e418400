// safetensors reader: 8-byte little-endian header length, a JSON header of
// {name: {dtype, shape, data_offsets: [begin, end]}}, then the data. Everything in the header is
// checked against the file (hostile files are refused with the file name and the problem).
#pragma once
#include <map>
#include <memory>
#include <string>

#include "core/mmap_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace merlin {

struct SafetensorsFile {
  std::shared_ptr<MappedFile> file;          // may be null when parsed from a plain buffer
  std::map<std::string, Tensor> tensors;     // data points into the mapping
  std::map<std::string, std::string> metadata;
};

// Parses bytes [data, data+size); `name` is used in error messages.
Result<SafetensorsFile> parse_safetensors(const uint8_t* data, size_t size, const std::string& name);
Result<SafetensorsFile> open_safetensors(const std::string& path);

}  // namespace merlin
