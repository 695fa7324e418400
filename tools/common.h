// Helpers shared by the sub-commands.
#pragma once
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "core/dtype.h"
#include "model/model.h"

namespace merlin::cli {

// Default model when -m is not given: the shipped tiny-coder-target.
std::string default_model_path();
// Loads a model folder or .gguf, printing what it does; nullopt (message printed) on failure.
std::optional<LoadedModel> load_or_report(const std::string& path);

// --kv-type: only the names kv_type_from_name knows pass the parser; anything else is a usage
// error naming the value and the supported names (non-zero exit), never a fallback to f32.
CLI::Option* add_kv_type_option(CLI::App& app, std::string& value, const std::string& help);
// The KV cache type `name` for model `c`, or nullopt after printing "error: ..." when the name is
// unknown or the model cannot store its cache that way (q8_0 needs head_dim % 32 == 0).
std::optional<DType> kv_type_or_report(const std::string& name, const ModelConfig& c);

}  // namespace merlin::cli
