// Jinja2-subset interpreter for Hugging Face chat templates, public API. The stages live in
// their own files around one internal header (chat_template_ast.h): lexer
// (chat_template_lexer.cc), recursive descent parser to an immutable AST
// (chat_template_parser.cc) and tree-walking evaluator (chat_template_eval.cc); Python value
// semantics and the builtins are in chat_template_pyops.cc and chat_template_builtins.cc.
// Errors inside are thrown as TemplateError and converted to Status here and in
// jinja::render, so nothing escapes.
#include "tokenizer/chat_template.h"

#include "tokenizer/chat_template_ast.h"

namespace merlin {
namespace jinja {
namespace {

class ChatTemplateImpl final : public ChatTemplate {
 public:
  ChatTemplateImpl(Body body, ChatTemplateOptions options)
      : body_(std::move(body)), options_(std::move(options)) {}

  Result<std::string> render(const nlohmann::json& context) const override {
    return render_ordered(nlohmann::ordered_json(context));
  }

  Result<std::string> render_ordered(const nlohmann::ordered_json& context) const override {
    return jinja::render(body_, options_, context);
  }

 private:
  Body body_;
  ChatTemplateOptions options_;
};

}  // namespace
}  // namespace jinja

Result<std::shared_ptr<const ChatTemplate>> ChatTemplate::parse(const std::string& source) {
  return parse(source, ChatTemplateOptions{});
}

Result<std::shared_ptr<const ChatTemplate>> ChatTemplate::parse(const std::string& source,
                                                               ChatTemplateOptions options) {
  try {
    auto body = jinja::parse(jinja::lex(source));
    return std::make_shared<const jinja::ChatTemplateImpl>(std::move(body), std::move(options));
  } catch (const jinja::TemplateError& e) {
    return Errf(Code::kInvalidArgument, "chat template line {}: {}", e.line, e.message);
  } catch (const std::exception& e) {
    return Errf(Code::kInternal, "chat template: {}", e.what());
  }
}

}  // namespace merlin
