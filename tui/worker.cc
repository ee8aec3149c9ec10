#include "tui/worker.h"

#include <chrono>
#include <cstdio>
#include <utility>

namespace lr::tui {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Turns the prover's progress into events for one run, and measures decoding speed as streamed pieces per second
// (one piece is one token for the local runner and for OpenAI-style streams).
class RunObserver : public agent::ProverObserver {
 public:
  RunObserver(int run_id, EventQueue* events, std::function<void(double)> post_speed)
      : run_id_(run_id), events_(events), post_speed_(std::move(post_speed)) {}

  void OnGenerating(int first_candidate, int n, int turn) override {
    for (int c = first_candidate; c < first_candidate + n; ++c)
      events_->Post(AttemptEvent{run_id_, c, turn, AttemptState::kGenerating, "", ""});
    request_start_ = Clock::now();
    pieces_ = 0;
    last_speed_post_ = request_start_;
  }

  void OnPiece(int candidate, std::string_view piece) override {
    events_->Post(PieceEvent{run_id_, candidate, std::string(piece)});
    ++pieces_;
    if (SecondsSince(last_speed_post_) >= 0.25) {
      last_speed_post_ = Clock::now();
      const double elapsed = SecondsSince(request_start_);
      if (elapsed > 0) post_speed_(pieces_ / elapsed);
    }
  }

  void OnChecking(int candidate, int turn) override {
    events_->Post(AttemptEvent{run_id_, candidate, turn, AttemptState::kChecking, "", ""});
  }

  void OnJudged(const agent::Attempt& a) override {
    const AttemptState state = a.verdict.accepted ? AttemptState::kAccepted : AttemptState::kFailed;
    events_->Post(AttemptEvent{run_id_, a.candidate, a.turn, state, a.proof, a.verdict.reason, a.tokens});
  }

 private:
  const int run_id_;
  EventQueue* events_;
  std::function<void(double)> post_speed_;
  Clock::time_point request_start_, last_speed_post_;
  long pieces_ = 0;
};

// An agent run as candidate `candidate`: model text, tool calls, results and refusals into its pane; an accepted
// proof as the candidate's state.
class AgentRunObserver : public agent::AgentObserver {
 public:
  AgentRunObserver(int run_id, int candidate, EventQueue* events)
      : run_id_(run_id), candidate_(candidate), events_(events) {}

  // One pane per agent run: "generating" once, so that the pane keeps the whole run's log (a new turn of the prover
  // would clear it).
  void OnGenerating(int) override {
    if (started_) return;
    started_ = true;
    events_->Post(AttemptEvent{run_id_, candidate_, 0, AttemptState::kGenerating, "", ""});
  }
  void OnPiece(std::string_view piece) override { events_->Post(PieceEvent{run_id_, candidate_, std::string(piece)}); }
  void OnToolCall(int, const std::string& name, const std::string& arguments) override {
    events_->Post(PieceEvent{run_id_, candidate_, "\n> " + name + " " + arguments + "\n"});
  }
  void OnToolResult(int, const std::string&, bool, const std::string& result) override {
    constexpr size_t kShown = 240;  // the pane shows the start of each result (errors start "Error: ")
    std::string shown = result.size() > kShown ? result.substr(0, kShown) + "..." : result;
    events_->Post(PieceEvent{run_id_, candidate_, "< " + shown + "\n"});
  }
  void OnJudged(const std::string&, const std::string& proof, const agent::Verdict& verdict) override {
    if (verdict.accepted)
      events_->Post(AttemptEvent{run_id_, candidate_, 0, AttemptState::kAccepted, proof, ""});
    else
      events_->Post(PieceEvent{run_id_, candidate_, "! not accepted: " + verdict.reason + "\n"});
  }

 private:
  const int run_id_;
  const int candidate_;
  EventQueue* events_;
  bool started_ = false;
};

}  // namespace

