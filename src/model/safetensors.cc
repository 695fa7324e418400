#include "model/safetensors.h"

#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

namespace merlin {

using nlohmann::json;

static DType st_dtype(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "F64") return DType::F64;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "I8") return DType::I8;
  if (s == "I16") return DType::I16;
  return DType::kInvalid;
}

Result<SafetensorsFile> parse_safetensors(const uint8_t* data, size_t size, const std::string& name) {
  if (size < 8) return Errf(Code::kCorrupt, "{}: too short for a safetensors header ({} bytes)", name, size);
  uint64_t hlen;
  std::memcpy(&hlen, data, 8);
  if (hlen > size - 8) return Errf(Code::kCorrupt, "{}: header length {} runs past the end of the file ({} bytes)", name, hlen, size);
  if (hlen > (100u << 20)) return Errf(Code::kCorrupt, "{}: header length {} is absurd", name, hlen);
  json h = json::parse(data + 8, data + 8 + hlen, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return Errf(Code::kCorrupt, "{}: header is not a JSON object", name);
  const size_t base = 8 + hlen, dsize = size - base;
  SafetensorsFile out;
  // Non-overlap check: sort ranges after reading.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [key, v] : h.items()) {
    if (key == "__metadata__") {
      if (v.is_object())
        for (auto& [mk, mv] : v.items())
          if (mv.is_string()) out.metadata[mk] = mv.get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
        !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      return Errf(Code::kCorrupt, "{}: tensor '{}' has a malformed entry", name, key);
    DType dt = st_dtype(v["dtype"].get<std::string>());
    if (dt == DType::kInvalid)
      return Errf(Code::kUnsupported, "{}: tensor '{}' has unsupported dtype {}", name, key, v["dtype"].get<std::string>());
    Tensor t;
    t.dtype = dt;
    t.name = key;
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) return Errf(Code::kCorrupt, "{}: tensor '{}' has a bad shape", name, key);
      uint64_t x = d.get<uint64_t>();
      if (x > (1ull << 40) || (x && numel > (1ull << 40) / x))
        return Errf(Code::kCorrupt, "{}: tensor '{}' shape is absurdly large", name, key);
      numel *= x;
      t.shape.push_back(static_cast<int64_t>(x));
    }
    auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return Errf(Code::kCorrupt, "{}: tensor '{}' has bad data_offsets", name, key);
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > dsize)
      return Errf(Code::kCorrupt, "{}: tensor '{}' data_offsets [{}, {}] out of range (data is {} bytes)", name, key, b, e, dsize);
    uint64_t want = numel * static_cast<uint64_t>(dtype_info(dt).block_bytes);
    if (e - b != want)
      return Errf(Code::kCorrupt, "{}: tensor '{}' has {} bytes but shape and dtype need {}", name, key, e - b, want);
    t.data = data + base + b;
    ranges.emplace_back(b, e);
    if (out.tensors.count(key)) return Errf(Code::kCorrupt, "{}: duplicate tensor '{}'", name, key);
    out.tensors.emplace(key, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second)
      return Errf(Code::kCorrupt, "{}: tensor data ranges overlap", name);
  return out;
}

Result<SafetensorsFile> open_safetensors(const std::string& path) {
  MERLIN_TRY(f, MappedFile::open(path));
  MERLIN_TRY(st, parse_safetensors(f->data(), f->size(), path));
  st.file = f;
  return std::move(st);
}

}  // namespace merlin
