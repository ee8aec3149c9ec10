#include "lsp/utf16.h"

#include <gtest/gtest.h>

namespace lr::lsp {
namespace {

TEST(Utf16, AsciiColumnsAreEqual) {
  EXPECT_EQ(Utf8ToUtf16Column("theorem foo", 7), 7);
  EXPECT_EQ(Utf16ToUtf8Column("theorem foo", 7), 7);
}

TEST(Utf16, BmpCharactersCountOne) {
  // "ℕ" is 3 bytes (E2 84 95), one UTF-16 unit; "⊢" likewise.
  std::string_view line = "x : ℕ ⊢ y";
  EXPECT_EQ(Utf8ToUtf16Column(line, 4), 4);   // before ℕ
  EXPECT_EQ(Utf8ToUtf16Column(line, 7), 5);   // after ℕ
  EXPECT_EQ(Utf8ToUtf16Column(line, 11), 7);  // after ⊢
  EXPECT_EQ(Utf16ToUtf8Column(line, 5), 7);
  EXPECT_EQ(Utf16ToUtf8Column(line, 7), 11);
}

TEST(Utf16, AstralCharactersCountTwo) {
  // "𝔽" (U+1D53D) is 4 bytes and a surrogate pair.
  std::string_view line = "a𝔽b";
  EXPECT_EQ(Utf8ToUtf16Column(line, 1), 1);
  EXPECT_EQ(Utf8ToUtf16Column(line, 5), 3);
  EXPECT_EQ(Utf16ToUtf8Column(line, 3), 5);
  EXPECT_EQ(Utf16ToUtf8Column(line, 2), 1);  // inside the pair: the start of the character
  EXPECT_EQ(Utf16ToUtf8Column(line, 4), 6);
}

TEST(Utf16, ClampsPastTheEnd) {
  EXPECT_EQ(Utf8ToUtf16Column("ab", 10), 2);
  EXPECT_EQ(Utf16ToUtf8Column("aℕ", 10), 4);
}

TEST(Utf16, MalformedBytesCountOneEach) {
  std::string line = "a\xE2\x84z";  // truncated 3-byte sequence
  EXPECT_EQ(Utf8ToUtf16Column(line, 4), 4);
  EXPECT_EQ(Utf16ToUtf8Column(line, 3), 3);
}

TEST(Utf16, LinesAndOffsets) {
  std::string text = "one\ntwo ℕ\nthree";
  EXPECT_EQ(LineOf(text, 1), "two ℕ");
  EXPECT_EQ(LineOf(text, 2), "three");
  EXPECT_EQ(LineOf(text, 3), "");
  EXPECT_EQ(OffsetOf(text, 1, 4), 8u);
  EXPECT_EQ(OffsetOf(text, 1, 100), 11u);  // clamped to the line's end
  EXPECT_EQ(OffsetOf(text, 9, 0), text.size());
}

}  // namespace
}  // namespace lr::lsp
