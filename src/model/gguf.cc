#include "model/gguf.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace merlin {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxArrayDepth = 8;        // nested arrays deeper than this are refused (stack)
constexpr uint32_t kMaxDims = 4;

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}

// Smallest encoding of one value of type t, for bounding counts before allocating.
size_t min_value_size(GgufType t) {
  if (t == GgufType::kString) return 8;
  if (t == GgufType::kArray) return 12;
  return scalar_size(t);
}

class Reader {
 public:
  Reader(const uint8_t* d, size_t n, const std::string& name) : d_(d), n_(n), name_(name) {}
  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }

  template <class T>
  Result<T> get(const char* what) {
    if (left() < sizeof(T))
      return Errf(Code::kCorrupt, "{}: truncated at byte {} while reading {}", name_, pos_, what);
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  Result<std::string> str(const char* what) {
    MERLIN_TRY(len, get<uint64_t>(what));
    if (len > left())
      return Errf(Code::kCorrupt, "{}: {} at byte {} claims length {} but only {} bytes remain",
                  name_, what, pos_ - 8, len, left());
    std::string s(reinterpret_cast<const char*>(d_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  Result<GgufValue> value(GgufType t, const std::string& key, int depth) {
    GgufValue v;
    v.type = t;
    switch (t) {
      case GgufType::kU8: { MERLIN_TRY(x, get<uint8_t>("u8")); v.u = x; break; }
      case GgufType::kI8: { MERLIN_TRY(x, get<int8_t>("i8")); v.i = x; break; }
      case GgufType::kU16: { MERLIN_TRY(x, get<uint16_t>("u16")); v.u = x; break; }
      case GgufType::kI16: { MERLIN_TRY(x, get<int16_t>("i16")); v.i = x; break; }
      case GgufType::kU32: { MERLIN_TRY(x, get<uint32_t>("u32")); v.u = x; break; }
      case GgufType::kI32: { MERLIN_TRY(x, get<int32_t>("i32")); v.i = x; break; }
      case GgufType::kU64: { MERLIN_TRY(x, get<uint64_t>("u64")); v.u = x; break; }
      case GgufType::kI64: { MERLIN_TRY(x, get<int64_t>("i64")); v.i = x; break; }
      case GgufType::kF32: { MERLIN_TRY(x, get<float>("f32")); v.f = x; break; }
      case GgufType::kF64: { MERLIN_TRY(x, get<double>("f64")); v.f = x; break; }
      case GgufType::kBool: {
        MERLIN_TRY(x, get<uint8_t>("bool"));
        if (x > 1) return Errf(Code::kCorrupt, "{}: key '{}' has bool value {}", name_, key, x);
        v.u = x;
        break;
      }
      case GgufType::kString: { MERLIN_TRY(s, str("string value")); v.str = std::move(s); break; }
      case GgufType::kArray: {
        if (depth >= kMaxArrayDepth)
          return Errf(Code::kCorrupt, "{}: key '{}' nests arrays deeper than {}", name_, key, kMaxArrayDepth);
        MERLIN_TRY(et, get<uint32_t>("array type"));
        if (et > static_cast<uint32_t>(GgufType::kF64))
          return Errf(Code::kCorrupt, "{}: key '{}' has array element type {}", name_, key, et);
        MERLIN_TRY(cnt, get<uint64_t>("array length"));
        v.elem = static_cast<GgufType>(et);
        size_t ms = min_value_size(v.elem);
        if (cnt > left() / ms)
          return Errf(Code::kCorrupt, "{}: key '{}' claims {} array elements but only {} bytes remain",
                      name_, key, cnt, left());
        v.arr.reserve(static_cast<size_t>(cnt));
        for (uint64_t k = 0; k < cnt; ++k) {
          MERLIN_TRY(e, value(v.elem, key, depth + 1));
          v.arr.push_back(std::move(e));
        }
        break;
      }
      default:
        return Errf(Code::kCorrupt, "{}: key '{}' has unknown value type {}", name_, key,
                    static_cast<uint32_t>(t));
    }
    return v;
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& name_;
};

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "unknown";
}

bool GgufValue::is_int() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

std::optional<int64_t> GgufValue::as_int() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kU16: case GgufType::kU32: case GgufType::kBool:
      return static_cast<int64_t>(u);
    case GgufType::kU64:
      if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<int64_t>(u);
    case GgufType::kI8: case GgufType::kI16: case GgufType::kI32: case GgufType::kI64:
      return i;
    default:
      return std::nullopt;
  }
}

std::optional<double> GgufValue::as_double() const {
  if (is_float()) return f;
  auto v = as_int();
  if (v) return static_cast<double>(*v);
  return std::nullopt;
}

GgufValue GgufValue::StrArray(const std::vector<std::string>& v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem = GgufType::kString;
  x.arr.reserve(v.size());
  for (auto& s : v) x.arr.push_back(Str(s));
  return x;
}
GgufValue GgufValue::I32Array(const std::vector<int32_t>& v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem = GgufType::kI32;
  x.arr.reserve(v.size());
  for (auto s : v) x.arr.push_back(I32(s));
  return x;
}
GgufValue GgufValue::F32Array(const std::vector<float>& v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.elem = GgufType::kF32;
  x.arr.reserve(v.size());
  for (auto s : v) x.arr.push_back(F32(s));
  return x;
}

Tensor GgufTensorInfo::tensor() const {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.name = name;
  t.shape.assign(ne.rbegin(), ne.rend());
  return t;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index.find(key);
  return it == kv_index.end() ? nullptr : &kv[it->second].second;
}
const GgufTensorInfo* GgufFile::find_tensor(const std::string& n) const {
  auto it = tensor_index.find(n);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}
std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  auto* v = find(key);
  if (!v || v->type != GgufType::kString) return std::nullopt;
  return v->str;
}
std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  auto* v = find(key);
  if (!v || v->type == GgufType::kBool) return std::nullopt;
  return v->as_int();
}
std::optional<double> GgufFile::get_float(const std::string& key) const {
  auto* v = find(key);
  if (!v || v->type == GgufType::kBool) return std::nullopt;
  return v->as_double();
}
std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  auto* v = find(key);
  if (!v) return std::nullopt;
  if (v->type == GgufType::kBool) return v->u != 0;
  if (auto i = v->as_int()) return *i != 0;
  return std::nullopt;
}

