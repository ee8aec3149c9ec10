// Choosing the next token from logits, comparing the distributions logits define, and cutting the generated text at
// stop strings.
//
// Sampler applies, in order (as llama.cpp's default chain does): the repetition penalty over the recent tokens, top-k,
// temperature, softmax, top-p, min-p, then draws from what is left with its own seeded generator. Temperature 0 is
// greedy (the largest logit after the penalty; ties go to the lowest id). Same params, seed and logits: same tokens.
//
// StopMatcher turns a stream of token pieces into text that is safe to show: it holds back the bytes of an
// unfinished UTF-8 character (a token may end inside one) and any tail that could still become a stop string, and
// ends the text right before the first stop string.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lm/language_model.h"

namespace lr::inference {

// KL(p || q) in nats between the distributions that two rows of logits define (p the reference).
double KlDivergence(std::span<const float> p_logits, std::span<const float> q_logits);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // `recent`: the tokens the repetition penalty looks at (callers pass the last kPenaltyWindow generated and
  // prompt tokens); each distinct id is penalised once.
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> recent);

  static constexpr int kPenaltyWindow = 64;

 private:
  struct Candidate {
    int32_t id;
    float logit;
  };

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<Candidate> candidates_;
  std::vector<float> penalised_;
  std::vector<int32_t> distinct_;
};

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds one token's bytes; returns the text that became safe to emit (possibly empty). After a stop string is seen,
  // stopped() is true and nothing more is returned.
  std::string Push(std::string_view piece);
  // At the end of generation: whatever was held back (an unfinished UTF-8 character's bytes included).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // received, not yet emitted
  bool stopped_ = false;
};

}  // namespace lr::inference
