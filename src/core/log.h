// Logging: spdlog's default logger, to stderr. One logger for the whole project.
#pragma once
#include <spdlog/spdlog.h>

namespace merlin {
void init_logging(bool verbose);
}
