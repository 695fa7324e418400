// `merlin quantize IN.gguf OUT.gguf TYPE`: re-encodes the weights of a GGUF file with llama.cpp's
// per-tensor recipes; metadata is copied (general.file_type updated), 1-D tensors kept as they are.
#include <chrono>
#include <cstdio>

#include <fmt/core.h>

#include "command.h"
#include "core/thread_pool.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "model/gguf.h"

namespace merlin::cli {
namespace {

struct QuantizeArgs {
  std::string in, out, type;
  int threads = 0;
};

int run_quantize(const QuantizeArgs& a) {
  auto ft = gguf_file_type_from_name(a.type);
  if (!ft) {
    fmt::print(stderr, "error: unknown type '{}' (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k)\n", a.type);
    return 2;
  }
  if (a.in == a.out) {
    fmt::print(stderr, "error: input and output are the same file\n");
    return 2;
  }
  auto gr = open_gguf(a.in);
  if (!gr) {
    fmt::print(stderr, "error: {}\n", gr.error().message);
    return 1;
  }
  auto g = std::make_shared<GgufFile>(std::move(*gr));
  const std::string arch = g->get_string("general.architecture").value_or("llama");
  const auto n_layer = static_cast<int32_t>(g->get_int(arch + ".block_count").value_or(0));
  const auto n_head = static_cast<int32_t>(g->get_int(arch + ".attention.head_count").value_or(0));
  const auto n_head_kv = static_cast<int32_t>(g->get_int(arch + ".attention.head_count_kv").value_or(n_head));
  const bool has_output = g->find_tensor("output.weight") != nullptr;

  GgufWriter w(g->alignment);
  for (auto& [k, v] : g->kv)
    if (k != "general.alignment") w.set(k, v);
  w.set("general.file_type", GgufValue::U32(static_cast<uint32_t>(*ft)));
  w.set("general.quantization_version", GgufValue::U32(2));

  auto pool = std::make_shared<ThreadPool>(a.threads > 0 ? a.threads : default_thread_count());
  size_t requantized = 0;
  for (auto& ti : g->tensors) {
    Tensor src = ti.tensor();
    DType dt = src.dtype;
    // Only matrices named *.weight are re-encoded (llama.cpp leaves norms and 1-D tensors alone).
    if (src.shape.size() >= 2 && ti.name.ends_with(".weight") && matmul_supported(src.dtype))
      dt = gguf_choose_tensor_type(*ft, {ti.name, src.shape, n_layer, n_head, n_head_kv, has_output});
    if (dt != src.dtype && quant_is_supported(src.dtype)) ++requantized;
    w.add_tensor(ti.name, dt, src.shape, [src, dt, g, pool]() -> Result<std::vector<uint8_t>> {
      if (dt == src.dtype) {
        auto* p = static_cast<const uint8_t*>(src.data);
        return std::vector<uint8_t>(p, p + src.nbytes());
      }
      return gguf_convert_tensor(src, dt, nullptr, pool.get());
    });
  }
  if (requantized)
    fmt::print(stderr, "warning: {} tensors are already quantized and are re-quantized from their dequantized values (quality loss adds up)\n",
               requantized);
  fmt::print(stderr, "quantizing {} -> {} ({})\n", a.in, a.out, gguf_file_type_name(*ft));
  auto t0 = std::chrono::steady_clock::now();
  auto st = w.write(a.out, [&](size_t i, size_t n, uint64_t bytes, const std::string& name) {
    const int width = 30, done = n ? static_cast<int>(width * i / n) : width;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Redraw at most every 0.1 s (and always for the last tensor) to keep logs readable.
    static double last = -1;
    if (i != n && s - last < 0.1) return;
    last = s;
    fmt::print(stderr, "\r[{}{}] {:>4}/{} tensors, {:8.1f} MB written, {:5.1f} s  {:<32.32}", std::string(done, '#'),
               std::string(width - done, '.'), i, n, bytes / 1e6, s, name);
    if (i == n) fmt::print(stderr, "\n");
    std::fflush(stderr);
  });
  if (!st.ok()) {
    fmt::print(stderr, "\nerror: {}\n", st.message);
    return 1;
  }
  return 0;
}

CommandRegistrar reg("quantize", "Re-encode a GGUF file's weights (llama.cpp-compatible mixed quantization)",
                     [](CLI::App& app) -> std::function<int()> {
                       auto a = std::make_shared<QuantizeArgs>();
                       app.add_option("input", a->in, "Input .gguf file (f32/f16/bf16 or quantized)")->required();
                       app.add_option("output", a->out, "Output .gguf file")->required();
                       app.add_option("type", a->type,
                                      "Target type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k")
                           ->required();
                       app.add_option("--threads", a->threads, "Threads for quantization (default: physical cores)");
                       return [a] { return run_quantize(*a); };
                     });

}  // namespace
}  // namespace merlin::cli
