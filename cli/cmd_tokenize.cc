// `leanrotor tokenize`: shows how a model's tokenizer splits a text.
#include <cstdio>
#include <memory>
#include <string>

#include "base/file.h"
#include "cli/command.h"
#include "inference/gguf.h"
#include "inference/tokenizer.h"

namespace lr::cli {
namespace {

struct TokenizeFlags {
  std::string model;
  std::string prompt;
  std::string file;
  bool ids_only = false;
  bool no_special = false;
};

// Length of the complete UTF-8 character at s[i], or 0 when the bytes there are not one.
size_t Utf8Length(const std::string& s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k)
    if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return 0;
  return len;
}

// A piece as a quoted C-style string: printable ASCII and whole UTF-8 characters as they are, other bytes (control
// characters, part of a character split across tokens) escaped.
std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = Utf8Length(s, i);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (len == 0 || c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
      len = 1;
    } else {
      out.append(s, i, len);
    }
    i += len;
  }
  return out + "\"";
}

int RunTokenize(const TokenizeFlags& f) {
  std::string text = f.prompt;
  if (!f.file.empty()) {
    Result<std::string> r = ReadFile(f.file);
    if (!r.ok()) {
      std::fprintf(stderr, "leanrotor tokenize: %s\n", r.status().ToString().c_str());
      return 1;
    }
    text = std::move(r).value();
  }
  bool tekken = f.model.size() >= 5 && f.model.compare(f.model.size() - 5, 5, ".json") == 0;
  Result<inference::Tokenizer> t = [&]() -> Result<inference::Tokenizer> {
    if (tekken) return inference::Tokenizer::FromTekkenJson(f.model);
    LR_ASSIGN_OR_RETURN(inference::GgufFile gguf, inference::GgufFile::Open(f.model));
    return inference::Tokenizer::FromGguf(gguf);
  }();
  if (!t.ok()) {
    std::fprintf(stderr, "leanrotor tokenize: %s\n", t.status().ToString().c_str());
    return t.status().code() == StatusCode::kNotFound ? 2 : 1;
  }
  std::vector<int32_t> ids = t->Encode(text, !f.no_special);
  if (f.ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i == 0 ? "%d" : " %d", ids[i]);
    std::printf("\n");
    return 0;
  }
  for (int32_t id : ids)
    std::printf("%7d  %s%s\n", id, Quoted(t->TokenPiece(id)).c_str(), t->IsControl(id) ? "  (control)" : "");
  std::printf("%zu tokens, %zu bytes\n", ids.size(), text.size());
  return 0;
}

}  // namespace

void AddTokenizeCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* sub = app.add_subcommand("tokenize", "Show the token ids and pieces a model's tokenizer makes of a text");
  sub->add_option("-m,--model", flags->model, "GGUF model file, or a Mistral tekken.json")->required();
  auto* prompt = sub->add_option("-p,--prompt", flags->prompt, "the text to tokenize");
  auto* file = sub->add_option("-f,--file", flags->file, "read the text from this file instead");
  prompt->excludes(file);
  sub->add_flag("--ids", flags->ids_only, "print only the ids, space-separated, on one line");
  sub->add_flag("--no-special", flags->no_special,
                "treat control-token text such as <|im_start|> as plain text instead of its token");
  commands.Add(sub, [flags] { return RunTokenize(*flags); });
}

}  // namespace lr::cli
