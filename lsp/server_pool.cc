#include "lsp/server_pool.h"

#include <condition_variable>
#include <filesystem>
#include <list>
#include <mutex>
#include <type_traits>

#include "lsp/jsonrpc.h"

namespace lr::lsp {
namespace {

constexpr char kScratchName[] = "LeanrotorCheck.lean";
constexpr char kHeaderCheckName[] = "LeanrotorHeaderCheck.lean";  // the known-good text after a worker crash

bool StartsWithWord(std::string_view line, std::string_view word) {
  return line.rfind(word, 0) == 0 &&
         (line.size() == word.size() || line[word.size()] == ' ' || line[word.size()] == '\t');
}

}  // namespace

std::string ImportHeader(const std::string& text) {
  std::string header;
  size_t i = 0;
  int block_depth = 0;
  while (i < text.size()) {
    size_t eol = text.find('\n', i);
    if (eol == std::string::npos) eol = text.size();
    std::string_view line(text.data() + i, eol - i);
    i = eol + 1;
    size_t first = line.find_first_not_of(" \t\r");
    line = first == std::string_view::npos ? std::string_view() : line.substr(first);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
    if (block_depth > 0 || line.rfind("/-", 0) == 0) {  // a block comment before or between imports
      for (size_t k = 0; k + 1 < line.size(); ++k) {
        if (line[k] == '/' && line[k + 1] == '-')
          ++block_depth, ++k;
        else if (line[k] == '-' && line[k + 1] == '/')
          --block_depth, ++k;
      }
      continue;
    }
    if (line.empty() || line.rfind("--", 0) == 0) continue;
    if (StartsWithWord(line, "import") || StartsWithWord(line, "prelude") || StartsWithWord(line, "module")) {
      if (!header.empty()) header += '\n';
      header += line;
      continue;
    }
    break;
  }
  return header;
}

struct ServerPool::Impl {
  struct Server {
    std::string key;
    std::unique_ptr<LeanClient> client;  // null while starting
    bool busy = true;
    Clock::time_point last_used;
  };

  PoolOptions options;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::list<std::unique_ptr<Server>> servers;  // guarded by mu
  size_t started = 0;                          // guarded by mu

  Result<Server*> Acquire(const std::string& key, const std::string& project_root, Clock::time_point deadline,
                          const std::atomic<bool>* cancel);
  void Release(Server* server, bool keep);
  void Discard(std::list<std::unique_ptr<Server>>::iterator it, std::vector<std::unique_ptr<LeanClient>>& graveyard);
  template <typename T, typename Fn>
  Result<T> WithServer(const CheckRequest& request, Fn fn);
};

void ServerPool::Impl::Discard(std::list<std::unique_ptr<Server>>::iterator it,
                               std::vector<std::unique_ptr<LeanClient>>& graveyard) {
  if ((*it)->client) graveyard.push_back(std::move((*it)->client));
  servers.erase(it);
}

Result<ServerPool::Impl::Server*> ServerPool::Impl::Acquire(const std::string& key, const std::string& project_root,
                                                            Clock::time_point deadline,
                                                            const std::atomic<bool>* cancel) {
  auto cancelled = [cancel] { return cancel != nullptr && cancel->load(); };
  std::vector<std::unique_ptr<LeanClient>> graveyard;  // stopped outside the lock
  Server* fresh = nullptr;
  {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      // Dead idle servers go first; an idle healthy server with our key is taken.
      for (auto it = servers.begin(); it != servers.end();) {
        Server& s = **it;
        if (!s.busy && !s.client->healthy()) {
          auto next = std::next(it);
          Discard(it, graveyard);
          it = next;
          continue;
        }
        if (!s.busy && s.key == key) {
          s.busy = true;
          s.client->SetCancel(cancel);
          return &s;
        }
        ++it;
      }
      if (cancelled()) return Cancelled("Lean check cancelled before a server was started");
      if (servers.size() < options.max_servers) break;
      // Full: stop the least recently used idle server of another key, or wait for one to come back.
      auto lru = servers.end();
      for (auto it = servers.begin(); it != servers.end(); ++it)
        if (!(*it)->busy && (lru == servers.end() || (*it)->last_used < (*lru)->last_used)) lru = it;
      if (lru != servers.end()) {
        Discard(lru, graveyard);
        continue;
      }
      if (cancelled()) return Cancelled("waiting for a Lean server: cancelled");
      if (Clock::now() >= deadline)
        return Timeout("all " + std::to_string(options.max_servers) + " Lean servers stayed busy until the deadline");
      cv.wait_until(lock, std::min(deadline, Clock::now() + Connection::kCancelPoll));
    }
    servers.push_back(std::make_unique<Server>());
    fresh = servers.back().get();
    fresh->key = key;
    ++started;
  }
  graveyard.clear();