Result<GgufFile> parse_gguf(const uint8_t* data, size_t size, const std::string& name) {
  GgufFile g;
  g.name = name;
  Reader r(data, size, name);
  MERLIN_TRY(magic, r.get<uint32_t>("magic"));
  if (magic != kMagic) return Errf(Code::kCorrupt, "{}: not a GGUF file (bad magic)", name);
  MERLIN_TRY(version, r.get<uint32_t>("version"));
  if (version != 2 && version != 3)
    return Errf(Code::kUnsupported, "{}: GGUF version {} (only 2 and 3 are supported)", name, version);
  g.version = version;
  MERLIN_TRY(n_tensors, r.get<uint64_t>("tensor count"));
  MERLIN_TRY(n_kv, r.get<uint64_t>("metadata count"));
  // A key/value takes at least 13 bytes and a tensor info at least 24.
  if (n_kv > r.left() / 13)
    return Errf(Code::kCorrupt, "{}: claims {} metadata entries, more than the file can hold", name, n_kv);
  if (n_tensors > r.left() / 24)
    return Errf(Code::kCorrupt, "{}: claims {} tensors, more than the file can hold", name, n_tensors);

  for (uint64_t k = 0; k < n_kv; ++k) {
    MERLIN_TRY(key, r.str("metadata key"));
    MERLIN_TRY(t, r.get<uint32_t>("value type"));
    if (t > static_cast<uint32_t>(GgufType::kF64))
      return Errf(Code::kCorrupt, "{}: key '{}' has unknown value type {}", name, key, t);
    MERLIN_TRY(v, r.value(static_cast<GgufType>(t), key, 0));
    if (g.kv_index.count(key)) return Errf(Code::kCorrupt, "{}: duplicate metadata key '{}'", name, key);
    g.kv_index[key] = g.kv.size();
    g.kv.emplace_back(std::move(key), std::move(v));
  }

  if (auto* a = g.find("general.alignment")) {
    auto av = a->as_int();
    if (!a->is_int() || !av || *av <= 0 || *av > (1 << 20) || (*av & (*av - 1)) != 0)
      return Errf(Code::kCorrupt, "{}: general.alignment must be a power of two (got {})", name,
                  av ? std::to_string(*av) : std::string(gguf_type_name(a->type)));
    g.alignment = static_cast<uint32_t>(*av);
  }

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    MERLIN_TRY(tname, r.str("tensor name"));
    ti.name = std::move(tname);
    MERLIN_TRY(n_dims, r.get<uint32_t>("tensor n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return Errf(Code::kCorrupt, "{}: tensor '{}' has {} dimensions (1..4 allowed)", name, ti.name, n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      MERLIN_TRY(dim, r.get<int64_t>("tensor dimension"));
      if (dim < 0) return Errf(Code::kCorrupt, "{}: tensor '{}' has negative dimension {}", name, ti.name, dim);
      if (__builtin_mul_overflow(numel, dim, &numel) || numel > (int64_t{1} << 48))
        return Errf(Code::kCorrupt, "{}: tensor '{}' has an absurd element count", name, ti.name);
      ti.ne.push_back(dim);
    }
    MERLIN_TRY(type, r.get<uint32_t>("tensor type"));
    auto info = dtype_info(static_cast<DType>(type));
    if (!info.known)
      return Errf(Code::kUnsupported, "{}: tensor '{}' has ggml type {}, which Merlin does not know",
                  name, ti.name, type);
    ti.dtype = static_cast<DType>(type);
    if (ti.ne[0] % info.block_elems != 0)
      return Errf(Code::kCorrupt, "{}: tensor '{}' row length {} is not a multiple of the {} block size {}",
                  name, ti.name, ti.ne[0], info.name, info.block_elems);
    ti.nbytes = static_cast<size_t>(numel / info.block_elems) * static_cast<size_t>(info.block_bytes);
    MERLIN_TRY(off, r.get<uint64_t>("tensor offset"));
    ti.offset = off;
    if (off % g.alignment != 0)
      return Errf(Code::kCorrupt, "{}: tensor '{}' offset {} is not a multiple of the alignment {}", name,
                  ti.name, off, g.alignment);
    if (g.tensor_index.count(ti.name))
      return Errf(Code::kCorrupt, "{}: duplicate tensor '{}'", name, ti.name);
    g.tensor_index[ti.name] = g.tensors.size();
    g.tensors.push_back(std::move(ti));
  }

  size_t data_off = (r.pos() + g.alignment - 1) / g.alignment * g.alignment;
  if (n_tensors > 0 && data_off > size)
    return Errf(Code::kCorrupt, "{}: truncated before the tensor data (needs {} bytes, has {})", name,
                data_off, size);
  g.data_offset = data_off;
  const size_t data_size = size > data_off ? size - data_off : 0;
  for (auto& ti : g.tensors) {
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      return Errf(Code::kCorrupt, "{}: tensor '{}' data [{}, +{}) lies beyond the end of the file ({} data bytes)",
                  name, ti.name, ti.offset, ti.nbytes, data_size);
    ti.data = data + data_off + ti.offset;
  }
  return g;
}