void EventQueue::Post(Event event) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(std::move(event));
}

std::vector<Event> EventQueue::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(events_, {});
}

JobThread::JobThread() : thread_([this] { Loop(); }) {}

JobThread::~JobThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    jobs_.clear();
  }
  cv_.notify_one();
  thread_.join();
}

void JobThread::Post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void JobThread::Loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

Worker::Worker(Options options, EventQueue* events) : options_(std::move(options)), events_(events) {
  events_->Post(LeanStateEvent{options_.lean_state});
  model_error_ = "no model";
  if (!options_.model.empty()) {
    StatusView loading;
    loading.model = "loading " + options_.model + "...";
    events_->Post(StatusEvent{loading});
    model_thread_.Post([this] { LoadModel(options_.model, options_.kv); });
  }
}

Worker::~Worker() {
  std::lock_guard<std::mutex> lock(cancel_mu_);
  shutdown_.store(true);
  cancel_.store(true);
}

void Worker::Handle(const Request& request) {
  if (const auto* r = std::get_if<ProveRequest>(&request)) {
    last_run_ = r->run_id;
    model_thread_.Post([this, r = *r] { RunProof(r); });
  } else if (std::holds_alternative<CancelRequest>(request)) {
    std::lock_guard<std::mutex> lock(cancel_mu_);
    cancel_run_.store(last_run_);
    cancel_.store(true);
  } else if (const auto* r = std::get_if<CheckRequest>(&request)) {
    latest_check_.store(r->version);
    lean_thread_.Post([this, r = *r] { CheckBuffer(r); });
  } else if (const auto* r = std::get_if<LoadModelRequest>(&request)) {
    model_thread_.Post([this, r = *r] { LoadModel(r.model, r.kv); });
  }
}

void Worker::PostStatus(double tokens_per_second) {
  StatusView s;
  if (model_.model == nullptr) {
    s.model = model_error_;
  } else {
    s.model = model_.model->Name();
    s.kv_formats = model_.kv_formats;
    if (model_.kv_usage) model_.kv_usage(&s.kv_bytes, &s.kv_shared);
  }
  s.tokens_per_second = tokens_per_second;
  events_->Post(StatusEvent{s});
}

void Worker::LoadModel(const std::string& model, const std::string& kv) {
  if (!options_.open_model) {
    model_error_ = "no model backend in this build";
    return PostStatus(0);
  }
  Result<ModelHandle> handle = options_.open_model(model, kv, &shutdown_);
  if (shutdown_.load()) return;
  if (!handle.ok()) {
    // Keep the model we had, if any, and say why the new one did not load.
    events_->Post(MessageEvent{"model: " + handle.status().ToString()});
    if (model_.model == nullptr) model_error_ = "no model (" + handle.status().message() + ")";
    return PostStatus(0);
  }
  model_ = std::move(handle).value();
  events_->Post(MessageEvent{"model " + model_.model->Name() + " loaded"});
  PostStatus(0);
}

