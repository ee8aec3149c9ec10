#include "inference/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <queue>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace lr::inference {

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

namespace {

// GGUF tokenizer.ggml.token_type values (SentencePiece's piece types).
constexpr int32_t kTypeNormal = 1;
constexpr int32_t kTypeControl = 3;
constexpr int32_t kTypeUserDefined = 4;
constexpr int32_t kTypeByte = 6;

constexpr int32_t kDead = std::numeric_limits<int32_t>::min();
constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // "▁", SentencePiece's space

// Split patterns of the byte-level BPE pre-tokenizers, as the models' tokenizer.json files define them. Each list is
// applied in order, each pattern to the pieces the previous one left (matches and the text between them both become
// pieces).
const char* const kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kTekken =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kDeepseekLlmLetters =
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+";

struct PreTokenizer {
  const char* name;
  std::vector<std::string> patterns;
  bool ignore_merges;
};

// tokenizer.ggml.pre values (as llama.cpp's converter writes them) and their split patterns.
std::optional<PreTokenizer> LookupPreTokenizer(std::string_view pre) {
  if (pre == "gpt2" || pre == "gpt-2" || pre == "default" || pre == "phi-2" || pre == "olmo" || pre == "jais")
    return PreTokenizer{"gpt2", {kGpt2}, false};
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" || pre == "codeshell")
    return PreTokenizer{"smollm", {R"(\p{N})", kGpt2}, false};
  if (pre == "llama-bpe" || pre == "llama3" || pre == "dbrx" || pre == "smaug-bpe")
    return PreTokenizer{"llama-bpe", {kLlama3}, true};
  if (pre == "qwen2" || pre == "stablelm2" || pre == "deepseek-r1-qwen") return PreTokenizer{"qwen2", {kQwen2}, false};
  if (pre == "tekken") return PreTokenizer{"tekken", {kTekken}, false};
  if (pre == "deepseek-llm")
    return PreTokenizer{
        "deepseek-llm",
        {R"([\r\n])", kDeepseekLlmLetters, "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
         R"(\s+$)", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", R"(\p{N}+)"},
        false};
  if (pre == "deepseek-v3")
    return PreTokenizer{
        "deepseek-v3",
        {R"(\p{N}{1,3})", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
         R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
        false};
  return std::nullopt;
}

// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for themselves, the
// others for U+0100 onwards in byte order. Returns, per code point below 0x144, the byte it stands for or -1.
std::vector<int> ByteLevelDecodeTable() {
  std::vector<int> table(0x144, -1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[printable ? b : next++] = b;
  }
  return table;
}

// Decodes one UTF-8 character at s[i]; returns its length (1 for an invalid byte) and sets *cp (-1 if invalid).
size_t Utf8Char(std::string_view s, size_t i, int* cp) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    *cp = -1;
    return 1;
  }
  int v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) {
    unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d >> 6) != 2) {
      *cp = -1;
      return 1;
    }
    v = (v << 6) | (d & 0x3F);
  }
  *cp = v;
  return len;
}

