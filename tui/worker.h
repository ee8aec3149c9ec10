// The session's background work: model and Lean off the UI thread.
//
// Two threads, each running its jobs in order: the model thread (load a model, run the prover for one theorem) and
// the Lean thread (check the whole buffer for its diagnostics and goals). Neither touches the view model: they post
// Events (tui/session.h) into an EventQueue, which the UI thread drains between key presses. The prover reports
// progress through agent::ProverObserver; the worker turns that into per-candidate events (generating turn n,
// streamed text, checking, judged) and a tokens-per-second figure for the status line.
//
// Cancel (Esc) sets the running proof's cancel flag at once, from the UI thread; the prover stops at its next piece
// or request, or its Lean check stops, and the run ends as "cancelled". Destroying the worker cancels everything in
// flight the same way (a model load, a proof, a check of the buffer) before it joins the threads.
//
// With the agent style, candidate i is the i-th agent run (agent/agent_loop.h) on the theorem, from the buffer's
// text: its replies, tool calls ("> name {arguments}") and results ("< result", cut to a few lines) stream into its
// pane; the run stops at the first agent whose proof the guard accepted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent_loop.h"
#include "agent/lean_checker.h"
#include "agent/prover.h"
#include "lm/language_model.h"
#include "tui/session.h"

namespace lr::tui {

// Many producers, one consumer (the UI thread).
class EventQueue {
 public:
  void Post(Event event);
  std::vector<Event> Drain();

 private:
  std::mutex mu_;
  std::vector<Event> events_;
};

// A loaded model and what the status line says about it.
struct ModelHandle {
  std::unique_ptr<LanguageModel> model;
  std::string kv_formats;  // "K q8_0 / V iso3"; empty when the backend does not say (remote)
  // KV memory in use (bytes) and the fraction of it shared between sequences; empty when not known.
  std::function<void(double* bytes, double* shared)> kv_usage;
};

// Opens a model by name or path with the given KV formats; an empty argument means "as before". Called on the model
// thread; returns kCancelled soon after `cancel` is set (the worker is going away).
using ModelOpener = std::function<Result<ModelHandle>(const std::string& model, const std::string& kv,
                                                      const std::atomic<bool>* cancel)>;

// One thread running posted jobs in order. The destructor drops the jobs not yet started and joins.
class JobThread {
 public:
  JobThread();
  ~JobThread();
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;
  void Post(std::function<void()> job);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

class Worker {
 public:
  struct Options {
    ModelOpener open_model;
    std::string model;  // what to load at start (through open_model); empty: nothing
    std::string kv;
    // Lean: null when Lean is missing; `lean_state` then says why and how to install it.
    std::unique_ptr<agent::LeanChecker> checker;
    std::string lean_state = "ready";
    std::string project_root;     // for checks of the buffer and proofs
    agent::ProverOptions prover;  // k and turns come from each request; cancel and observer are the worker's
    // prover.style kAgent: the tools over the project (agent/tools.h) and the agent loop's budgets. Each of the k
    // candidates is one agent run from the buffer's text; its tool calls and results stream into its pane.
    std::shared_ptr<agent::ToolBox> tools;
    agent::AgentOptions agent;
  };

  Worker(Options options, EventQueue* events);
  ~Worker();  // cancels a model load, a running proof and a Lean check, and joins both threads

  // Takes the requests that need the model or Lean: ProveRequest, CancelRequest, CheckRequest, LoadModelRequest.
  // Others are the caller's (open, save, quit). Returns at once.
  void Handle(const Request& request);

 private:
  void LoadModel(const std::string& model, const std::string& kv);
  void RunProof(const ProveRequest& request);
  Result<std::string> RunAgents(const ProveRequest& request);
  void CheckBuffer(const CheckRequest& request);
  void PostStatus(double tokens_per_second);

  Options options_;
  EventQueue* events_;
  ModelHandle model_;        // model thread only
  std::string model_error_;  // model thread only: why there is no model
  std::mutex cancel_mu_;     // orders the writes of cancel_ (the prover's flag)
  std::atomic<bool> cancel_{false};
  std::atomic<bool> shutdown_{false};  // the worker is going away: everything stops
  std::atomic<int> cancel_run_{0};     // runs up to this id are cancelled
  int last_run_ = 0;                   // UI thread only
  std::atomic<int> latest_check_{0};   // checks of older buffer versions are skipped
  // Declared last: destroyed (joined) first, while everything their jobs use is still alive.
  JobThread lean_thread_;
  JobThread model_thread_;
};

}  // namespace lr::tui
