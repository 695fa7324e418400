// The Llama-family forward pass (llama, mistral, qwen2) over a batch of tokens from one or
// more sequences. Prompt chunks, single decode tokens and speculative drafts are all the same
// thing here: a sequence slice of n tokens appended after n_past cached ones.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/matmul.h"
#include "model/kv_cache.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace merlin {

struct SeqSlice {
  int32_t start = 0;             // first row of this sequence in StepBatch::tokens
  int32_t n_tokens = 0;
  int32_t n_past = 0;            // tokens already in the KV cache; new ones get positions n_past..
  const int32_t* block_table = nullptr;  // must cover n_past + n_tokens slots
  int32_t n_blocks = 0;
};

struct StepBatch {
  std::vector<TokenId> tokens;           // [n_tokens] all sequences, concatenated
  std::vector<SeqSlice> seqs;
  std::vector<int32_t> logit_rows;       // rows of `tokens` whose logits are wanted, in order
};

struct ForwardOptions {
  Precision precision = Precision::kF32;  // matmul precision for batches of >= 8 rows
  // Checked before each layer: when it returns true the pass stops with Code::kCancelled and
  // its KV rows are left unwritten or partly written (the caller does not count them).
  std::function<bool()> abort;
};

class Model {
 public:
  explicit Model(std::shared_ptr<const ModelWeights> w);
  const ModelConfig& config() const { return w_->config; }
  const ModelWeights& weights() const { return *w_; }
  // Rotary inverse frequencies after scaling [head_dim/2] (tests compare the HF and GGUF routes).
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // Writes logits [logit_rows.size(), n_vocab] to `logits`. One thread at a time (scratch
  // buffers are members). On error the cache may hold partial writes for the batch's positions,
  // which are beyond every sequence's committed length.
  Status forward(ThreadPool& pool, const StepBatch& batch, KvCache& kv, float* logits,
                 const ForwardOptions& opt = {});

 private:
  void rope_table(int32_t pos, float* out) const;

  std::shared_ptr<const ModelWeights> w_;
  std::vector<float> inv_freq_;          // [head_dim/2], after rope scaling
  // scratch, sized for the largest batch seen
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_, cs_, out_rows_;
};

struct LoadedModel {
  std::shared_ptr<const ModelWeights> weights;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::string path;
  std::string name;                      // folder or file name, used as the API model id
};

// Loads a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file.
// Errors name the file and the problem.
Result<LoadedModel> load_model(const std::string& path);
// pack = false keeps every matrix row-major in the file mapping (no copy): for tools such as
// the converter that only read the weights once.
Result<std::shared_ptr<ModelWeights>> load_hf_weights(const std::string& dir, bool pack = true);
// Repacks f32/f16/bf16 matrices for the matmul kernels (Layout::kPanel32). Loaders call it.
void pack_weights(ModelWeights& w);
// GGUF route (model/gguf_loader.cc).
Result<LoadedModel> load_gguf_model(const std::string& path);

}  // namespace merlin
