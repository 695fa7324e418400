// Helpers shared by the sub-commands.
#pragma once
#include <optional>
#include <string>

#include "model/model.h"

namespace merlin::cli {

// Default model when -m is not given: the shipped tiny-coder-target.
std::string default_model_path();
// Loads a model folder or .gguf, printing what it does; nullopt (message printed) on failure.
std::optional<LoadedModel> load_or_report(const std::string& path);

}  // namespace merlin::cli
