#include "base/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

namespace lr {
namespace {

std::string TempDir() {
  auto dir = std::filesystem::temp_directory_path() / ("lr_file_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

TEST(File, AtomicWriteReplacesAndReadsBack) {
  std::string path = TempDir() + "/out.lean";
  ASSERT_TRUE(WriteFileAtomic(path, "theorem a : 1 = 1 := rfl\n").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "theorem b : 2 = 2 := rfl\n").ok());
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, "theorem b : 2 = 2 := rfl\n");
  // No temporary files are left beside the target.
  int entries = 0;
  for (auto& e : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(File, AtomicWriteKeepsMode) {
  std::string path = TempDir() + "/exec.sh";
  ASSERT_TRUE(WriteFileAtomic(path, "a").ok());
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileAtomic(path, "b").ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
}

TEST(File, MissingFileIsNotFoundNamingThePath) {
  auto r = ReadFile("/nonexistent/dir/x.jsonl");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/dir/x.jsonl"), std::string::npos);
}

TEST(File, AppendLineWritesWholeLines) {
  std::string path = TempDir() + "/results.jsonl";
  std::filesystem::remove(path);
  ASSERT_TRUE(AppendLine(path, R"({"name":"a"})").ok());
  ASSERT_TRUE(AppendLine(path, R"({"name":"b"})").ok());
  EXPECT_FALSE(AppendLine(path, "two\nlines").ok());
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "{\"name\":\"a\"}\n{\"name\":\"b\"}\n");
}

TEST(File, WriteIntoMissingDirectoryFailsClearly) {
  Status s = WriteFileAtomic("/nonexistent/dir/out.txt", "x");
  EXPECT_EQ(s.code(), StatusCode::kIo);
  EXPECT_NE(s.message().find("/nonexistent/dir/out.txt"), std::string::npos);
}

}  // namespace
}  // namespace lr