// A byte-level token's text back to the bytes it stands for; nullopt if a character is outside the map.
std::optional<std::string> ByteLevelToBytes(std::string_view text, const std::vector<int>& table) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    int cp;
    i += Utf8Char(text, i, &cp);
    if (cp < 0 || cp >= static_cast<int>(table.size()) || table[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(table[cp]));
  }
  return out;
}

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.substr(i, from.size()) == from) {
      out.append(to);
      i += from.size();
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

Result<std::shared_ptr<const Tokenizer::Regex>> Tokenizer::CompileRegex(const std::string& pattern,
                                                                        const std::string& where) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return InvalidArgument(where + ": split pattern does not compile at offset " + std::to_string(err_offset) + ": " +
                           reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  auto r = std::make_shared<Tokenizer::Regex>();
  r->code = code;
  return std::shared_ptr<const Tokenizer::Regex>(std::move(r));
}

Result<Tokenizer> Tokenizer::FromGguf(const GgufFile& gguf) {
  const std::string& path = gguf.path();
  LR_ASSIGN_OR_RETURN(std::string model, gguf.GetString("tokenizer.ggml.model"));
  Tokenizer t;
  if (model == "gpt2") {
    t.kind_ = Kind::kByteBpe;
  } else if (model == "llama") {
    t.kind_ = Kind::kSentencePiece;
  } else {
    return Unsupported(path + ": tokenizer.ggml.model '" + model + "' (supported: gpt2, llama)");
  }
  LR_ASSIGN_OR_RETURN(std::vector<std::string> tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = tokens.size();
  if (n == 0 || n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return Corrupt(path + ": tokenizer.ggml.tokens has " + std::to_string(n) + " entries");
  std::vector<int32_t> types(n, kTypeNormal);
  if (gguf.Has("tokenizer.ggml.token_type")) {
    LR_ASSIGN_OR_RETURN(types, gguf.GetI32Array("tokenizer.ggml.token_type"));
    if (types.size() != n)
      return Corrupt(path + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries, expected " +
                     std::to_string(n) + " (one per token)");
  }
  auto optional_id = [&](const char* key, int32_t* id) -> Status {
    if (!gguf.Has(key)) return Status::Ok();
    LR_ASSIGN_OR_RETURN(uint32_t v, gguf.GetU32(key));
    if (v >= n)
      return Corrupt(path + ": " + key + " is " + std::to_string(v) + ", outside the vocabulary of " +
                     std::to_string(n));
    *id = static_cast<int32_t>(v);
    return Status::Ok();
  };
  LR_RETURN_IF_ERROR(optional_id("tokenizer.ggml.bos_token_id", &t.bos_));
  LR_RETURN_IF_ERROR(optional_id("tokenizer.ggml.eos_token_id", &t.eos_));
  t.add_bos_ = t.kind_ == Kind::kSentencePiece;
  if (gguf.Has("tokenizer.ggml.add_bos_token")) {
    LR_ASSIGN_OR_RETURN(t.add_bos_, gguf.GetBool("tokenizer.ggml.add_bos_token"));
  }

  t.pieces_.resize(n);
  t.control_.assign(n, 0);
  std::fill(std::begin(t.byte_ids_), std::end(t.byte_ids_), -1);
  std::vector<bool> recognised(n, false);  // special tokens matched in text
  for (size_t i = 0; i < n; ++i) {
    t.control_[i] = types[i] == kTypeControl;
    recognised[i] = types[i] == kTypeControl || types[i] == kTypeUserDefined;
  }

  if (t.kind_ == Kind::kByteBpe) {
    std::string pre = "gpt2";
    if (gguf.Has("tokenizer.ggml.pre")) {
      LR_ASSIGN_OR_RETURN(pre, gguf.GetString("tokenizer.ggml.pre"));
    }
    std::optional<PreTokenizer> p = LookupPreTokenizer(pre);
    if (!p) return Unsupported(path + ": tokenizer.ggml.pre '" + pre + "' is not a pre-tokenizer this build knows");
    for (const std::string& pattern : p->patterns) {
      LR_ASSIGN_OR_RETURN(auto re, CompileRegex(pattern, path + ": tokenizer.ggml.pre '" + pre + "'"));
      t.split_.push_back(std::move(re));
    }
    t.ignore_merges_ = p->ignore_merges;

    const std::vector<int> table = ByteLevelDecodeTable();
    std::unordered_map<std::string_view, int32_t> text_to_id;  // the token texts as stored, for the merges
    text_to_id.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      text_to_id.emplace(tokens[i], static_cast<int32_t>(i));
      std::optional<std::string> bytes;
      if (types[i] == kTypeNormal) bytes = ByteLevelToBytes(tokens[i], table);
      t.pieces_[i] = bytes ? *bytes : tokens[i];
      if (types[i] == kTypeNormal && bytes) {
        t.piece_to_id_.emplace(*bytes, static_cast<int32_t>(i));
        if (bytes->size() == 1) t.byte_ids_[static_cast<unsigned char>((*bytes)[0])] = static_cast<int32_t>(i);
      }
    }
    LR_ASSIGN_OR_RETURN(std::vector<std::string> merges, gguf.GetStringArray("tokenizer.ggml.merges"));
    t.merges_.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& line = merges[r];
      size_t sp = line.size() > 1 ? line.find(' ', 1) : std::string::npos;
      auto bad = [&](const std::string& why) {
        return Corrupt(path + ": tokenizer.ggml.merges entry " + std::to_string(r) + " '" + line + "' " + why);
      };
      if (sp == std::string::npos) return bad("is not two tokens separated by a space");
      std::string_view left(line.data(), sp), right(line.data() + sp + 1, line.size() - sp - 1);
      auto l = text_to_id.find(left), rr = text_to_id.find(right);
      auto m = text_to_id.find(std::string(left) + std::string(right));
      if (l == text_to_id.end() || rr == text_to_id.end() || m == text_to_id.end())
        return bad("names a token missing from tokenizer.ggml.tokens");
      t.merges_.emplace(PairKey(l->second, rr->second), Merge{static_cast<int32_t>(r), m->second});
    }
  } else {
    t.add_space_prefix_ = true;
    if (gguf.Has("tokenizer.ggml.add_space_prefix")) {
      LR_ASSIGN_OR_RETURN(t.add_space_prefix_, gguf.GetBool("tokenizer.ggml.add_space_prefix"));
    }
    LR_ASSIGN_OR_RETURN(std::vector<float> scores, gguf.GetF32Array("tokenizer.ggml.scores"));
    if (scores.size() != n)
      return Corrupt(path + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) + " entries, expected " +
                     std::to_string(n));
    for (size_t i = 0; i < n; ++i) {
      const std::string& text = tokens[i];
      if (types[i] == kTypeByte) {
        unsigned v = 0;
        if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>' ||
            std::sscanf(text.c_str() + 3, "%2x", &v) != 1)
          return Corrupt(path + ": byte token " + std::to_string(i) + " is '" + text + "', expected <0xNN>");
        t.byte_ids_[v] = static_cast<int32_t>(i);
        t.pieces_[i] = std::string(1, static_cast<char>(v));
      } else if (types[i] == kTypeNormal || types[i] == kTypeUserDefined) {
        t.pieces_[i] = ReplaceAll(text, kSpaceMark, " ");
      } else {
        t.pieces_[i] = text;
      }
      if (types[i] == kTypeNormal) t.piece_to_id_.emplace(text, static_cast<int32_t>(i));
    }
    // Rank = position in descending score order; equal scores share a rank, so ties go to the leftmost pair.
    std::vector<int32_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
    std::vector<int32_t> rank_of(n, 0);
    for (size_t k = 1; k < n; ++k)
      rank_of[order[k]] = scores[order[k]] == scores[order[k - 1]] ? rank_of[order[k - 1]] : static_cast<int32_t>(k);
    std::vector<bool> mergeable(n);
    for (size_t i = 0; i < n; ++i) mergeable[i] = types[i] == kTypeNormal;
    t.AddMergesBySplitting(tokens, rank_of, mergeable);
  }
  for (size_t i = 0; i < n; ++i)
    if (recognised[i] && !t.pieces_[i].empty()) t.specials_.push_back(static_cast<int32_t>(i));
  t.IndexSpecials();
  return t;
}

