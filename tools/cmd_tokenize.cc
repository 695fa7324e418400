// merlin tokenize: print the token ids of a text. Only the tokenizer is loaded (tokenizer.json of a
// folder, or the tokenizer.ggml.* metadata of a .gguf), so vocabulary-only GGUF files of any
// architecture work, as with llama.cpp's tokenize tool.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "model/gguf.h"

namespace merlin::cli {
namespace {

Result<std::shared_ptr<const Tokenizer>> load_tokenizer(const std::string& path) {
  if (std::filesystem::is_directory(path)) return Tokenizer::from_hf_dir(path);
  MERLIN_TRY(g, open_gguf(path));
  MERLIN_TRY(vocab, gguf_tokenizer_vocab(g));
  return Tokenizer::from_vocab(std::move(vocab), path);
}

CommandRegistrar reg("tokenize", "Print the token ids of a text", [](CLI::App& app) {
  struct Args {
    std::string model = default_model_path(), text, file;
    bool json = false, bos = false, pieces = false, no_parse_special = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("-m,--model", a->model,
                 "Model folder (tokenizer.json) or .gguf file; a vocabulary-only .gguf is enough")
      ->capture_default_str();
  app.add_option("text", a->text, "Text to tokenize (or use -f)");
  app.add_option("-f,--file", a->file, "Read the text to tokenize from this file, byte for byte");
  app.add_flag("--json", a->json, "Print a JSON array of ids instead of space-separated ids");
  app.add_flag("--bos", a->bos, "Prepend BOS when the model's tokenizer adds one (add_bos_token)");
  app.add_flag("--pieces", a->pieces, "Print one token per line: its id and its bytes as a JSON string");
  app.add_flag("--no-parse-special", a->no_parse_special,
               "Tokenize special-token text such as <|endoftext|> as plain text");
  return [a] {
    std::string text = a->text;
    if (!a->file.empty()) {
      if (!a->text.empty()) {
        fmt::print(stderr, "error: give the text or -f FILE, not both\n");
        return 1;
      }
      std::ifstream f(a->file, std::ios::binary);
      if (!f) {
        fmt::print(stderr, "error: {}: cannot open\n", a->file);
        return 1;
      }
      std::ostringstream ss;
      ss << f.rdbuf();
      text = ss.str();
    }
    auto tok = load_tokenizer(a->model);
    if (!tok) {
      fmt::print(stderr, "error: {}\n", tok.error().message);
      return 1;
    }
    const Tokenizer& t = **tok;
    Ids ids = t.encode(text, !a->no_parse_special, a->bos && t.info().add_bos);
    if (a->json) {
      fmt::print("{}\n", nlohmann::json(ids).dump());
    } else if (a->pieces) {
      for (TokenId id : ids)
        fmt::print("{:>6} {}\n", id,
                   nlohmann::json(t.token_bytes(id)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else {
      fmt::print("{}\n", fmt::join(ids, " "));
    }
    return 0;
  };
});

}  // namespace
}  // namespace merlin::cli
