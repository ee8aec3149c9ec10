#include "tui/screen.h"

#include <gtest/gtest.h>

#include <clocale>

namespace lr::tui {
namespace {

class ScreenTextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::setlocale(LC_CTYPE, "C.UTF-8") == nullptr) GTEST_SKIP() << "no C.UTF-8 locale for wcwidth";
  }
  void TearDown() override { std::setlocale(LC_CTYPE, "C"); }
};

TEST_F(ScreenTextTest, DisplayWidthCountsLeanSymbolsAndWideCharacters) {
  EXPECT_EQ(DisplayWidth("abc"), 3);
  EXPECT_EQ(DisplayWidth("⊢ n ∈ ℕ"), 7);
  EXPECT_EQ(DisplayWidth("定理"), 4);
  EXPECT_EQ(DisplayWidth("e\xCC\x81"), 1);  // e + combining acute
  EXPECT_EQ(DisplayWidth("\t"), 2);
  EXPECT_EQ(DisplayWidth("\xFF"), 1);  // an invalid byte is drawn as one replacement column
}

TEST_F(ScreenTextTest, WrapTextBreaksAtNewlinesAndByWidthWithoutSplittingCharacters) {
  EXPECT_EQ(WrapText("ab\ncd", 10), (std::vector<std::string>{"ab", "cd"}));
  EXPECT_EQ(WrapText("⊢ℕ⊢ℕ⊢", 2), (std::vector<std::string>{"⊢ℕ", "⊢ℕ", "⊢"}));
  EXPECT_EQ(WrapText("定理定", 3), (std::vector<std::string>{"定", "理", "定"}));
  EXPECT_EQ(WrapText("", 5), (std::vector<std::string>{""}));
  EXPECT_EQ(WrapText("x\n", 5), (std::vector<std::string>{"x"}));
}

}  // namespace
}  // namespace lr::tui
