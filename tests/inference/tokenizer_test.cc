#include "inference/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "inference/chat_format.h"
#include "tests/inference/gguf_writer.h"

namespace lr::inference {
namespace {

using test_util::GgufWriter;
using Ids = std::vector<int32_t>;

Tokenizer Load(std::vector<uint8_t> bytes) {
  auto f = GgufFile::FromBytes(std::move(bytes), "tiny.gguf");
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  auto t = Tokenizer::FromGguf(*f);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

// A byte-level BPE vocabulary small enough to follow by hand ("Ġ" is GPT-2's stand-in for the space byte).
std::vector<uint8_t> TinyByteLevel(std::string_view pre) {
  GgufWriter w;
  w.Header(0, 6);
  w.KeyString("tokenizer.ggml.model", "gpt2");
  w.KeyString("tokenizer.ggml.pre", pre);
  w.KeyStrings("tokenizer.ggml.tokens", {"<|endoftext|>", "<|im_start|>", "a", "b", "c", "\xc4\xa0", "ab", "bc",
                                         "\xc4\xa0"
                                         "a",
                                         "abc", "1", "2", "aa", "12"});
  w.KeyI32s("tokenizer.ggml.token_type", {3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  w.KeyStrings("tokenizer.ggml.merges", {"b c", "a b", "\xc4\xa0 a", "a bc", "a a", "1 2"});
  w.KeyU32("tokenizer.ggml.eos_token_id", 0);
  return w.bytes;
}

TEST(TokenizerTest, ByteLevelMergesByRank) {
  Tokenizer t = Load(TinyByteLevel("gpt2"));
  EXPECT_EQ(t.vocab_size(), 14);
  EXPECT_EQ(t.eos(), 0);
  EXPECT_EQ(t.bos(), -1);
  EXPECT_EQ(t.Encode("abc", true), (Ids{9}));          // b+c (rank 0) first, then a+bc
  EXPECT_EQ(t.Encode("ab ab", true), (Ids{6, 5, 6}));  // " ab": a+b (rank 1) before Ġ+a (rank 2)
  EXPECT_EQ(t.Encode("aaa", true), (Ids{12, 2}));      // equal ranks: the leftmost pair merges
  EXPECT_EQ(t.Encode("12", true), (Ids{13}));
  EXPECT_EQ(t.Encode("", true), (Ids{}));
  EXPECT_EQ(t.Decode(Ids{6, 5, 6}), "ab ab");
  EXPECT_EQ(t.TokenPiece(8), " a");
}

TEST(TokenizerTest, PreTokenizerSplitsDigits) {
  Tokenizer t = Load(TinyByteLevel("smollm"));  // digits are split one by one before BPE
  EXPECT_EQ(t.Encode("12", true), (Ids{10, 11}));
}

TEST(TokenizerTest, ControlTokensOnlyWhenAsked) {
  Tokenizer t = Load(TinyByteLevel("gpt2"));
  EXPECT_EQ(t.Encode("<|im_start|>abc<|endoftext|>", true), (Ids{1, 9, 0}));
  Ids plain = t.Encode("<|im_start|>abc", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_TRUE(t.IsControl(1));
  EXPECT_FALSE(t.IsControl(9));
  EXPECT_FALSE(t.IsControl(99));
  EXPECT_EQ(t.FindSpecial("<|im_start|>"), 1);
  EXPECT_EQ(t.FindSpecial("abc"), std::nullopt);
  EXPECT_EQ(t.Decode(Ids{1, 9}), "<|im_start|>abc");
}

// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then scored pieces.
std::vector<uint8_t> TinySentencePiece(bool add_space_prefix) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens.push_back(name);
    types.push_back(6);
    scores.push_back(0);
  }
  const std::pair<const char*, float> pieces[] = {{"\xe2\x96\x81", -1},
                                                  {"a", -2},
                                                  {"b", -3},
                                                  {"c", -4},
                                                  {"ab", -0.5f},
                                                  {"\xe2\x96\x81"
                                                   "a",
                                                   -1.5f},
                                                  {"\xe2\x96\x81"
                                                   "ab",
                                                   -2.5f}};
  for (const auto& [p, s] : pieces) {
    tokens.push_back(p);
    types.push_back(1);
    scores.push_back(s);
  }
  GgufWriter w;
  w.Header(0, 7);
  w.KeyString("tokenizer.ggml.model", "llama");
  w.KeyStrings("tokenizer.ggml.tokens", tokens);
  w.KeyF32s("tokenizer.ggml.scores", scores);
  w.KeyI32s("tokenizer.ggml.token_type", types);
  w.KeyU32("tokenizer.ggml.bos_token_id", 1);
  w.KeyU32("tokenizer.ggml.eos_token_id", 2);
  w.KeyBool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  return w.bytes;
}

constexpr int32_t kSpmSpace = 259, kSpmC = 262, kSpmAb = 263, kSpmSpaceA = 264, kSpmSpaceAb = 265;
constexpr int32_t SpmByte(int b) { return 3 + b; }

TEST(TokenizerTest, SentencePieceMergesByScore) {
  Tokenizer t = Load(TinySentencePiece(true));
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos(), 2);
  EXPECT_TRUE(t.add_bos());
  // "▁ab▁c": a+b (score -0.5) beats ▁+a (-1.5); then ▁+ab; "▁c" is no piece.
  Ids ids = t.Encode("ab c", true);
  EXPECT_EQ(ids, (Ids{kSpmSpaceAb, kSpmSpace, kSpmC}));
  EXPECT_EQ(t.Decode(ids), "ab c");
  // A character outside the vocabulary falls back to its UTF-8 bytes.
  ids = t.Encode("a\xc3\xa9", true);
  EXPECT_EQ(ids, (Ids{kSpmSpaceA, SpmByte(0xC3), SpmByte(0xA9)}));
  EXPECT_EQ(t.Decode(ids), "a\xc3\xa9");
  EXPECT_EQ(t.Encode("<s>ab", true), (Ids{1, kSpmAb}));
  EXPECT_EQ(t.TokenPiece(SpmByte('A')), "A");
}

TEST(TokenizerTest, SentencePieceWithoutSpacePrefix) {
  Tokenizer t = Load(TinySentencePiece(false));
  EXPECT_EQ(t.Encode("ab", true), (Ids{kSpmAb}));
  EXPECT_EQ(t.Decode(Ids{kSpmSpaceAb}), " ab");
}

Status LoadError(std::vector<uint8_t> bytes) {
  auto f = GgufFile::FromBytes(std::move(bytes), "bad.gguf");
  if (!f.ok()) return f.status();
  auto t = Tokenizer::FromGguf(*f);
  return t.status();
}

TEST(TokenizerTest, RejectsBadMetadata) {
  GgufWriter bert;
  bert.Header(0, 2).KeyString("tokenizer.ggml.model", "bert").KeyStrings("tokenizer.ggml.tokens", {"a"});
  Status s = LoadError(bert.bytes);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("bert"), std::string::npos);

  GgufWriter pre;
  pre.Header(0, 3).KeyString("tokenizer.ggml.model", "gpt2").KeyString("tokenizer.ggml.pre", "no-such-pre");
  pre.KeyStrings("tokenizer.ggml.tokens", {"a"});
  s = LoadError(pre.bytes);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("no-such-pre"), std::string::npos);