Result<Tokenizer> Tokenizer::FromTekkenJson(const std::string& path) {
  LR_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt(path + ": not valid JSON");
  auto field_error = [&](const std::string& field, const std::string& expected) {
    return Corrupt(path + ": field '" + field + "' " + expected);
  };
  if (!j.is_object() || !j.contains("config") || !j["config"].is_object()) return field_error("config", "missing");
  const nlohmann::json& config = j["config"];
  if (!config.contains("pattern") || !config["pattern"].is_string())
    return field_error("config.pattern", "must be a string");
  for (const char* key : {"default_vocab_size", "default_num_special_tokens"})
    if (!config.contains(key) || !config[key].is_number_unsigned())
      return field_error(std::string("config.") + key, "must be a non-negative integer");
  const size_t vocab_size = config["default_vocab_size"].get<size_t>();
  const size_t num_special = config["default_num_special_tokens"].get<size_t>();
  if (!j.contains("vocab") || !j["vocab"].is_array()) return field_error("vocab", "must be an array");
  const nlohmann::json& vocab = j["vocab"];
  if (num_special < 3 || vocab_size <= num_special + 256 || vocab_size - num_special > vocab.size() ||
      vocab_size > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return field_error("config.default_vocab_size", "must exceed default_num_special_tokens + 256 and fit the " +
                                                        std::to_string(vocab.size()) + " vocab entries");
  const size_t inner = vocab_size - num_special;

  Tokenizer t;
  t.kind_ = Kind::kTekken;
  t.add_bos_ = true;
  LR_ASSIGN_OR_RETURN(auto re, CompileRegex(config["pattern"].get<std::string>(), path + ": config.pattern"));
  t.split_.push_back(std::move(re));
  t.pieces_.resize(vocab_size);
  t.control_.assign(vocab_size, 0);
  std::fill(std::begin(t.byte_ids_), std::end(t.byte_ids_), -1);

  // Special tokens: the file's list, or mistral-common's list for files from before it was stored (v3 to v7).
  std::vector<std::pair<std::string, bool>> specials;
  if (j.contains("special_tokens")) {
    const nlohmann::json& list = j["special_tokens"];
    if (!list.is_array()) return field_error("special_tokens", "must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const nlohmann::json& s = list[i];
      std::string where = "special_tokens[" + std::to_string(i) + "]";
      if (!s.is_object() || !s.contains("rank") || !s["rank"].is_number_unsigned() || s["rank"].get<size_t>() != i ||
          !s.contains("token_str") || !s["token_str"].is_string())
        return field_error(where, "must be {rank: " + std::to_string(i) + ", token_str: string, is_control: bool}");
      bool is_control = s.contains("is_control") && s["is_control"].is_boolean() ? s["is_control"].get<bool>() : true;
      specials.emplace_back(s["token_str"].get<std::string>(), is_control);
    }
  } else {
    for (const char* s : {"<unk>",
                          "<s>",
                          "</s>",
                          "[INST]",
                          "[/INST]",
                          "[AVAILABLE_TOOLS]",
                          "[/AVAILABLE_TOOLS]",
                          "[TOOL_RESULTS]",
                          "[/TOOL_RESULTS]",
                          "[TOOL_CALLS]",
                          "[IMG]",
                          "<pad>",
                          "[IMG_BREAK]",
                          "[IMG_END]",
                          "[PREFIX]",
                          "[MIDDLE]",
                          "[SUFFIX]",
                          "[SYSTEM_PROMPT]",
                          "[/SYSTEM_PROMPT]",
                          "[TOOL_CONTENT]"})
      specials.emplace_back(s, true);
  }
  if (specials.size() > num_special)
    return field_error("special_tokens", "has " + std::to_string(specials.size()) + " entries, more than " +
                                             "default_num_special_tokens " + std::to_string(num_special));
  for (size_t i = specials.size(); i < num_special; ++i)
    specials.emplace_back("<SPECIAL_" + std::to_string(i) + ">", true);
  for (size_t i = 0; i < num_special; ++i) {
    t.pieces_[i] = specials[i].first;
    t.control_[i] = specials[i].second;
    t.specials_.push_back(static_cast<int32_t>(i));
    if (specials[i].first == "<s>") t.bos_ = static_cast<int32_t>(i);
    if (specials[i].first == "</s>") t.eos_ = static_cast<int32_t>(i);
  }

  for (size_t r = 0; r < inner; ++r) {
    const nlohmann::json& e = vocab[r];
    std::string where = "vocab[" + std::to_string(r) + "]";
    if (!e.is_object() || !e.contains("rank") || !e["rank"].is_number_unsigned() || e["rank"].get<size_t>() != r ||
        !e.contains("token_bytes") || !e["token_bytes"].is_string())
      return field_error(where, "must be {rank: " + std::to_string(r) + ", token_bytes: base64 string}");
    const std::string& b64 = e["token_bytes"].get_ref<const std::string&>();
    std::string bytes;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : b64) {
      int v = c >= 'A' && c <= 'Z'   ? c - 'A'
              : c >= 'a' && c <= 'z' ? c - 'a' + 26
              : c >= '0' && c <= '9' ? c - '0' + 52
              : c == '+'             ? 62
              : c == '/'             ? 63
              : c == '='             ? -2
                                     : -1;
      if (v == -1) return field_error(where + ".token_bytes", "is not base64");
      if (v == -2) break;
      acc = (acc << 6) | static_cast<uint32_t>(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        bytes.push_back(static_cast<char>((acc >> bits) & 0xFF));
      }
    }
    if (bytes.empty() || (r < 256 && (bytes.size() != 1 || static_cast<unsigned char>(bytes[0]) != r)))
      return field_error(where + ".token_bytes", r < 256 ? "must be the single byte " + std::to_string(r) : "is empty");
    const int32_t id = static_cast<int32_t>(num_special + r);
    if (!t.piece_to_id_.emplace(bytes, id).second)
      return field_error(where + ".token_bytes", "repeats an earlier entry");
    if (r < 256) t.byte_ids_[r] = id;
    t.pieces_[id] = std::move(bytes);
  }
  std::vector<int32_t> rank_of(vocab_size, 0);
  std::vector<bool> mergeable(vocab_size, false);
  for (size_t id = num_special; id < vocab_size; ++id) {
    rank_of[id] = static_cast<int32_t>(id - num_special);
    mergeable[id] = true;
  }
  t.AddMergesBySplitting(t.pieces_, rank_of, mergeable);
  t.IndexSpecials();
  return t;
}

