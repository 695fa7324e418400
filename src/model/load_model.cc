// load_model: picks the HF-folder or GGUF route and attaches the tokenizer.
#include <filesystem>

#include "model/model.h"

namespace merlin {

namespace fs = std::filesystem;

Result<LoadedModel> load_model(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return Errf(Code::kNotFound, "{}: no such file or folder", path);
  if (fs::is_regular_file(path, ec)) {
    if (path.size() >= 5 && path.substr(path.size() - 5) == ".gguf") return load_gguf_model(path);
    return Errf(Code::kInvalidArgument, "{}: expected a model folder or a .gguf file", path);
  }
  LoadedModel m;
  MERLIN_TRY(w, load_hf_weights(path));
  MERLIN_TRY(tok, Tokenizer::from_hf_dir(path));
  if (tok->n_vocab() > w->config.n_vocab)
    return Errf(Code::kCorrupt, "{}: tokenizer has {} tokens but the model's vocab_size is {}", path,
                tok->n_vocab(), w->config.n_vocab);
  m.weights = w;
  m.tokenizer = tok;
  m.path = path;
  m.name = fs::path(path).lexically_normal().filename().string();
  if (m.name.empty()) m.name = fs::path(path).lexically_normal().parent_path().filename().string();
  return m;
}

}  // namespace merlin
