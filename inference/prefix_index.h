// The prefix index: which KV cache page holds the rows of which run of tokens, across requests.
//
// A page's key is a hash chained over the pages before it: key(page i) = H(key(page i-1), tokens of page i), and the
// first page's parent is a salt that names the model and the KV formats. Two sequences share a key only when they
// share every token from position 0 to the end of that page (up to a 64-bit collision of XXH3), so a key stands for
// the rows the page holds. Only full pages are indexed: a page whose tokens are all known and which no sequence
// writes again.
//
// The index maps keys to page ids and orders entries by use (Find and Insert make an entry the most recently used).
// It knows nothing of reference counts: KvCache holds one reference per indexed page and asks EvictLeastRecent for a
// page only it references when the pool is full.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>

namespace lr::inference {

class PrefixIndex {
 public:
  PrefixIndex() = default;
  // Move-only: the key map points into the entry list.
  PrefixIndex(PrefixIndex&&) = default;
  PrefixIndex& operator=(PrefixIndex&&) = default;
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  // The salt that starts every chain.
  static uint64_t Salt(std::string_view identity);
  // The key of a page holding `tokens` after the page whose key is `parent` (the salt for the first page).
  static uint64_t PageKey(uint64_t parent, std::span<const int32_t> tokens);

  // The page indexed under `key`, now the most recently used; nullopt when none is.
  std::optional<int> Find(uint64_t key);
  // Indexes `page` under `key` as the most recently used entry. False (nothing changes) when `key` is indexed already.
  bool Insert(uint64_t key, int page);
  // Removes the least recently used entry whose page `evictable` accepts and returns its page; nullopt when no entry
  // is accepted.
  std::optional<int> EvictLeastRecent(const std::function<bool(int page)>& evictable);
  // Whether `page` is indexed (under any key).
  bool Holds(int page) const { return keys_of_pages_.count(page) != 0; }
  int size() const { return static_cast<int>(entries_.size()); }

 private:
  struct Entry {
    uint64_t key;
    int page;
  };
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<uint64_t, std::list<Entry>::iterator> by_key_;
  std::unordered_map<int, uint64_t> keys_of_pages_;
};

}  // namespace lr::inference