void Tokenizer::AddMergesBySplitting(const std::vector<std::string>& texts, const std::vector<int32_t>& rank_of,
                                     const std::vector<bool>& mergeable) {
  for (size_t id = 0; id < texts.size(); ++id) {
    if (!mergeable[id]) continue;
    const std::string& s = texts[id];
    for (size_t k = 1; k < s.size(); ++k) {
      auto l = piece_to_id_.find(s.substr(0, k));
      if (l == piece_to_id_.end()) continue;
      auto r = piece_to_id_.find(s.substr(k));
      if (r == piece_to_id_.end()) continue;
      merges_.emplace(PairKey(l->second, r->second), Merge{rank_of[id], static_cast<int32_t>(id)});
    }
  }
}

void Tokenizer::IndexSpecials() {
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return pieces_[a].size() > pieces_[b].size(); });
  std::fill(std::begin(special_first_byte_), std::end(special_first_byte_), false);
  for (int32_t id : specials_) special_first_byte_[static_cast<unsigned char>(pieces_[id][0])] = true;
}

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < control_.size() && control_[id] != 0;
}

std::optional<int32_t> Tokenizer::FindSpecial(std::string_view text) const {
  for (int32_t id : specials_)
    if (pieces_[id] == text) return id;
  return std::nullopt;
}

