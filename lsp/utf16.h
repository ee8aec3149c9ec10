// Column conversion between UTF-8 bytes (C++ string offsets) and UTF-16 code units (LSP `character`).
//
// Lean and LSP count a line's columns in UTF-16 code units: a character outside the Basic Multilingual Plane (4 UTF-8
// bytes) counts 2, every other character 1. Lean's text is full of multi-byte characters (`ℕ`, `⊢`, `→`, subscripts),
// so columns must be converted exactly, both ways.
//
// Malformed UTF-8 is not rejected here: each byte that does not start a valid sequence counts as one character, so
// conversions stay total and monotonic. Columns past the end of a line clamp to the line's end.
#pragma once

#include <string_view>

namespace lr::lsp {

// The text of line `line` (0-based, '\n'-separated; a trailing '\r' is kept), or empty past the last line.
std::string_view LineOf(std::string_view text, int line);

// UTF-16 column of byte column `byte_col` in `line_text`.
int Utf8ToUtf16Column(std::string_view line_text, int byte_col);

// Byte column of UTF-16 column `utf16_col` in `line_text`; a column inside a surrogate pair maps to the start of
// its character.
int Utf16ToUtf8Column(std::string_view line_text, int utf16_col);

// Byte offset in `text` of (line, byte column), clamped to the text and to the line's end.
size_t OffsetOf(std::string_view text, int line, int byte_col);

}  // namespace lr::lsp