  GgufWriter types;
  types.Header(0, 3).KeyString("tokenizer.ggml.model", "gpt2").KeyStrings("tokenizer.ggml.tokens", {"a", "b"});
  types.KeyI32s("tokenizer.ggml.token_type", {1});
  s = LoadError(types.bytes);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("tokenizer.ggml.token_type"), std::string::npos);

  GgufWriter merge;
  merge.Header(0, 3).KeyString("tokenizer.ggml.model", "gpt2").KeyStrings("tokenizer.ggml.tokens", {"a", "b"});
  merge.KeyStrings("tokenizer.ggml.merges", {"a b"});
  s = LoadError(merge.bytes);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("tokenizer.ggml.merges entry 0"), std::string::npos);

  GgufWriter bos;
  bos.Header(0, 4).KeyString("tokenizer.ggml.model", "gpt2").KeyStrings("tokenizer.ggml.tokens", {"a"});
  bos.KeyStrings("tokenizer.ggml.merges", {}).KeyU32("tokenizer.ggml.bos_token_id", 7);
  s = LoadError(bos.bytes);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("tokenizer.ggml.bos_token_id"), std::string::npos);

  GgufWriter none;
  none.Header(0, 0);
  EXPECT_EQ(LoadError(none.bytes).code(), StatusCode::kNotFound);
}

TEST(TokenizerTest, RejectsBadTekkenFiles) {
  EXPECT_EQ(Tokenizer::FromTekkenJson("/nonexistent/tekken.json").status().code(), StatusCode::kNotFound);
  std::string path = (std::filesystem::temp_directory_path() / "lr_tokenizer_test_tekken.json").string();
  for (const char* text :
       {"not json", "{}", R"({"config": {"pattern": "a"}, "vocab": []})",
        R"({"config": {"pattern": "(", "default_vocab_size": 1300, "default_num_special_tokens": 1000},
                               "vocab": []})"}) {
    ASSERT_TRUE(WriteFileAtomic(path, text).ok());
    auto t = Tokenizer::FromTekkenJson(path);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_EQ(t.status().code(), StatusCode::kCorrupt) << t.status().ToString();
    EXPECT_NE(t.status().message().find(path), std::string::npos) << t.status().ToString();
  }
  std::filesystem::remove(path);
}