std::string Tokenizer::TokenPiece(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return {};
  return pieces_[id];
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::string out;
  bool first_text = true;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) continue;
    std::string_view p = pieces_[id];
    if (kind_ == Kind::kSentencePiece && add_space_prefix_ && first_text && !IsControl(id)) {
      if (!p.empty() && p[0] == ' ') p.remove_prefix(1);
      first_text = false;
    }
    out.append(p);
  }
  return out;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t found = -1;
    if (!special_first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    for (int32_t id : specials_) {
      if (!parse_special && control_[id]) continue;
      const std::string& s = pieces_[id];
      if (s[0] == text[pos] && text.substr(pos, s.size()) == s) {
        found = id;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    if (pos > start) EncodeText(text.substr(start, pos - start), start == 0, &out);
    out.push_back(found);
    pos += pieces_[found].size();
    start = pos;
  }
  if (start < text.size()) EncodeText(text.substr(start), start == 0, &out);
  return out;
}

void Tokenizer::EncodeText(std::string_view text, bool at_start, std::vector<int32_t>* out) const {
  if (kind_ == Kind::kSentencePiece) {
    AppendSentencePiece(text, at_start, out);
    return;
  }
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  for (const auto& re : split_) {
    next.clear();
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    for (std::string_view p : pieces) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(p.data());
      size_t last = 0, at = 0;
      while (at < p.size()) {
        int rc = pcre2_match(re->code, subject, p.size(), at, 0, md, nullptr);
        if (rc < 0) break;
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s > last) next.push_back(p.substr(last, s - last));
        if (e > s) {
          next.push_back(p.substr(s, e - s));
          last = at = e;
        } else {  // an empty match: step over one character
          int cp;
          at = s + Utf8Char(p, s, &cp);
          last = s;
        }
      }
      if (last < p.size()) next.push_back(p.substr(last));
    }
    pcre2_match_data_free(md);
    pieces.swap(next);
  }
  std::vector<int32_t> ids;
  for (std::string_view p : pieces) {
    if (ignore_merges_) {
      auto it = piece_to_id_.find(std::string(p));
      if (it != piece_to_id_.end()) {
        out->push_back(it->second);
        continue;
      }
    }
    ids.clear();
    for (char c : p) {
      int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) ids.push_back(id);  // a vocabulary without this byte cannot represent it
    }
    MergeSymbols(&ids);
    out->insert(out->end(), ids.begin(), ids.end());
  }
}

