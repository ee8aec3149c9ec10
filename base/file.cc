#include "base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace lr {
namespace {

Status Errno(std::string_view what, const std::string& path) {
  return IoError(std::string(what) + " " + path + ": " + std::strerror(errno));
}

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("no such file: " + path);
    return Errno("cannot open", path);
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = Errno("cannot read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  std::filesystem::path target(path);
  std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::string name = ".";  // one append at a time: GCC 12 warns (-Wrestrict, falsely) on "." + string
  name += target.filename().string();
  name += ".tmp.XXXXXX";
  std::string tmpl = (dir / name).string();
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) return Errno("cannot create a temporary file for", path);
  Status s = WriteAll(fd, contents, tmpl);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", tmpl);
  // Keep the mode of an existing file; new files get 0644 like an ordinary write would under a default umask.
  struct stat st;
  mode_t mode = (::stat(path.c_str(), &st) == 0) ? (st.st_mode & 07777) : 0644;
  if (s.ok() && ::fchmod(fd, mode) != 0) s = Errno("cannot chmod", tmpl);
  ::close(fd);
  if (s.ok() && ::rename(tmpl.c_str(), path.c_str()) != 0) s = Errno("cannot rename into", path);
  if (!s.ok()) ::unlink(tmpl.c_str());
  return s;
}

Status AppendLine(const std::string& path, std::string_view line) {
  if (line.find('\n') != std::string_view::npos) return InvalidArgument("AppendLine: line contains a newline");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot open for append", path);
  std::string buf(line);
  buf.push_back('\n');
  Status s = WriteAll(fd, buf, path);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", path);
  ::close(fd);
  return s;
}

}  // namespace lr
