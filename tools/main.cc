// `merlin`: the command-line front end. Sub-commands live in tools/cmd_*.cc.
#include <cstdio>
#include <memory>
#include <vector>

#include "command.h"
#include "core/log.h"

namespace merlin::cli {

struct Entry {
  const char* name;
  const char* help;
  CommandSetup setup;
};

static std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}

CommandRegistrar::CommandRegistrar(const char* name, const char* help, CommandSetup setup) {
  registry().push_back({name, help, std::move(setup)});
}

}  // namespace merlin::cli

int main(int argc, char** argv) {
  using namespace merlin::cli;
  CLI::App app{"merlin: a fast, exact inference engine and server for code models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "merlin 0.1.0");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  std::vector<std::pair<CLI::App*, std::function<int()>>> subs;
  auto& reg = registry();
  std::sort(reg.begin(), reg.end(), [](const Entry& a, const Entry& b) { return std::string(a.name) < b.name; });
  for (auto& e : reg) {
    CLI::App* sub = app.add_subcommand(e.name, e.help);
    subs.emplace_back(sub, e.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  merlin::init_logging(verbose);
  for (auto& [sub, run] : subs)
    if (sub->parsed()) return run();
  return 1;
}
