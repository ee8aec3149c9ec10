// Text <-> token ids for the models leanrotor runs, exactly as their reference tokenizers do it.
//
// Three vocabularies, one algorithm: split the text into pieces, then merge each piece's symbols pairwise, always
// taking the pair of lowest rank (leftmost on ties), until no pair merges.
// - Byte-level BPE (GGUF tokenizer.ggml.model "gpt2": SmolLM2, Llama 3, Qwen2/3, DeepSeek): the pieces come from the
//   pre-tokenizer regexes named by tokenizer.ggml.pre (PCRE2, Unicode classes), symbols start as single bytes, and a
//   pair's rank is its line in tokenizer.ggml.merges.
// - SentencePiece BPE (GGUF "llama": Llama 2, Mistral v1-v3): no split; spaces become "▁" (one is prepended when
//   tokenizer.ggml.add_space_prefix says so), symbols start as characters, a pair's rank orders the merged piece by
//   tokenizer.ggml.scores (highest first), and characters missing from the vocabulary fall back to <0xNN> byte tokens.
// - Mistral tekken (tekken.json): like byte-level BPE with the file's one split pattern; a pair merges when the
//   concatenated bytes are a vocabulary entry, ranked by that entry. Special tokens take ids [0, num_special), a
//   vocabulary entry of rank r has id num_special + r.
//
// Special tokens: control tokens (GGUF token_type 3, all of tekken's special tokens) are recognised in the text only
// when Encode is asked to (parse_special), so that user text can never forge "<|im_start|>"; user-defined tokens
// (type 4) are always recognised, as the reference tokenizers do. Encode never adds BOS/EOS: callers that build a
// prompt add them (see add_bos()).
//
// A Tokenizer is immutable once built: Encode/Decode may run on several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"

namespace lr::inference {

class Tokenizer {
 public:
  // tokenizer.ggml.model "gpt2" or "llama". kUnsupported for other models or an unknown tokenizer.ggml.pre; kCorrupt
  // (naming the key) for inconsistent metadata: array lengths that differ, a merge of unknown tokens, a bos id
  // outside the vocabulary.
  static Result<Tokenizer> FromGguf(const GgufFile& gguf);
  // A mistral-common tekken.json. Files without a special_tokens list (tekken v3-v7) get mistral-common's default
  // list of special tokens.
  static Result<Tokenizer> FromTekkenJson(const std::string& path);

  std::vector<int32_t> Encode(std::string_view text, bool parse_special) const;
  // The concatenated bytes of the tokens' pieces (control tokens included, as their text). SentencePiece drops the
  // space it prepended. Ids outside the vocabulary are skipped.
  std::string Decode(std::span<const int32_t> ids) const;
  // The bytes of one token; a multi-byte character may be split across tokens, so streaming callers must buffer
  // incomplete UTF-8. Empty for an id outside the vocabulary.
  std::string TokenPiece(int32_t id) const;

  int32_t bos() const { return bos_; }       // -1 when the vocabulary has none
  int32_t eos() const { return eos_; }       // -1 when the vocabulary has none
  bool add_bos() const { return add_bos_; }  // whether the model expects BOS before a prompt
  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  bool IsControl(int32_t id) const;
  // The id of a special (control or user-defined) token by its text, e.g. "<|im_end|>" or "[INST]".
  std::optional<int32_t> FindSpecial(std::string_view text) const;

 private:
  enum class Kind { kByteBpe, kSentencePiece, kTekken };
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct Regex;  // a compiled PCRE2 pattern

  Tokenizer() = default;
  // Splits `text` (no special tokens in it) with the pre-tokenizer and appends the merged ids of each piece.
  void EncodeText(std::string_view text, bool at_start, std::vector<int32_t>* out) const;
  // Merges one piece, given as the ids of its initial symbols (-1: a symbol outside the vocabulary, never merged).
  void MergeSymbols(std::vector<int32_t>* ids) const;
  void AppendSentencePiece(std::string_view text, bool at_start, std::vector<int32_t>* out) const;
  void AppendBytes(std::string_view bytes, std::vector<int32_t>* out) const;
  // Builds merges_ from the vocabulary: every mergeable token whose text (as piece_to_id_ keys it) splits into two
  // tokens is the merge of that pair, with rank rank_of[id].
  void AddMergesBySplitting(const std::vector<std::string>& texts, const std::vector<int32_t>& rank_of,
                            const std::vector<bool>& mergeable);
  static Result<std::shared_ptr<const Regex>> CompileRegex(const std::string& pattern, const std::string& where);
  void IndexSpecials();

  Kind kind_ = Kind::kByteBpe;
  std::vector<std::string> pieces_;  // id -> bytes
  std::vector<uint8_t> control_;     // id -> 1 for control tokens
  std::vector<int32_t> specials_;    // ids recognised in text (control and user-defined), longest text first
  bool special_first_byte_[256];     // whether some special token's text starts with this byte
  // Normal tokens by text: raw bytes for byte-level BPE and tekken, the stored text (with "▁") for SentencePiece.
  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;       // (left id << 32 | right id) -> merge
  int32_t byte_ids_[256];                            // single-byte token (SentencePiece: <0xNN>), or -1
  std::vector<std::shared_ptr<const Regex>> split_;  // applied one after another, each to the last one's pieces
  int32_t bos_ = -1;
  int32_t eos_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;
  bool ignore_merges_ = false;  // a piece that is itself a token is emitted whole (Llama 3)
};

}  // namespace lr::inference
