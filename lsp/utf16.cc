#include "lsp/utf16.h"

namespace lr::lsp {
namespace {

// Length in bytes of the UTF-8 sequence starting at s[i] (1 for an invalid or truncated one).
size_t SequenceLength(std::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

}  // namespace

std::string_view LineOf(std::string_view text, int line) {
  size_t start = 0;
  for (int l = 0; l < line; ++l) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) return {};
    start = nl + 1;
  }
  size_t end = text.find('\n', start);
  return text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
}

int Utf8ToUtf16Column(std::string_view line_text, int byte_col) {
  size_t limit = byte_col < 0 ? 0 : static_cast<size_t>(byte_col);
  int units = 0;
  size_t i = 0;
  while (i < line_text.size() && i < limit) {
    size_t n = SequenceLength(line_text, i);
    units += n == 4 ? 2 : 1;
    i += n;
  }
  return units;
}

int Utf16ToUtf8Column(std::string_view line_text, int utf16_col) {
  int units = 0;
  size_t i = 0;
  while (i < line_text.size()) {
    size_t n = SequenceLength(line_text, i);
    int w = n == 4 ? 2 : 1;
    if (units + w > utf16_col) break;
    units += w;
    i += n;
  }
  return static_cast<int>(i);
}

size_t OffsetOf(std::string_view text, int line, int byte_col) {
  size_t start = 0;
  for (int l = 0; l < line; ++l) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) return text.size();
    start = nl + 1;
  }
  size_t end = text.find('\n', start);
  if (end == std::string_view::npos) end = text.size();
  size_t col = byte_col < 0 ? 0 : static_cast<size_t>(byte_col);
  return start + col < end ? start + col : end;
}

}  // namespace lr::lsp
