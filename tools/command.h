// Sub-command registry of the `merlin` tool: each tools/cmd_*.cc registers itself with a static
// CommandRegistrar, so adding a command touches no other file.
#pragma once
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace merlin::cli {

// `setup` adds the command's flags to `app` and returns the function to run after parsing
// (its return value is the process exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App& app)>;

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* help, CommandSetup setup);
};

}  // namespace merlin::cli