Result<GgufFile> open_gguf(const std::string& path) {
  MERLIN_TRY(f, MappedFile::open(path));
  MERLIN_TRY(g, parse_gguf(f->data(), f->size(), path));
  g.file = f;
  return std::move(g);
}

// ---------------------------------------------------------------- writer

void GgufWriter::set(const std::string& key, GgufValue v) {
  for (auto& [k, val] : kv_)
    if (k == key) {
      val = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::remove(const std::string& key) {
  std::erase_if(kv_, [&](const auto& p) { return p.first == key; });
}

void GgufWriter::add_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape, Producer produce) {
  tensors_.push_back({name, dtype, std::move(shape), std::move(produce)});
}

namespace {

struct Buf {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    auto p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void value(const GgufValue& v) {
    switch (v.type) {
      case GgufType::kU8: put<uint8_t>(static_cast<uint8_t>(v.u)); break;
      case GgufType::kI8: put<int8_t>(static_cast<int8_t>(v.i)); break;
      case GgufType::kU16: put<uint16_t>(static_cast<uint16_t>(v.u)); break;
      case GgufType::kI16: put<int16_t>(static_cast<int16_t>(v.i)); break;
      case GgufType::kU32: put<uint32_t>(static_cast<uint32_t>(v.u)); break;
      case GgufType::kI32: put<int32_t>(static_cast<int32_t>(v.i)); break;
      case GgufType::kU64: put<uint64_t>(v.u); break;
      case GgufType::kI64: put<int64_t>(v.i); break;
      case GgufType::kF32: put<float>(static_cast<float>(v.f)); break;
      case GgufType::kF64: put<double>(v.f); break;
      case GgufType::kBool: put<uint8_t>(v.u ? 1 : 0); break;
      case GgufType::kString: str(v.str); break;
      case GgufType::kArray:
        put<uint32_t>(static_cast<uint32_t>(v.elem));
        put<uint64_t>(v.arr.size());
        for (auto& e : v.arr) value(e);
        break;
    }
  }
};

}  // namespace

Status GgufWriter::emit(const std::function<bool(const void*, size_t)>& sink, const std::string& where,
                        const Progress& progress) {
  Buf h;
  h.put<uint32_t>(kMagic);
  h.put<uint32_t>(3);
  h.put<uint64_t>(tensors_.size());
  bool has_align = false;
  for (auto& [k, v] : kv_) has_align |= k == "general.alignment";
  h.put<uint64_t>(kv_.size() + (alignment_ != 32 && !has_align ? 1 : 0));
  for (auto& [k, v] : kv_) {
    h.str(k);
    h.put<uint32_t>(static_cast<uint32_t>(v.type));
    h.value(v);
  }
  if (alignment_ != 32 && !has_align) {
    h.str("general.alignment");
    h.put<uint32_t>(static_cast<uint32_t>(GgufType::kU32));
    h.put<uint32_t>(alignment_);
  }
  uint64_t off = 0;
  std::vector<uint64_t> sizes;
  for (auto& t : tensors_) {
    auto info = dtype_info(t.dtype);
    if (!info.known || t.shape.empty() || t.shape.size() > kMaxDims || t.shape.back() % info.block_elems)
      return {Code::kInvalidArgument, fmt::format("{}: cannot write tensor '{}' ({} {})", where, t.name,
                                                  info.name, fmt::join(t.shape, "x"))};
    h.str(t.name);
    h.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    int64_t numel = 1;
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) {
      h.put<int64_t>(*it);
      numel *= *it;
    }
    h.put<uint32_t>(static_cast<uint32_t>(t.dtype));
    h.put<uint64_t>(off);
    uint64_t nb = static_cast<uint64_t>(numel / info.block_elems) * info.block_bytes;
    sizes.push_back(nb);
    off += (nb + alignment_ - 1) / alignment_ * alignment_;
  }
  while (h.b.size() % alignment_) h.b.push_back(0);
  if (!sink(h.b.data(), h.b.size())) return {Code::kInternal, fmt::format("{}: write failed", where)};
  uint64_t written = h.b.size();
  static const uint8_t zeros[64] = {};
  for (size_t i = 0; i < tensors_.size(); ++i) {
    auto& t = tensors_[i];
    auto bytes = t.produce();
    if (!bytes) return bytes.error();
    if (bytes->size() != sizes[i])
      return {Code::kInternal, fmt::format("{}: tensor '{}' produced {} bytes, expected {}", where, t.name,
                                           bytes->size(), sizes[i])};
    if (!sink(bytes->data(), bytes->size())) return {Code::kInternal, fmt::format("{}: write failed", where)};
    size_t pad = (alignment_ - bytes->size() % alignment_) % alignment_;
    while (pad > 0) {
      size_t c = std::min<size_t>(pad, sizeof(zeros));
      if (!sink(zeros, c)) return {Code::kInternal, fmt::format("{}: write failed", where)};
      pad -= c;
    }
    written += (bytes->size() + alignment_ - 1) / alignment_ * alignment_;
    // Free the tensor's source (e.g. a quantized copy) as soon as it is written.
    t.produce = nullptr;
    if (progress) progress(i + 1, tensors_.size(), written, t.name);
  }
  return Status::Ok();
}