// Reference ids from scripts/make_tokenizer_fixtures.py (transformers and mistral-common).
nlohmann::json Fixture(const std::string& name) {
  auto text = ReadFile(std::string(LR_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return nlohmann::json::parse(text.ok() ? *text : "null");
}

const std::string kModelPath = std::string(LR_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kTekkenPath = std::string(LR_SOURCE_DIR) + "/models/tekken_240911.json";

TEST(TokenizerModelTest, SmolLM2MatchesTransformers) {
  if (!std::filesystem::exists(kModelPath)) GTEST_SKIP() << "no default model at " << kModelPath;
  auto gguf = GgufFile::Open(kModelPath);
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto t = Tokenizer::FromGguf(*gguf);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->vocab_size(), 49152);
  EXPECT_EQ(t->bos(), 1);
  EXPECT_EQ(t->eos(), 2);
  EXPECT_EQ(t->FindSpecial("<|im_end|>"), 2);
  nlohmann::json fx = Fixture("smollm2.json");
  ASSERT_GT(fx["cases"].size(), 20u);
  for (const auto& c : fx["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(t->Encode(text, true), c["ids"].get<Ids>()) << text;
    EXPECT_EQ(t->Encode(text, false), c["ids_no_special"].get<Ids>()) << text;
    EXPECT_EQ(t->Decode(c["ids"].get<Ids>()), text);
  }
}

// The other byte-level split patterns, over SmolLM2's vocabulary, against the tokenizers library.
TEST(TokenizerModelTest, PreTokenizersMatchTokenizersLibrary) {
  if (!std::filesystem::exists(kModelPath)) GTEST_SKIP() << "no default model at " << kModelPath;
  auto gguf = GgufFile::Open(kModelPath);
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto tokens = gguf->GetStringArray("tokenizer.ggml.tokens");
  auto types = gguf->GetI32Array("tokenizer.ggml.token_type");
  auto merges = gguf->GetStringArray("tokenizer.ggml.merges");
  ASSERT_TRUE(tokens.ok() && types.ok() && merges.ok());
  nlohmann::json fx = Fixture("pretokenizers.json");
  for (const char* pre : {"llama-bpe", "qwen2", "deepseek-llm", "deepseek-v3", "tekken"}) {
    GgufWriter w;
    w.Header(0, 5);
    w.KeyString("tokenizer.ggml.model", "gpt2");
    w.KeyString("tokenizer.ggml.pre", pre);
    w.KeyStrings("tokenizer.ggml.tokens", *tokens);
    w.KeyI32s("tokenizer.ggml.token_type", *types);
    w.KeyStrings("tokenizer.ggml.merges", *merges);
    Tokenizer t = Load(w.bytes);
    ASSERT_GT(fx[pre].size(), 20u) << pre;
    for (const auto& c : fx[pre]) {
      std::string text = c["text"];
      EXPECT_EQ(t.Encode(text, true), c["ids"].get<Ids>()) << pre << ": " << text;
    }
  }
}

// The pieces of a SentencePiece model file (protobuf ModelProto: field 1 holds the pieces, each with piece = 1,
// score = 2, type = 3), read just far enough to build the GGUF metadata llama.cpp's converter writes from it.
struct SpmPieces {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};

bool ReadVarint(std::string_view s, size_t* at, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *at < s.size(); shift += 7) {
    uint8_t b = static_cast<uint8_t>(s[(*at)++]);
    *v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// Calls on_field(field, wire_type, varint_or_fixed, bytes) for each field of one protobuf message.
template <typename F>
bool ForEachField(std::string_view s, F on_field) {
  for (size_t at = 0; at < s.size();) {
    uint64_t key, v = 0;
    if (!ReadVarint(s, &at, &key)) return false;
    std::string_view bytes;
    switch (key & 7) {
      case 0:
        if (!ReadVarint(s, &at, &v)) return false;
        break;
      case 1:
        if (at + 8 > s.size()) return false;
        std::memcpy(&v, s.data() + at, 8);
        at += 8;
        break;
      case 2:
        if (!ReadVarint(s, &at, &v) || v > s.size() - at) return false;
        bytes = s.substr(at, v);
        at += v;
        break;
      case 5:
        if (at + 4 > s.size()) return false;
        std::memcpy(&v, s.data() + at, 4);
        at += 4;
        break;
      default: return false;
    }
    on_field(key >> 3, key & 7, v, bytes);
  }
  return true;
}

SpmPieces ReadSentencePieceModel(const std::string& data) {
  SpmPieces p;
  bool ok = ForEachField(data, [&](uint64_t field, uint64_t, uint64_t, std::string_view msg) {
    if (field != 1) return;
    std::string piece;
    float score = 0;
    int32_t type = 1;
    EXPECT_TRUE(ForEachField(msg, [&](uint64_t f, uint64_t, uint64_t v, std::string_view b) {
      if (f == 1) piece = std::string(b);
      if (f == 2) {
        uint32_t bits = static_cast<uint32_t>(v);
        std::memcpy(&score, &bits, 4);
      }
      if (f == 3) type = static_cast<int32_t>(v);
    }));
    p.tokens.push_back(piece);
    p.scores.push_back(score);
    p.types.push_back(type);
  });
  EXPECT_TRUE(ok);
  return p;
}

const std::string kSpmPath = std::string(LR_SOURCE_DIR) + "/models/mistral_tokenizer.model.v1";

TEST(TokenizerModelTest, SentencePieceMatchesSentencePieceLibrary) {
  if (!std::filesystem::exists(kSpmPath)) GTEST_SKIP() << "no " << kSpmPath << " (scripts/setup.sh fetches it)";
  auto data = ReadFile(kSpmPath);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  SpmPieces p = ReadSentencePieceModel(*data);
  ASSERT_EQ(p.tokens.size(), 32000u);
  GgufWriter w;
  w.Header(0, 6);
  w.KeyString("tokenizer.ggml.model", "llama");
  w.KeyStrings("tokenizer.ggml.tokens", p.tokens);
  w.KeyF32s("tokenizer.ggml.scores", p.scores);
  w.KeyI32s("tokenizer.ggml.token_type", p.types);
  w.KeyU32("tokenizer.ggml.bos_token_id", 1);
  w.KeyU32("tokenizer.ggml.eos_token_id", 2);
  Tokenizer t = Load(w.bytes);
  nlohmann::json fx = Fixture("sentencepiece_v1.json");
  ASSERT_GT(fx["cases"].size(), 20u);
  for (const auto& c : fx["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(t.Encode(text, false), c["ids"].get<Ids>()) << text;
  }
}

// Loaded once: parsing the 19 MB tekken.json is the slow part of these tests.
const Tokenizer* TekkenTokenizer() {
  static const Result<Tokenizer> t = Tokenizer::FromTekkenJson(kTekkenPath);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? &t.value() : nullptr;
}

TEST(TokenizerModelTest, TekkenMatchesMistralCommon) {
  if (!std::filesystem::exists(kTekkenPath)) GTEST_SKIP() << "no " << kTekkenPath << " (scripts/setup.sh fetches it)";
  const Tokenizer* t = TekkenTokenizer();
  ASSERT_NE(t, nullptr);
  nlohmann::json fx = Fixture("tekken.json");
  EXPECT_EQ(t->vocab_size(), fx["vocab_size"].get<int>());
  EXPECT_EQ(t->bos(), fx["bos"].get<int>());
  EXPECT_EQ(t->eos(), fx["eos"].get<int>());
  for (const auto& [text, id] : fx["special"].items()) EXPECT_EQ(t->FindSpecial(text), id.get<int32_t>()) << text;
  ASSERT_GT(fx["cases"].size(), 20u);
  for (const auto& c : fx["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(t->Encode(text, false), c["ids"].get<Ids>()) << text;
    EXPECT_EQ(t->Decode(c["ids"].get<Ids>()), text);
  }
  // With parse_special, control-token text becomes its token.
  Ids ids = t->Encode("[INST]hi[/INST]", true);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], fx["special"]["[INST]"].get<int32_t>());
  EXPECT_EQ(ids[2], fx["special"]["[/INST]"].get<int32_t>());
}

// A rendered Mistral prompt's markers become single control tokens.
TEST(TokenizerModelTest, TekkenEncodesMistralPrompt) {
  if (!std::filesystem::exists(kTekkenPath)) GTEST_SKIP() << "no " << kTekkenPath;
  const Tokenizer* t = TekkenTokenizer();
  ASSERT_NE(t, nullptr);
  ChatMessage user;
  user.role = "user";
  user.content = "Prove it.";
  auto text = ChatFormat::Mistral().Render({user}, {}, false);
  ASSERT_TRUE(text.ok());
  std::vector<int32_t> ids = t->Encode(*text, true);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), t->bos());
  EXPECT_EQ(ids[1], *t->FindSpecial("[INST]"));
  EXPECT_EQ(ids.back(), *t->FindSpecial("[/INST]"));
}

}  // namespace
}  // namespace lr::inference
