// Hyperparameters of a Llama-family decoder (llama, mistral, qwen2), from an HF config.json or
// GGUF `llama.*` metadata.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace merlin {

enum class RopeScaling { kNone, kLinear, kLlama3 };

struct ModelConfig {
  std::string arch = "llama";      // model_type: llama | mistral | qwen2
  int32_t n_vocab = 0;
  int32_t n_embd = 0;              // hidden_size
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;            // may differ from n_embd / n_head (explicit head_dim)
  int32_t n_ff = 0;                // intermediate_size
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling = RopeScaling::kNone;
  float rope_factor = 1.0f;                 // linear and llama3
  float rope_low_freq_factor = 1.0f;        // llama3
  float rope_high_freq_factor = 4.0f;       // llama3
  int32_t rope_orig_max_pos = 8192;         // llama3 original_max_position_embeddings
  int32_t max_pos = 4096;                   // max_position_embeddings
  // Per-frequency divisors of inv_freq ([head_dim/2]; empty = none): GGUF's rope_freqs.weight,
  // which is how llama.cpp stores Llama 3 rope scaling (the file has no llama3 scaling keys).
  std::vector<float> rope_freq_factors;
  bool tie_embeddings = false;
  bool qkv_bias = false;                    // Qwen2 (and attention_bias: true)
  // Tokens each query attends to when the model was trained with sliding-window attention
  // (HF sliding_window unless use_sliding_window is false, as Qwen2 configs often say; GGUF
  // <arch>.attention.sliding_window); 0 = full attention. Merlin's forward pass always attends
  // to every earlier token, so it matches such a model only within the window: see
  // context_size().
  int32_t sliding_window = 0;

  // Checks the numbers are consistent and in sane ranges (hostile configs).
  Status validate() const;
  // The longest context Merlin runs this model at exactly: max_pos, capped at sliding_window.
  int32_t max_context() const;
};

// The context size to run `c` at when `requested` tokens were asked for (0: as long as the model
// allows). A sliding window shorter than max_pos is never ignored: the default is capped at the
// window (logged as a warning), and an explicit request longer than the window is refused.
Result<int32_t> context_size(const ModelConfig& c, int32_t requested);

// Parses config.json text; `path` is only used in error messages.
Result<ModelConfig> parse_hf_config(const std::string& json_text, const std::string& path);

}  // namespace merlin