Status GgufWriter::write(const std::string& path, const Progress& progress) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return {Code::kInvalidArgument, fmt::format("{}: cannot create file", tmp)};
  auto st = emit([&](const void* p, size_t n) { return std::fwrite(p, 1, n, f) == n; }, path, progress);
  if (std::fclose(f) != 0 && st.ok()) st = {Code::kInternal, fmt::format("{}: write failed", tmp)};
  std::error_code ec;
  if (!st.ok()) {
    std::filesystem::remove(tmp, ec);
    return st;
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return {Code::kInternal, fmt::format("{}: cannot rename from {}: {}", path, tmp, ec.message())};
  return Status::Ok();
}

Result<std::vector<uint8_t>> GgufWriter::write_to_buffer() {
  std::vector<uint8_t> out;
  auto st = emit(
      [&](const void* p, size_t n) {
        auto c = static_cast<const uint8_t*>(p);
        out.insert(out.end(), c, c + n);
        return true;
      },
      "<buffer>", nullptr);
  if (!st.ok()) return std::unexpected(st);
  return out;
}

// ---------------------------------------------------------------- metadata interpretation

namespace {

// Integer metadata in [lo, hi]; absent -> fallback (or error when required).
Status get_i32(const GgufFile& g, const std::string& key, int32_t& out, bool required, int64_t lo = 0,
               int64_t hi = INT32_MAX) {
  auto* v = g.find(key);
  if (!v) {
    if (required) return {Code::kCorrupt, fmt::format("{}: missing metadata '{}'", g.name, key)};
    return Status::Ok();
  }
  auto i = v->is_int() ? v->as_int() : std::nullopt;
  if (!i || *i < lo || *i > hi)
    return {Code::kCorrupt, fmt::format("{}: metadata '{}' must be an integer in [{}, {}]", g.name, key, lo, hi)};
  out = static_cast<int32_t>(*i);
  return Status::Ok();
}

Status get_f32(const GgufFile& g, const std::string& key, float& out) {
  auto* v = g.find(key);
  if (!v) return Status::Ok();
  auto d = v->as_double();
  if (!d || v->type == GgufType::kBool)
    return {Code::kCorrupt, fmt::format("{}: metadata '{}' must be a number", g.name, key)};
  out = static_cast<float>(*d);
  return Status::Ok();
}

std::optional<TokenId> token_id(const GgufFile& g, const std::string& key, size_t n_vocab) {
  auto* v = g.find(key);
  if (!v || !v->is_int()) return std::nullopt;
  auto i = v->as_int();
  // Files in the wild use -1 / UINT32_MAX for "none"; ids outside the vocabulary are dropped.
  if (!i || *i < 0 || static_cast<size_t>(*i) >= n_vocab) return std::nullopt;
  return static_cast<TokenId>(*i);
}

}  // namespace