void Worker::RunProof(const ProveRequest& request) {
  {
    std::lock_guard<std::mutex> lock(cancel_mu_);
    if (shutdown_.load()) return;
    cancel_.store(cancel_run_.load() >= request.run_id);
  }
  if (model_.model == nullptr) return events_->Post(RunFinishedEvent{request.run_id, "cannot prove: " + model_error_});
  if (options_.checker == nullptr)
    return events_->Post(RunFinishedEvent{request.run_id, "cannot prove: Lean " + options_.lean_state});
  if (options_.prover.style == agent::PromptStyle::kAgent) {
    Result<std::string> summary = RunAgents(request);
    std::string outcome = summary.ok()                                        ? *summary
                          : summary.status().code() == StatusCode::kCancelled ? "cancelled"
                                                                              : "error: " + summary.status().ToString();
    return events_->Post(RunFinishedEvent{request.run_id, outcome});
  }
  agent::ProverOptions prover = options_.prover;
  prover.k = request.k;
  prover.turns = request.turns;
  prover.project_root = options_.project_root;
  prover.cancel = &cancel_;
  RunObserver observer(request.run_id, events_, [this](double speed) { PostStatus(speed); });
  prover.observer = &observer;
  const Clock::time_point start = Clock::now();
  Result<agent::ProofOutcome> outcome = agent::Prove(request.task, *model_.model, *options_.checker, prover);
  std::string summary;
  if (outcome.ok()) {
    const double seconds = SecondsSince(start);
    PostStatus(seconds > 0 ? outcome->tokens / seconds : 0);
    char detail[160];
    std::snprintf(detail, sizeof detail, " (%d checks, %ld tokens, %.1f s, Lean %.1f s)", outcome->checks,
                  outcome->tokens, outcome->seconds, outcome->lean_seconds);
    summary = outcome->stop_reason + detail;
  } else if (outcome.status().code() == StatusCode::kCancelled) {
    summary = "cancelled";
  } else {
    summary = "error: " + outcome.status().ToString();
  }
  events_->Post(RunFinishedEvent{request.run_id, summary});
}

Result<std::string> Worker::RunAgents(const ProveRequest& request) {
  if (options_.tools == nullptr) return Unavailable("the agent style needs the project's tools (none were set up)");
  if (request.path.empty()) return InvalidArgument("the agent works on a file: save the buffer first");
  agent::RepositoryTask task{request.path, {request.task.full_name}, "", request.text};
  const Clock::time_point start = Clock::now();
  int checks = 0, calls = 0;
  long tokens = 0;
  for (int i = 0; i < request.k; ++i) {
    agent::AgentOptions options = options_.agent;
    options.sampling = options_.prover.sampling;
    options.sampling.seed = options_.prover.sampling.seed + static_cast<uint64_t>(i);
    options.guard = options_.prover.guard;
    options.cancel = &cancel_;
    AgentRunObserver observer(request.run_id, i, events_);
    options.observer = &observer;
    LR_ASSIGN_OR_RETURN(agent::AgentOutcome o,
                        agent::RunAgent(task, *model_.model, *options_.tools, *options_.checker, options));
    checks += o.checks;
    calls += o.tool_calls;
    tokens += o.tokens;
    if (!o.proved) events_->Post(AttemptEvent{request.run_id, i, o.turns, AttemptState::kFailed, "", o.stop_reason});
    if (o.proved || i + 1 == request.k) {
      char detail[160];
      std::snprintf(detail, sizeof detail, " (%d agents, %d tool calls, %d checks, %ld tokens, %.1f s)", i + 1, calls,
                    checks, tokens, SecondsSince(start));
      return (o.proved ? std::string("proved") : o.stop_reason) + detail;
    }
  }
  return std::string("no agents");
}

void Worker::CheckBuffer(const CheckRequest& request) {
  if (request.version < latest_check_.load()) return;  // a newer version of the buffer is queued
  if (options_.checker == nullptr)
    return events_->Post(CheckedEvent{request.version, false, {}, "Lean " + options_.lean_state});
  events_->Post(LeanStateEvent{"checking"});
  agent::CheckRequest check{request.text, options_.project_root, request.path};
  check.cancel = &shutdown_;
  Result<agent::LeanReport> report = options_.checker->Check(check);
  if (shutdown_.load()) return;
  if (!report.ok()) {
    events_->Post(LeanStateEvent{"error: " + report.status().ToString()});
    return events_->Post(CheckedEvent{request.version, false, {}, report.status().ToString()});
  }
  events_->Post(LeanStateEvent{"ready"});
  if (!report->worker_crash.empty())  // a verdict on the buffer's text, without messages to show
    return events_->Post(CheckedEvent{request.version, false, {}, report->worker_crash});
  events_->Post(CheckedEvent{request.version, true, std::move(report).value(), ""});
}

}  // namespace lr::tui
