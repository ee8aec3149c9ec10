#include "inference/sampler.h"

#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace lr::inference {

double KlDivergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  std::vector<double> lp, lq;
  ops::LogSoftmax(p_logits, &lp);
  ops::LogSoftmax(q_logits, &lq);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return kl;
}

namespace {

// Bytes at the end of `s` that begin a UTF-8 character whose remaining bytes have not arrived yet.
size_t IncompleteUtf8Tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t len = 1;
    if ((c & 0xE0) == 0xC0)
      len = 2;
    else if ((c & 0xF0) == 0xE0)
      len = 3;
    else if ((c & 0xF8) == 0xF0)
      len = 4;
    return len > back ? back : 0;
  }
  return 0;
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> recent) {
  const int n = static_cast<int>(logits.size());
  penalised_.assign(logits.begin(), logits.end());
  if (params_.repeat_penalty != 1.0f) {
    distinct_.assign(recent.begin(), recent.end());
    std::sort(distinct_.begin(), distinct_.end());
    distinct_.erase(std::unique(distinct_.begin(), distinct_.end()), distinct_.end());
    for (int32_t id : distinct_) {
      if (id < 0 || id >= n) continue;
      float& l = penalised_[id];
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }
  if (params_.temperature <= 0.0f)
    return static_cast<int32_t>(std::max_element(penalised_.begin(), penalised_.end()) - penalised_.begin());

  candidates_.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) candidates_[i] = {i, penalised_[i]};
  const auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) keep = static_cast<size_t>(params_.top_k);
  std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  candidates_.resize(keep);

  // Softmax at the temperature, in place of the logits (candidates are sorted, the first is the largest).
  const float max_logit = candidates_[0].logit;
  double total = 0;
  for (Candidate& c : candidates_) {
    c.logit = std::exp((c.logit - max_logit) / params_.temperature);
    total += c.logit;
  }
  for (Candidate& c : candidates_) c.logit = static_cast<float>(c.logit / total);

  if (params_.top_p < 1.0f) {
    double cum = 0;
    size_t i = 0;
    while (i < candidates_.size()) {
      cum += candidates_[i++].logit;
      if (cum >= params_.top_p) break;
    }
    candidates_.resize(i);
  }
  if (params_.min_p > 0.0f) {
    const float floor = params_.min_p * candidates_[0].logit;
    size_t i = 1;
    while (i < candidates_.size() && candidates_[i].logit >= floor) ++i;
    candidates_.resize(i);
  }

  double mass = 0;
  for (const Candidate& c : candidates_) mass += c.logit;
  const double r = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  double cum = 0;
  for (const Candidate& c : candidates_) {
    cum += c.logit;
    if (r < cum) return c.id;
  }
  return candidates_.back().id;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::Push(std::string_view piece) {
  if (stopped_) return {};
  pending_.append(piece);
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string, and an unfinished character.
  size_t hold = IncompleteUtf8Tail(pending_);
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() {
  if (stopped_) return {};
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace lr::inference