  ProcessSpec spec;
  spec.working_dir = project_root;
  spec.env = options.env;
  spec.memory_limit_bytes = options.server_memory_limit_bytes;
  spec.cpu_limit_seconds = options.server_cpu_limit_seconds;
  Result<std::unique_ptr<LeanClient>> client = NotFound("no Lean command");
  if (options.lean_command.empty()) {
    auto command = DefaultLeanCommand(project_root);
    if (command.ok()) {
      spec.argv = *command;
      client = LeanClient::Start(spec, options.client, deadline, cancel);
    } else {
      client = command.status();
    }
  } else {
    spec.argv = options.lean_command;
    client = LeanClient::Start(spec, options.client, deadline, cancel);
  }
  std::lock_guard<std::mutex> lock(mu);
  if (!client.ok()) {
    servers.remove_if([&](const std::unique_ptr<Server>& s) { return s.get() == fresh; });
    cv.notify_all();
    return client.status();
  }
  fresh->client = std::move(*client);
  return fresh;
}

void ServerPool::Impl::Release(Server* server, bool keep) {
  std::vector<std::unique_ptr<LeanClient>> graveyard;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto self = std::find_if(servers.begin(), servers.end(), [&](const auto& s) { return s.get() == server; });
    if (!keep || !server->client->healthy() || server->client->ResidentBytes() > options.server_resident_cap_bytes) {
      Discard(self, graveyard);
    } else {
      server->busy = false;
      server->last_used = Clock::now();
      server->client->SetCancel(nullptr);
    }
    // Pool-wide memory: stop idle servers, least recently used first, while the total is over the cap.
    for (;;) {
      int64_t total = 0;
      auto lru = servers.end();
      for (auto it = servers.begin(); it != servers.end(); ++it) {
        if (!(*it)->client) continue;
        total += (*it)->client->ResidentBytes();
        if (!(*it)->busy && (lru == servers.end() || (*it)->last_used < (*lru)->last_used)) lru = it;
      }
      if (total <= options.pool_resident_cap_bytes || lru == servers.end()) break;
      Discard(lru, graveyard);
    }
    cv.notify_all();
  }
}

