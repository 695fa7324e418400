// GGUF (llama.cpp's model file format, version 2 and 3): a memory-mapped reader that validates
// every count, length and offset against the file, and a streaming writer.
//
// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata key/values,
// tensor infos (name, n_dims, dims innermost-first, ggml type, offset), padding to
// `general.alignment` (default 32), then the tensor data (offsets are relative to its start).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace merlin {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars keep their exact type so the writer can reproduce them.
struct GgufValue {
  GgufType type = GgufType::kU32;
  uint64_t u = 0;        // unsigned ints and bool
  int64_t i = 0;         // signed ints
  double f = 0;          // f32 / f64
  std::string str;
  GgufType elem = GgufType::kU8;   // arrays: element type
  std::vector<GgufValue> arr;

  bool is_int() const;
  bool is_float() const { return type == GgufType::kF32 || type == GgufType::kF64; }
  // Numeric value of any int/float/bool; nullopt for strings and arrays.
  std::optional<int64_t> as_int() const;
  std::optional<double> as_double() const;

  static GgufValue U32(uint32_t v) { GgufValue x; x.type = GgufType::kU32; x.u = v; return x; }
  static GgufValue I32(int32_t v) { GgufValue x; x.type = GgufType::kI32; x.i = v; return x; }
  static GgufValue U64(uint64_t v) { GgufValue x; x.type = GgufType::kU64; x.u = v; return x; }
  static GgufValue F32(float v) { GgufValue x; x.type = GgufType::kF32; x.f = v; return x; }
  static GgufValue Bool(bool v) { GgufValue x; x.type = GgufType::kBool; x.u = v; return x; }
  static GgufValue Str(std::string v) { GgufValue x; x.type = GgufType::kString; x.str = std::move(v); return x; }
  static GgufValue StrArray(const std::vector<std::string>& v);
  static GgufValue I32Array(const std::vector<int32_t>& v);
  static GgufValue F32Array(const std::vector<float>& v);
};

struct GgufTensorInfo {
  std::string name;
  DType dtype = DType::kInvalid;
  std::vector<int64_t> ne;      // GGUF order: ne[0] is the row length (innermost)
  uint64_t offset = 0;          // relative to the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;

  // Merlin view: shape outermost-first.
  Tensor tensor() const;
};

struct GgufFile {
  std::shared_ptr<MappedFile> file;   // null when parsed from a plain buffer
  std::string name;                   // path, for messages
  uint32_t version = 0;
  uint32_t alignment = 32;
  size_t data_offset = 0;             // start of the tensor data section in the file
  std::vector<std::pair<std::string, GgufValue>> kv;   // in file order
  std::map<std::string, size_t> kv_index;
  std::vector<GgufTensorInfo> tensors;                 // in file order
  std::map<std::string, size_t> tensor_index;

  const GgufValue* find(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // Typed look-ups: nullopt when absent or of another kind.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
};

// Parses and validates bytes [data, data+size); tensor data pointers point into the buffer.
// `name` is used in error messages. Never crashes on hostile input.
Result<GgufFile> parse_gguf(const uint8_t* data, size_t size, const std::string& name);
Result<GgufFile> open_gguf(const std::string& path);

// Hyperparameters from `<arch>.*` keys (llama, mistral, qwen2 naming); n_vocab from the token
// list (or <arch>.vocab_size / token_embd). Validated.
Result<ModelConfig> gguf_model_config(const GgufFile& g);
// Tokenizer description from `tokenizer.ggml.*` / `tokenizer.chat_template` (vocab-only files too).
Result<TokenizerVocab> gguf_tokenizer_vocab(const GgufFile& g);
// Row permutation llama.cpp's converter applies to Q/K weights of `llama` models (HF
// rotate-half -> interleaved pairs): for each head of `head_dim` rows, GGUF row 2*i+h holds
// HF row h*head_dim/2+i. `to_gguf` false gives the inverse. Returns, for each destination row,
// its source row.
std::vector<int64_t> gguf_qk_row_order(int64_t n_rows, int64_t head_dim, bool to_gguf);
// The rope_freqs.weight tensor llama.cpp's converter writes for Llama 3 rope scaling: for each
// of the head_dim/2 frequencies the divisor of the unscaled inv_freq (1, factor, or the smooth
// blend), computed in f32 as convert_hf_to_gguf does. Empty unless c.rope_scaling is kLlama3.
std::vector<float> gguf_llama3_rope_freq_factors(const ModelConfig& c);

// Target file types of `merlin convert` / `merlin quantize`, with llama.cpp's llama_ftype
// numbers (written as general.file_type).
enum class GgufFileType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 7, kQ5_0 = 8, kQ5_1 = 9,
  kQ4_K_M = 15, kQ5_K_M = 17, kQ6_K = 18, kBF16 = 32,
};
// "f32", "q4_k_m", ... (case-insensitive); nullopt when unknown.
std::optional<GgufFileType> gguf_file_type_from_name(const std::string& name);
const char* gguf_file_type_name(GgufFileType t);
bool gguf_file_type_is_quantized(GgufFileType t);

// Per-tensor type choice of llama.cpp's llama_tensor_get_type for the file types above:
// 1-D tensors stay f32; output (or token_embd when tied) gets Q6_K; *_K_M give attn_v and
// ffn_down Q6_K in the layers use_more_bits() picks; K-quants of tensors whose row length is
// not a multiple of 256 fall back (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0), and block types whose
// block does not divide the row fall back to f16.
struct GgufTensorContext {
  std::string name;              // GGUF tensor name ("blk.3.attn_v.weight")
  std::vector<int64_t> shape;    // outermost first
  int32_t n_layer = 0;
  int32_t n_head = 0, n_head_kv = 0;
  bool has_output = true;        // false when output.weight is tied to token_embd
};
DType gguf_choose_tensor_type(GgufFileType ft, const GgufTensorContext& t);

// Converts a tensor (any supported dtype, shape outermost-first) to `dst`, optionally taking
// rows in `row_order` (destination row r <- source row row_order[r]); rows run in parallel on
// `pool` when given. Returns the bytes in the destination layout.
Result<std::vector<uint8_t>> gguf_convert_tensor(const Tensor& src, DType dst,
                                                 const std::vector<int64_t>* row_order = nullptr,
                                                 ThreadPool* pool = nullptr);

// Streaming writer: metadata and tensor infos are given first, tensor bytes are produced one
// tensor at a time while writing (so a converter never holds the whole model in memory).
class GgufWriter {
 public:
  using Producer = std::function<Result<std::vector<uint8_t>>()>;
  using Progress = std::function<void(size_t index, size_t count, uint64_t bytes_written,
                                      const std::string& tensor)>;

  explicit GgufWriter(uint32_t alignment = 32) : alignment_(alignment) {}
  void set(const std::string& key, GgufValue v);   // replaces an existing key in place
  void remove(const std::string& key);
  // shape is outermost-first (Merlin order); it is written innermost-first.
  void add_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape, Producer produce);
  // Writes to `path` (via a temporary file renamed at the end).
  Status write(const std::string& path, const Progress& progress = nullptr);
  // The whole file as bytes (tests, fuzz seeds).
  Result<std::vector<uint8_t>> write_to_buffer();

 private:
  struct PendingTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    Producer produce;
  };
  Status emit(const std::function<bool(const void*, size_t)>& sink, const std::string& where,
              const Progress& progress);

  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace merlin
