// Conversion helpers of `merlin convert` / `merlin quantize`: llama.cpp's per-tensor type
// recipes and tensor re-encoding. Kept apart from gguf.cc so the parser builds without kernels.
#include <cctype>
#include <cmath>
#include <cstring>
#include <numbers>

#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "model/gguf.h"

// ---------------------------------------------------------------- quantization recipes

namespace merlin {

namespace {
struct FtName {
  GgufFileType t;
  const char* name;
};
constexpr FtName kFileTypes[] = {
    {GgufFileType::kF32, "f32"},     {GgufFileType::kF16, "f16"},       {GgufFileType::kBF16, "bf16"},
    {GgufFileType::kQ8_0, "q8_0"},   {GgufFileType::kQ4_0, "q4_0"},     {GgufFileType::kQ4_1, "q4_1"},
    {GgufFileType::kQ5_0, "q5_0"},   {GgufFileType::kQ5_1, "q5_1"},     {GgufFileType::kQ4_K_M, "q4_k_m"},
    {GgufFileType::kQ5_K_M, "q5_k_m"}, {GgufFileType::kQ6_K, "q6_k"},
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

int layer_of(const std::string& name) {
  if (!name.starts_with("blk.")) return -1;
  int v = 0;
  size_t i = 4;
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) v = v * 10 + (name[i] - '0');
  return v;
}
}  // namespace

std::optional<GgufFileType> gguf_file_type_from_name(const std::string& name) {
  std::string n = name;
  for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& f : kFileTypes)
    if (n == f.name) return f.t;
  return std::nullopt;
}

const char* gguf_file_type_name(GgufFileType t) {
  for (auto& f : kFileTypes)
    if (f.t == t) return f.name;
  return "unknown";
}

bool gguf_file_type_is_quantized(GgufFileType t) {
  return t != GgufFileType::kF32 && t != GgufFileType::kF16 && t != GgufFileType::kBF16;
}

DType gguf_choose_tensor_type(GgufFileType ft, const GgufTensorContext& t) {
  if (t.shape.size() < 2 || !t.name.ends_with(".weight")) return DType::F32;
  DType ty;
  switch (ft) {
    case GgufFileType::kF32: return DType::F32;
    case GgufFileType::kF16: return DType::F16;
    case GgufFileType::kBF16: return DType::BF16;
    case GgufFileType::kQ8_0: ty = DType::Q8_0; break;
    case GgufFileType::kQ4_0: ty = DType::Q4_0; break;
    case GgufFileType::kQ4_1: ty = DType::Q4_1; break;
    case GgufFileType::kQ5_0: ty = DType::Q5_0; break;
    case GgufFileType::kQ5_1: ty = DType::Q5_1; break;
    case GgufFileType::kQ4_K_M: ty = DType::Q4_K; break;
    case GgufFileType::kQ5_K_M: ty = DType::Q5_K; break;
    case GgufFileType::kQ6_K: ty = DType::Q6_K; break;
    default: return DType::F16;
  }
  const int64_t nx = t.shape.back();
  const bool km = ft == GgufFileType::kQ4_K_M || ft == GgufFileType::kQ5_K_M;
  if (t.name == "output.weight" || (!t.has_output && t.name == "token_embd.weight")) {
    if (nx % 256 != 0) ty = DType::Q8_0;
    else if (ty != DType::Q8_0) ty = DType::Q6_K;
  } else if (t.name.find("attn_v.weight") != std::string::npos) {
    const int il = layer_of(t.name);
    if (km && il >= 0 && use_more_bits(il, t.n_layer)) ty = DType::Q6_K;
    // Grouped-query models with many heads per kv head: attn_v is small, give it more bits.
    if (t.n_head_kv > 0 && t.n_head / t.n_head_kv >= 7 && (ty == DType::Q4_K)) ty = DType::Q5_K;
  } else if (t.name.find("ffn_down") != std::string::npos) {
    const int il = layer_of(t.name);
    if (km && il >= 0 && use_more_bits(il, t.n_layer)) ty = DType::Q6_K;
  }
  // Row length incompatible with the block: llama.cpp's fallbacks.
  if (nx % 256 != 0) {
    if (ty == DType::Q4_K) ty = DType::Q5_0;
    else if (ty == DType::Q5_K) ty = DType::Q5_1;
    else if (ty == DType::Q6_K) ty = DType::Q8_0;
  }
  if (nx % dtype_info(ty).block_elems != 0) ty = DType::F16;
  return ty;
}