void Tokenizer::AppendSentencePiece(std::string_view text, bool at_start, std::vector<int32_t>* out) const {
  std::string s = (add_space_prefix_ && at_start) ? std::string(kSpaceMark) : std::string();
  s += ReplaceAll(text, " ", kSpaceMark);
  // Initial symbols are characters; a character outside the vocabulary (-1) never merges and falls back to bytes.
  std::vector<int32_t> ids;
  std::vector<std::string_view> chars;
  for (size_t i = 0; i < s.size();) {
    int cp;
    size_t len = Utf8Char(s, i, &cp);
    std::string_view c(s.data() + i, len);
    auto it = piece_to_id_.find(std::string(c));
    ids.push_back(it == piece_to_id_.end() ? -1 : it->second);
    chars.push_back(c);
    i += len;
  }
  std::vector<int32_t> initial = ids;
  MergeSymbols(&ids);
  // MergeSymbols keeps -1 symbols in order; map each back to its character's bytes.
  size_t unknown = 0;
  for (int32_t id : ids) {
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    while (initial[unknown] >= 0) ++unknown;
    AppendBytes(chars[unknown++], out);
  }
}

void Tokenizer::AppendBytes(std::string_view bytes, std::vector<int32_t>* out) const {
  for (char c : bytes) {
    int32_t id = byte_ids_[static_cast<unsigned char>(c)];
    if (id >= 0) out->push_back(id);
  }
}

void Tokenizer::MergeSymbols(std::vector<int32_t>* ids_ptr) const {
  std::vector<int32_t>& ids = *ids_ptr;
  const int n = static_cast<int>(ids.size());
  if (n < 2) return;
  std::vector<int> next(n), prev(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;
    int32_t left_id, right_id, result;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  auto consider = [&](int left) {
    if (left < 0) return;
    int right = next[left];
    if (right < 0 || ids[left] < 0 || ids[right] < 0) return;
    auto it = merges_.find(PairKey(ids[left], ids[right]));
    if (it != merges_.end()) queue.push({it->second.rank, left, ids[left], ids[right], it->second.result});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    int right = next[c.left];
    if (ids[c.left] != c.left_id || right < 0 || ids[right] != c.right_id) continue;  // stale
    ids[c.left] = c.result;
    ids[right] = kDead;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    consider(prev[c.left]);
    consider(c.left);
  }
  ids.erase(std::remove(ids.begin(), ids.end(), kDead), ids.end());
}

}  // namespace lr::inference
