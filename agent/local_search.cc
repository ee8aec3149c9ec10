#include "agent/local_search.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "base/file.h"

namespace lr::agent {
namespace fs = std::filesystem;
namespace {

// The query, quoted for a PCRE2 pattern (every ASCII punctuation character escaped).
std::string Quote(const std::string& s) {
  std::string out;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != '_') out += '\\';
    out += c;
  }
  return out;
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct DataDeleter {
  void operator()(pcre2_match_data* d) const { pcre2_match_data_free(d); }
};

int Rank(const std::string& name, const std::string& query) {
  std::string last = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
  if (name == query || last == query) return 0;
  if (name.rfind(query, 0) == 0 || last.rfind(query, 0) == 0) return 1;
  return 2;
}

}  // namespace

Result<std::vector<DeclarationHit>> SearchDeclarations(const std::vector<std::string>& roots, const std::string& query,
                                                       size_t limit) {
  if (query.empty()) return InvalidArgument("lean_local_search: empty query");
  if (query.find_first_of(" \t\r\n") != std::string::npos)
    return InvalidArgument("lean_local_search: the query '" + query + "' holds whitespace (expected a name or prefix)");
  const std::string pattern =
      "^[ \\t]*(?:@\\[[^\\]\\n]*\\][ \\t\\n]*)*"
      "(?:(?:private|protected|noncomputable|partial|unsafe|nonrec|scoped)[ \\t]+)*"
      "(theorem|lemma|def|abbrev|instance|structure|class|inductive|axiom|opaque)[ \\t]+"
      "((?:[^\\s.(:{\\[]+\\.)*" +
      Quote(query) + "[^\\s(:{\\[]*)";
  int error = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<pcre2_code, CodeDeleter> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                    PCRE2_MULTILINE | PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr));
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(error, msg, sizeof msg);
    return Internal("lean_local_search: the pattern for '" + query +
                    "' does not compile: " + reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);  // the interpreter runs when JIT is unavailable
  std::unique_ptr<pcre2_match_data, DataDeleter> data(pcre2_match_data_create_from_pattern(code.get(), nullptr));

  std::vector<DeclarationHit> hits;
  for (const std::string& root : roots) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    std::vector<std::string> files;
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && it->path().filename() == ".git") {
        it.disable_recursion_pending();
        continue;
      }
      if (it->path().extension() == ".lean" && it->is_regular_file(ec)) files.push_back(it->path().string());
    }
    std::sort(files.begin(), files.end());
    for (const std::string& file : files) {
      auto text = ReadFile(file);
      if (!text.ok() || text->find(query) == std::string::npos) continue;
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text->data());
      PCRE2_SIZE start = 0;
      int line = 1;
      size_t counted = 0;  // bytes of the text whose newlines are in `line`
      while (start <= text->size()) {
        int rc = pcre2_match(code.get(), subject, text->size(), start, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
        if (rc < 0) break;
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
        line += static_cast<int>(std::count(text->begin() + counted, text->begin() + ov[4], '\n'));
        counted = ov[4];
        hits.push_back({text->substr(ov[4], ov[5] - ov[4]), text->substr(ov[2], ov[3] - ov[2]), file, line});
        start = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
      }
    }
  }
  std::stable_sort(hits.begin(), hits.end(), [&](const DeclarationHit& a, const DeclarationHit& b) {
    return Rank(a.name, query) < Rank(b.name, query);
  });
  if (hits.size() > limit) hits.resize(limit);
  return hits;
}

}  // namespace lr::agent