std::vector<float> gguf_llama3_rope_freq_factors(const ModelConfig& c) {
  std::vector<float> out;
  if (c.rope_scaling != RopeScaling::kLlama3) return out;
  const int32_t half = c.head_dim / 2;
  // old_context_len: llama.cpp reads original_max_position_embeddings from the top-level
  // hparams (default 8192); real Llama 3.x configs keep it in rope_scaling as 8192, which is
  // what ModelConfig holds, so both agree on released models.
  const float old_ctx = static_cast<float>(c.rope_orig_max_pos);
  const float low_wavelen = old_ctx / c.rope_low_freq_factor, high_wavelen = old_ctx / c.rope_high_freq_factor;
  for (int32_t i = 0; i < half; ++i) {
    const float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    const float wavelen = 2.0f * std::numbers::pi_v<float> / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(c.rope_factor);
    } else {
      const float smooth = (old_ctx / wavelen - c.rope_low_freq_factor) / (c.rope_high_freq_factor - c.rope_low_freq_factor);
      out.push_back(1.0f / ((1.0f - smooth) / c.rope_factor + smooth));
    }
  }
  return out;
}

}  // namespace merlin


namespace merlin {

Result<std::vector<uint8_t>> gguf_convert_tensor(const Tensor& src, DType dst, const std::vector<int64_t>* row_order,
                                                 ThreadPool* pool) {
  const int64_t k = src.cols(), rows = src.shape.size() >= 2 ? src.rows() : 1;
  const auto di = dtype_info(dst);
  if (!di.known || k % di.block_elems != 0)
    return Errf(Code::kInvalidArgument, "tensor '{}': cannot store rows of {} elements as {}", src.name, k, di.name);
  if (!matmul_supported(src.dtype))
    return Errf(Code::kUnsupported, "tensor '{}': cannot read type {}", src.name, dtype_name(src.dtype));
  if (row_order && static_cast<int64_t>(row_order->size()) != rows)
    return Errf(Code::kInternal, "tensor '{}': row order has {} entries for {} rows", src.name, row_order->size(), rows);
  const size_t src_rb = row_bytes(src.dtype, k), dst_rb = row_bytes(dst, k);
  std::vector<uint8_t> out(dst_rb * static_cast<size_t>(rows));
  auto* base = static_cast<const uint8_t*>(src.data);
  bool ok = true;
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<float> f(static_cast<size_t>(k));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t sr = row_order ? (*row_order)[r] : r;
      uint8_t* d = out.data() + static_cast<size_t>(r) * dst_rb;
      if (src.layout != Layout::kRowMajor) {
        dequantize_row(src, sr, f.data());  // repacked by the loader: read through the kernels
      } else {
        const uint8_t* s = base + static_cast<size_t>(sr) * src_rb;
        if (src.dtype == dst) {
          std::memcpy(d, s, dst_rb);  // same type: bytes move unchanged (exact)
          continue;
        }
        dequantize_row(src.dtype, s, f.data(), k);
      }
      switch (dst) {
        case DType::F32: std::memcpy(d, f.data(), dst_rb); break;
        case DType::F16:
          for (int64_t i = 0; i < k; ++i) reinterpret_cast<uint16_t*>(d)[i] = f32_to_f16(f[i]);
          break;
        case DType::BF16:
          for (int64_t i = 0; i < k; ++i) reinterpret_cast<uint16_t*>(d)[i] = f32_to_bf16(f[i]);
          break;
        default:
          if (!quant_quantize_row(dst, f.data(), d, k)) ok = false;
      }
    }
  };
  if (pool) pool->parallel_for(rows, 8, work);
  else work(0, rows);
  if (!ok) return Errf(Code::kUnsupported, "tensor '{}': no quantizer for {}", src.name, di.name);
  return out;
}

}  // namespace merlin