std::vector<int64_t> gguf_qk_row_order(int64_t n_rows, int64_t head_dim, bool to_gguf) {
  std::vector<int64_t> order(static_cast<size_t>(n_rows));
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t head = r / head_dim, in = r % head_dim;
    if (to_gguf) {
      // destination GGUF row in = 2*i + h comes from HF row h*half + i
      order[r] = head * head_dim + (in % 2) * half + in / 2;
    } else {
      // destination HF row in = h*half + i comes from GGUF row 2*i + h
      order[r] = head * head_dim + 2 * (in % half) + in / half;
    }
  }
  return order;
}

Result<ModelConfig> gguf_model_config(const GgufFile& g) {
  auto arch = g.get_string("general.architecture");
  if (!arch) return Errf(Code::kCorrupt, "{}: missing metadata 'general.architecture'", g.name);
  if (*arch != "llama" && *arch != "mistral" && *arch != "qwen2")
    return Errf(Code::kUnsupported, "{}: unsupported architecture '{}' (supported: llama, mistral, qwen2)",
                g.name, *arch);
  ModelConfig c;
  c.arch = *arch;
  const std::string p = *arch + ".";
  auto chk = [](Status s) -> Result<void> {
    if (!s.ok()) return std::unexpected(s);
    return {};
  };
  MERLIN_CHECK_OK(chk(get_i32(g, p + "embedding_length", c.n_embd, true, 1, 1 << 16)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "block_count", c.n_layer, true, 1, 1024)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "feed_forward_length", c.n_ff, true, 1, 1 << 20)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.head_count", c.n_head, true, 1, 1024)));
  c.n_head_kv = c.n_head;
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.head_count_kv", c.n_head_kv, false, 1, 1024)));
  c.head_dim = c.n_embd / c.n_head;
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.key_length", c.head_dim, false, 1, 1024)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "context_length", c.max_pos, false, 1)));
  MERLIN_CHECK_OK(chk(get_f32(g, p + "attention.layer_norm_rms_epsilon", c.rms_eps)));
  MERLIN_CHECK_OK(chk(get_f32(g, p + "rope.freq_base", c.rope_theta)));
  if (auto st = g.get_string(p + "rope.scaling.type")) {
    if (*st == "linear") {
      c.rope_scaling = RopeScaling::kLinear;
      MERLIN_CHECK_OK(chk(get_f32(g, p + "rope.scaling.factor", c.rope_factor)));
      if (!(c.rope_factor > 0))
        return Errf(Code::kCorrupt, "{}: rope.scaling.factor must be positive", g.name);
    } else if (*st != "none") {
      return Errf(Code::kUnsupported, "{}: rope scaling type '{}' is not supported", g.name, *st);
    }
  }
  // Vocabulary size: the token list is authoritative, then <arch>.vocab_size, then token_embd.
  if (auto* toks = g.find("tokenizer.ggml.tokens"); toks && toks->type == GgufType::kArray) {
    c.n_vocab = static_cast<int32_t>(std::min<size_t>(toks->arr.size(), INT32_MAX));
  } else {
    MERLIN_CHECK_OK(chk(get_i32(g, p + "vocab_size", c.n_vocab, false, 1)));
    if (c.n_vocab == 0)
      if (auto* te = g.find_tensor("token_embd.weight"); te && te->ne.size() == 2)
        c.n_vocab = static_cast<int32_t>(std::min<int64_t>(te->ne[1], INT32_MAX));
  }
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.tie_embeddings = g.find_tensor("output.weight") == nullptr;
  if (auto sw = g.get_int(p + "attention.sliding_window"); sw && *sw > 0 && *sw < INT32_MAX)
    c.sliding_window = static_cast<int32_t>(*sw);
  if (auto st = c.validate(); !st.ok()) return Errf(st.code, "{}: {}", g.name, st.message);
  return c;
}

