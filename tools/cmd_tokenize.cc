// merlin tokenize: print the token ids of a text.
#include <fmt/core.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"

namespace merlin::cli {
namespace {

CommandRegistrar reg("tokenize", "Print the token ids of a text", [](CLI::App& app) {
  struct Args {
    std::string model = default_model_path(), text;
    bool json = false, bos = false, pieces = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("-m,--model", a->model, "Model folder or .gguf file");
  app.add_option("text", a->text, "Text to tokenize")->required();
  app.add_flag("--json", a->json, "Print a JSON array");
  app.add_flag("--bos", a->bos, "Prepend BOS when the model uses one");
  app.add_flag("--pieces", a->pieces, "Also print each token's text");
  return [a] {
    auto m = load_model(a->model);
    if (!m) {
      fmt::print(stderr, "error: {}\n", m.error().message);
      return 1;
    }
    Ids ids = m->tokenizer->encode(a->text, true, a->bos && m->tokenizer->info().add_bos);
    if (a->json) {
      fmt::print("{}\n", nlohmann::json(ids).dump());
    } else if (a->pieces) {
      for (TokenId id : ids) fmt::print("{:>6} {}\n", id, nlohmann::json(m->tokenizer->token_bytes(id)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else {
      fmt::print("{}\n", fmt::join(ids, " "));
    }
    return 0;
  };
});

}  // namespace
}  // namespace merlin::cli
