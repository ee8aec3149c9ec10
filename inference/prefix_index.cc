#include "inference/prefix_index.h"

#include <xxhash.h>

namespace lr::inference {

uint64_t PrefixIndex::Salt(std::string_view identity) { return XXH3_64bits(identity.data(), identity.size()); }

uint64_t PrefixIndex::PageKey(uint64_t parent, std::span<const int32_t> tokens) {
  // The parent key seeds the hash of the page's token bytes.
  return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent);
}

std::optional<int> PrefixIndex::Find(uint64_t key) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  entries_.splice(entries_.begin(), entries_, it->second);
  return it->second->page;
}

bool PrefixIndex::Insert(uint64_t key, int page) {
  if (by_key_.count(key) != 0) return false;
  entries_.push_front({key, page});
  by_key_[key] = entries_.begin();
  keys_of_pages_[page] = key;
  return true;
}

std::optional<int> PrefixIndex::EvictLeastRecent(const std::function<bool(int page)>& evictable) {
  for (auto it = entries_.end(); it != entries_.begin();) {
    --it;
    if (!evictable(it->page)) continue;
    const int page = it->page;
    by_key_.erase(it->key);
    keys_of_pages_.erase(page);
    entries_.erase(it);
    return page;
  }
  return std::nullopt;
}

}  // namespace lr::inference