Result<TokenizerVocab> gguf_tokenizer_vocab(const GgufFile& g) {
  TokenizerVocab v;
  auto model = g.get_string("tokenizer.ggml.model");
  if (!model) return Errf(Code::kCorrupt, "{}: missing metadata 'tokenizer.ggml.model'", g.name);
  // Merlin implements byte-level BPE ("gpt2") and SentencePiece BPE ("llama"); WordPiece ("bert"),
  // Unigram ("t5"), "rwkv", "plamo2", "gemma4" (BPE over raw UTF-8), ... are refused, never guessed.
  if (*model == "gpt2") v.model = TokenizerModel::kByteLevelBpe;
  else if (*model == "llama") v.model = TokenizerModel::kSentencePieceBpe;
  else return Errf(Code::kUnsupported, "{}: tokenizer.ggml.model '{}' is not supported (Merlin implements 'gpt2' and 'llama')", g.name, *model);
  v.pre = g.get_string("tokenizer.ggml.pre").value_or("");
  if (v.pre.empty()) v.pre = "default";  // as llama.cpp (with a warning there)
  // (An unknown tokenizer.ggml.pre is refused by Tokenizer::from_vocab, which knows the names.)

  auto* toks = g.find("tokenizer.ggml.tokens");
  if (!toks || toks->type != GgufType::kArray || toks->elem != GgufType::kString || toks->arr.empty())
    return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.tokens' must be a non-empty array of strings", g.name);
  const size_t n = toks->arr.size();
  if (n > (1u << 24)) return Errf(Code::kCorrupt, "{}: {} tokens is too many", g.name, n);
  v.tokens.reserve(n);
  for (auto& t : toks->arr) v.tokens.push_back(t.str);

  if (auto* s = g.find("tokenizer.ggml.scores")) {
    if (s->type != GgufType::kArray || s->arr.size() != n || (s->elem != GgufType::kF32 && s->elem != GgufType::kF64))
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.scores' must be {} floats", g.name, n);
    v.scores.reserve(n);
    for (auto& e : s->arr) v.scores.push_back(static_cast<float>(e.f));
  }
  if (auto* s = g.find("tokenizer.ggml.token_type")) {
    if (s->type != GgufType::kArray || s->arr.size() != n || !(s->arr.empty() || s->arr[0].is_int()))
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.token_type' must be {} integers", g.name, n);
    v.types.reserve(n);
    for (auto& e : s->arr) {
      auto t = e.as_int().value_or(1);
      if (t < 1 || t > 6) t = 1;  // unknown attribute values are treated as normal tokens
      v.types.push_back(static_cast<TokenType>(t));
    }
  }
  if (auto* s = g.find("tokenizer.ggml.merges")) {
    if (s->type != GgufType::kArray || s->elem != GgufType::kString)
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.merges' must be an array of strings", g.name);
    v.merges.reserve(s->arr.size());
    for (auto& e : s->arr) v.merges.push_back(e.str);
  }
  v.bos = token_id(g, "tokenizer.ggml.bos_token_id", n);
  v.eos = token_id(g, "tokenizer.ggml.eos_token_id", n);
  v.eot = token_id(g, "tokenizer.ggml.eot_token_id", n);
  v.pad = token_id(g, "tokenizer.ggml.padding_token_id", n);
  v.unk = token_id(g, "tokenizer.ggml.unknown_token_id", n);
  auto fim = [&](const char* now, const char* old) {
    auto r = token_id(g, std::string("tokenizer.ggml.") + now, n);
    return r ? r : (old ? token_id(g, std::string("tokenizer.ggml.") + old, n) : std::nullopt);
  };
  v.fim_pre = fim("fim_pre_token_id", "prefix_token_id");
  v.fim_suf = fim("fim_suf_token_id", "suffix_token_id");
  v.fim_mid = fim("fim_mid_token_id", "middle_token_id");
  v.fim_pad = fim("fim_pad_token_id", nullptr);
  v.fim_rep = fim("fim_rep_token_id", nullptr);
  v.fim_sep = fim("fim_sep_token_id", nullptr);
  // Files converted without FIM ids (llama.cpp writes none for most models): find the tokens by
  // their text, as llama.cpp's vocab loader does.
  auto by_text = [&](std::optional<TokenId>& slot, std::initializer_list<const char*> names) {
    if (slot) return;
    for (const char* nm : names)
      for (size_t id = 0; id < n; ++id)
        if (v.tokens[id] == nm) {
          slot = static_cast<TokenId>(id);
          return;
        }
  };
  by_text(v.fim_pre, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>"});
  by_text(v.fim_suf, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>"});
  by_text(v.fim_mid, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>"});
  by_text(v.fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>"});
  by_text(v.fim_rep, {"<|fim_repo|>", "<fim-repo>", "<reponame>", "<REPO>"});
  by_text(v.fim_sep, {"<|file_sep|>", "<file_sep>", "<file-sep>"});
  // llama.cpp's defaults when the flag is absent: SentencePiece adds BOS; byte-level BPE only for
  // the llama3 family, tekken and chameleon pre-tokenizers.
  static constexpr std::string_view kBosPre[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                                 "midm-2.0", "lfm2", "jina-v5-nano", "tekken", "chameleon"};
  const bool bos_default = v.model == TokenizerModel::kSentencePieceBpe ||
                           std::find(std::begin(kBosPre), std::end(kBosPre), v.pre) != std::end(kBosPre);
  v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token").value_or(bos_default);
  v.add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").value_or(v.model == TokenizerModel::kSentencePieceBpe);
  v.chat_template = g.get_string("tokenizer.chat_template").value_or("");
  if (!v.chat_template.empty()) v.chat_template_source = "gguf";
  return v;
}

}  // namespace merlin