template <typename T, typename Fn>
Result<T> ServerPool::Impl::WithServer(const CheckRequest& request, Fn fn) {
  namespace fs = std::filesystem;
  std::string path = request.path;
  if (path.empty())
    path = (fs::path(request.project_root.empty() ? fs::temp_directory_path().string() : request.project_root) /
            kScratchName)
               .string();
  std::error_code ec;
  fs::path absolute = fs::absolute(path, ec);
  std::string uri = PathToUri(ec ? path : absolute.lexically_normal().string());
  std::string key = request.project_root + '\n' + ImportHeader(request.text);
  const Clock::time_point deadline = Clock::now() + request.timeout;  // the whole check, the retry included
  auto cancelled = [&] { return request.cancel != nullptr && request.cancel->load(); };
  Status first;
  bool first_crash = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (cancelled()) return Cancelled("Lean check of " + uri + " cancelled");
    auto server = Acquire(key, request.project_root, deadline, request.cancel);
    Result<T> result = server.ok() ? fn(*(*server)->client, uri, deadline) : Result<T>(server.status());
    const bool crash = server.ok() && !result.ok() && (*server)->client->worker_crashed();
    if constexpr (std::is_same_v<T, CheckResult>) {
      // The same text crashed the worker of a fresh server too: a known-good text on that server tells the text's
      // fault from Lean's.
      if (crash && first_crash && !cancelled()) {
        const std::string good_uri = uri.substr(0, uri.rfind('/') + 1) + kHeaderCheckName;
        LeanClient& client = *(*server)->client;
        Result<CheckResult> good = client.Check(good_uri, ImportHeader(request.text) + "\n", deadline);
        if (good.ok() && client.Close(good_uri).ok()) {
          Release(*server, false);  // its worker state after a crash is not worth keeping
          CheckResult verdict;
          verdict.complete = true;
          verdict.worker_crash =
              "Lean's file worker crashed on this text on two servers (which check its imports "
              "fine): " +
              first.message();
          return verdict;
        }
      }
    }
    if (server.ok()) Release(*server, result.ok());
    if (result.ok()) return result;
    if (cancelled()) return Cancelled("Lean check of " + uri + " cancelled");
    const Status& s = result.status();
    if (s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kCancelled)
      return s;  // the caller's mistake or wish: a retry cannot help
    if (!server.ok() && s.code() == StatusCode::kNotFound)
      return Unavailable(s.message());  // Lean is not installed: no retry
    if (attempt == 0 && Clock::now() < deadline) {
      first = s;
      first_crash = crash;
      continue;
    }
    StatusCode code = s.code() == StatusCode::kTimeout ? StatusCode::kTimeout : StatusCode::kUnavailable;
    const std::string attempts =
        attempt == 0 ? "no time left for a retry: " + s.ToString()
                     : "first attempt: " + first.ToString() + "; retry on a fresh server: " + s.ToString();
    return Status(
        code, "Lean could not check " + uri + " (an infrastructure failure, not a verdict on the proof); " + attempts);
  }
  return Internal("unreachable");
}

ServerPool::ServerPool(PoolOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (impl_->options.max_servers == 0) impl_->options.max_servers = 1;
}

ServerPool::~ServerPool() = default;

Result<CheckResult> ServerPool::Check(const CheckRequest& request) {
  return impl_->WithServer<CheckResult>(request, [&](LeanClient& c, const std::string& uri, Clock::time_point d) {
    return c.Check(uri, request.text, d);
  });
}

Result<CheckResult> ServerPool::CheckThen(const CheckRequest& request, const DocumentQuery& query) {
  return impl_->WithServer<CheckResult>(
      request, [&](LeanClient& c, const std::string& uri, Clock::time_point d) -> Result<CheckResult> {
        LR_ASSIGN_OR_RETURN(CheckResult checked, c.Check(uri, request.text, d));
        LR_RETURN_IF_ERROR(query(c, uri, checked, d));
        return checked;
      });
}

Result<Goal> ServerPool::GoalAt(const CheckRequest& request, Position position) {
  return impl_->WithServer<Goal>(request,
                                 [&](LeanClient& c, const std::string& uri, Clock::time_point d) -> Result<Goal> {
                                   LR_RETURN_IF_ERROR(c.Check(uri, request.text, d).status());
                                   return c.GoalAt(uri, position, d);
                                 });
}

Result<std::vector<AttemptResult>> ServerPool::MultiAttempt(const CheckRequest& request, int line,
                                                            const std::vector<std::string>& snippets) {
  return impl_->WithServer<std::vector<AttemptResult>>(request,
                                                       [&](LeanClient& c, const std::string& uri, Clock::time_point d) {
                                                         return c.MultiAttempt(uri, request.text, line, snippets, d);
                                                       });
}

void ServerPool::StopIdle() {
  std::vector<std::unique_ptr<LeanClient>> graveyard;  // stopped outside the lock
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (auto it = impl_->servers.begin(); it != impl_->servers.end();) {
    auto next = std::next(it);
    if (!(*it)->busy) impl_->Discard(it, graveyard);
    it = next;
  }
  impl_->cv.notify_all();
}

size_t ServerPool::live_servers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->servers.size();
}

size_t ServerPool::servers_started() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->started;
}

}  // namespace lr::lsp
