#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace merlin {
void init_logging(bool verbose) {
  auto logger = spdlog::stderr_color_mt("merlin");
  logger->set_pattern("%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
}
}  // namespace merlin
