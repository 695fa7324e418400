// Placeholder until the GGUF reader lands.
#include "model/model.h"

namespace merlin {
Result<LoadedModel> load_gguf_model(const std::string& path) {
  return Errf(Code::kUnsupported, "{}: GGUF loading is not built yet", path);
}
}  // namespace merlin
