#include "base/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace lr {
namespace {

Result<int> ParsePositive(int x) {
  if (x <= 0) return InvalidArgument("field 'k': expected a positive integer, got " + std::to_string(x));
  return x;
}

Result<int> Doubled(int x) {
  LR_ASSIGN_OR_RETURN(int v, ParsePositive(x));
  return 2 * v;
}

Status Check(int x) {
  LR_RETURN_IF_ERROR(ParsePositive(x).status());
  return Status::Ok();
}

TEST(Status, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(Status, CarriesCodeAndMessage) {
  Status s = Corrupt("tensor 'blk.0.attn_q.weight': data runs past the end of the file");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_EQ(s.ToString(), "corrupt: tensor 'blk.0.attn_q.weight': data runs past the end of the file");
  EXPECT_EQ(s.WithContext("model.gguf").message(),
            "model.gguf: tensor 'blk.0.attn_q.weight': data runs past the end of the file");
  EXPECT_EQ(s.WithContext("model.gguf").code(), StatusCode::kCorrupt);
}

TEST(Result, ValueAndErrorPropagate) {
  auto good = Doubled(21);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 42);
  auto bad = Doubled(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("field 'k'"), std::string::npos);
  EXPECT_TRUE(Check(3).ok());
  EXPECT_EQ(Check(0).code(), StatusCode::kInvalidArgument);
}

TEST(Result, HoldsMoveOnlyValues) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
}

}  // namespace
}  // namespace lr
