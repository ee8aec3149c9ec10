// The calibration text, its prefill on an f16 cache, and the statistics of its rows and queries.
#include "inference/kv_calibration.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>

#include "base/file.h"
#include "inference/kv_cache.h"
#include "inference/model.h"
#include "inference/tokenizer.h"
#include "ops/kernels.h"

namespace lr::inference {
namespace {

constexpr double kKeyWeightPower = 0.15;  // a in kv_calibration.h
constexpr size_t kPrefillChunk = 64;      // tokens per Forward call of the calibration prefill (a cancel waits for one)
constexpr double kValueWeightPower = 0.2;  // b

// One (layer, head)'s stored rows over positions 1..n-1 (decoded with the cache's f16 codec), less the rotating
// center at each row's position: writes their mean to center[0..dim) and returns the per-channel sums of squares
// about it.
std::vector<double> RowMoments(const kvquant::RowCodec& codec, const std::function<const uint8_t*(int)>& row_at, int n,
                               std::span<const kvquant::RotatingCenter> rotating, float* center) {
  const int dim = codec.dim();
  std::vector<double> sum(dim, 0.0), energy(dim, 0.0);
  std::vector<float> row(dim);
  auto decode = [&](int pos) {
    codec.DecodeRow(row_at(pos), row.data());
    for (const kvquant::RotatingCenter& p : rotating) {
      float ua, ub;
      kvquant::RotatingCenterAt(p, pos, &ua, &ub);
      row[p.a] -= ua;
      row[p.b] -= ub;
    }
  };
  for (int pos = 1; pos < n; ++pos) {
    decode(pos);
    for (int c = 0; c < dim; ++c) sum[c] += row[c];
  }
  for (int c = 0; c < dim; ++c) center[c] = static_cast<float>(sum[c] / (n - 1));
  for (int pos = 1; pos < n; ++pos) {
    decode(pos);
    for (int c = 0; c < dim; ++c) energy[c] += (static_cast<double>(row[c]) - center[c]) * (row[c] - center[c]);
  }
  return energy;
}

// The key rows' RoPE pairs with a constant offset before RoPE (kv_calibration.h, "Rotating centers"): for each pair,
// the mean of the rows turned back by their positions' angles; pairs whose offset is at least kRotatingShare of the
// rows' energy about their means, largest first, at most kMaxRotatingPairs.
constexpr double kRotatingShare = 0.01;
constexpr int kMaxRotatingPairs = 8;
std::vector<kvquant::RotatingCenter> KeyRotatingCenter(const Model& model, const kvquant::RowCodec& codec,
                                                       const std::function<const uint8_t*(int)>& row_at, int n) {
  const ModelConfig& cfg = model.config();
  const std::span<const float> theta = model.rope_inv_freq();
  const int n_pairs = static_cast<int>(theta.size()), dim = codec.dim();
  std::vector<kvquant::RotatingCenter> pairs(n_pairs);
  const bool adjacent = cfg.rope.style == ops::RopeStyle::kAdjacentPairs;
  for (int j = 0; j < n_pairs; ++j) {
    pairs[j] = {adjacent ? 2 * j : j, adjacent ? 2 * j + 1 : j + cfg.rope.n_rot / 2, theta[j], 0.0f, 0.0f};
  }
  std::vector<double> sa(n_pairs, 0.0), sb(n_pairs, 0.0), sum(dim, 0.0), sq(dim, 0.0);
  std::vector<float> row(dim);
  for (int pos = 1; pos < n; ++pos) {
    codec.DecodeRow(row_at(pos), row.data());
    for (int c = 0; c < dim; ++c) sum[c] += row[c], sq[c] += static_cast<double>(row[c]) * row[c];
    for (int j = 0; j < n_pairs; ++j) {  // R(-pos·theta)·(x_a, x_b)
      const double angle = static_cast<double>(pos) * theta[j], c = std::cos(angle), s = std::sin(angle);
      const double xa = row[pairs[j].a], xb = row[pairs[j].b];
      sa[j] += xa * c + xb * s;
      sb[j] += -xa * s + xb * c;
    }
  }
  const double count = n - 1;
  double spread = 0;  // Σ_c E[(x_c - mean_c)²]: the rows' energy about their plain means
  for (int c = 0; c < dim; ++c) spread += sq[c] / count - (sum[c] / count) * (sum[c] / count);
  for (int j = 0; j < n_pairs; ++j) {
    pairs[j].ca = static_cast<float>(sa[j] / count);
    pairs[j].cb = static_cast<float>(sb[j] / count);
  }
  auto offset = [](const kvquant::RotatingCenter& p) { return static_cast<double>(p.ca) * p.ca + p.cb * p.cb; };
  std::sort(pairs.begin(), pairs.end(), [&](const auto& x, const auto& y) { return offset(x) > offset(y); });
  size_t keep = 0;
  while (keep < pairs.size() && static_cast<int>(keep) < kMaxRotatingPairs &&
         offset(pairs[keep]) >= kRotatingShare * spread)
    ++keep;
  pairs.resize(keep);
  return pairs;
}

// w_c = (want_c / have_c)^power over the channels, both normalized to sum 1 (and floored at 1e-4 of the mean, so
// that a channel without energy gets a large but finite weight), scaled to a geometric mean of 1.
void ChannelWeights(const std::vector<double>& want, const std::vector<double>& have, double power, float* out) {
  const int dim = static_cast<int>(want.size());
  double want_sum = 0, have_sum = 0;
  for (int c = 0; c < dim; ++c) want_sum += want[c], have_sum += have[c];
  const double floor = 1e-4 / dim;
  std::vector<double> log_w(dim);
  double log_mean = 0;
  for (int c = 0; c < dim; ++c) {
    log_w[c] = power * (std::log(want[c] / want_sum + floor) - std::log(have[c] / have_sum + floor));
    log_mean += log_w[c] / dim;
  }
  for (int c = 0; c < dim; ++c) out[c] = static_cast<float>(std::exp(log_w[c] - log_mean));
}

// Σ over rows of W_o[r][c]² for every column c of layer's attn_output (n_embd rows of n_head * v_dim).
Result<std::vector<double>> OutputColumnEnergy(const Model& model, int layer, int v_dim) {
  const ModelConfig& cfg = model.config();
  const std::string name = "blk." + std::to_string(layer) + ".attn_output.weight";
  LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, model.gguf().FindTensor(name));
  const int64_t cols = static_cast<int64_t>(cfg.n_head) * v_dim;
  if (t->shape.size() != 2 || t->shape[0] != cols || t->shape[1] != cfg.n_embd)
    return Corrupt(model.gguf().path() + ": tensor " + name + " is not " + std::to_string(cfg.n_embd) + " rows of " +
                   std::to_string(cols) + " values (n_head * value_length)");
  const size_t row_bytes = ops::RowBytes(t->type, cols);
  std::vector<double> energy(cols, 0.0);
  std::vector<float> row(cols);
  for (int r = 0; r < cfg.n_embd; ++r) {
    ops::DequantizeRow(t->type, t->data + r * row_bytes, row.data(), cols);
    for (int64_t c = 0; c < cols; ++c) energy[c] += static_cast<double>(row[c]) * row[c];
  }
  return energy;
}

}  // namespace

Result<std::shared_ptr<const KvCalibration>> ComputeKvCalibration(Model& model, const Tokenizer& tokenizer,
                                                                  const std::atomic<bool>* cancel) {
  std::vector<int32_t> tokens;
  if (tokenizer.add_bos() && tokenizer.bos() >= 0) tokens.push_back(tokenizer.bos());
  const std::vector<int32_t> text = tokenizer.Encode(KvCalibrationText(), false);
  tokens.insert(tokens.end(), text.begin(), text.end());
  const KvShape shape = model.kv_shape();
  const size_t heads = static_cast<size_t>(shape.n_layer) * shape.n_head_kv;
  // Σ q_c² per (layer, head) over the queries of its group, all positions.
  std::vector<double> q_energy(heads * shape.k_dim, 0.0);
  size_t queries = 0;
  std::mutex q_mutex;
  KvCacheOptions o;  // f16 keys and values, no calibration: the rows as the model computed them
  o.max_tokens = static_cast<int>(tokens.size());
  o.observe_queries = [&](int layer, int head, const float* q, int n_q) {
    const std::lock_guard<std::mutex> lock(q_mutex);
    double* e = &q_energy[(static_cast<size_t>(layer) * shape.n_head_kv + head) * shape.k_dim];
    for (int i = 0; i < n_q * shape.k_dim; ++i) e[i % shape.k_dim] += static_cast<double>(q[i]) * q[i];
    queries += n_q;
  };
  LR_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape, o));
  const int seq = cache.NewSequence();
  std::vector<float> logits;
  for (size_t begin = 0; begin < tokens.size(); begin += kPrefillChunk) {  // a cancel is seen between chunks
    if (cancel != nullptr && cancel->load()) return Cancelled("KV calibration cancelled");
    const size_t end = std::min(tokens.size(), begin + kPrefillChunk);
    std::vector<BatchToken> batch;
    for (size_t i = begin; i < end; ++i) batch.push_back({seq, tokens[i], i + 1 == end});
    LR_RETURN_IF_ERROR(model.Forward(cache, batch, &logits).WithContext("KV calibration prefill"));
  }

  auto cal = std::make_shared<KvCalibration>();
  cal->shape = shape;
  cal->k_center.resize(heads * shape.k_dim);
  cal->v_center.resize(heads * shape.v_dim);
  const int n = static_cast<int>(tokens.size());
  // Weights need the queries (a cache whose attention does not go through KvCache::Attend, MLA, has none seen) and
  // value rows of their own.
  const bool weights = shape.v_dim > 0 && queries > 0;
  if (weights) {
    cal->k_weights.resize(heads * shape.k_dim);
    cal->v_weights.resize(heads * shape.v_dim);
  }
  cal->k_rotating_center.resize(heads);
  const ModelConfig& cfg = model.config();
  const int group = cfg.n_head / cfg.n_head_kv;  // query heads head * group .. head * group + group - 1 read KV head
  for (int layer = 0; layer < shape.n_layer; ++layer) {
    std::vector<double> out_energy;
    if (weights) {
      LR_ASSIGN_OR_RETURN(out_energy, OutputColumnEnergy(model, layer, shape.v_dim));
    }
    for (int head = 0; head < shape.n_head_kv; ++head) {
      const size_t h = static_cast<size_t>(layer) * shape.n_head_kv + head;
      const auto k_row = [&](int pos) { return cache.KRow(seq, layer, head, pos); };
      if (weights) cal->k_rotating_center[h] = KeyRotatingCenter(model, cache.k_codec(layer, head), k_row, n);
      const std::vector<double> k_energy = RowMoments(
          cache.k_codec(layer, head), k_row, n, cal->KRotatingCenter(layer, head), &cal->k_center[h * shape.k_dim]);
      if (shape.v_dim == 0) continue;
      const std::vector<double> v_energy = RowMoments(
          cache.v_codec(layer, head), [&](int pos) { return cache.VRow(seq, layer, head, pos); }, n, {},
          &cal->v_center[h * shape.v_dim]);
      if (!weights) continue;
      const std::vector<double> q(q_energy.begin() + h * shape.k_dim, q_energy.begin() + (h + 1) * shape.k_dim);
      ChannelWeights(q, k_energy, kKeyWeightPower, &cal->k_weights[h * shape.k_dim]);
      std::vector<double> out(shape.v_dim, 0.0);
      for (int i = 0; i < group; ++i)
        for (int c = 0; c < shape.v_dim; ++c)
          out[c] += out_energy[(static_cast<size_t>(head) * group + i) * shape.v_dim + c];
      ChannelWeights(out, v_energy, kValueWeightPower, &cal->v_weights[h * shape.v_dim]);
    }
  }
  return std::shared_ptr<const KvCalibration>(std::move(cal));
}

namespace {

constexpr char kMagic[8] = {'L', 'R', 'K', 'V', 'C', 'A', 'L', '\0'};

uint64_t Fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// The model fingerprint of kv_calibration.h: size, the first 4 MiB, 64 KiB at 64 evenly spaced offsets after that.
Result<uint64_t> ModelFingerprint(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open " + path + ": " + std::strerror(errno));
  const off_t size = ::lseek(fd, 0, SEEK_END);
  uint64_t h = Fnv1a(&size, sizeof size);
  constexpr off_t kHead = off_t{4} << 20, kSample = off_t{64} << 10;
  constexpr int kSamples = 64;
  std::vector<char> buf(static_cast<size_t>(kHead));
  auto hash_range = [&](off_t offset, off_t n) -> Status {
    n = std::min(n, size - offset);
    if (n <= 0) return Status::Ok();
    const ssize_t got = ::pread(fd, buf.data(), static_cast<size_t>(n), offset);
    if (got != n) return IoError("cannot read " + path + " at byte " + std::to_string(offset));
    h = Fnv1a(buf.data(), static_cast<size_t>(n), h);
    return Status::Ok();
  };
  Status s = hash_range(0, kHead);
  for (int i = 0; s.ok() && i < kSamples && size > kHead; ++i)
    s = hash_range(kHead + (size - kHead) / kSamples * i, kSample);
  ::close(fd);
  if (!s.ok()) return s;
  return h;
}

void Put(std::string* out, const void* p, size_t n) { out->append(static_cast<const char*>(p), n); }
template <typename T>
void PutValue(std::string* out, T v) {
  Put(out, &v, sizeof v);
}
void PutFloats(std::string* out, const std::vector<float>& v) {
  PutValue<uint64_t>(out, v.size());
  Put(out, v.data(), v.size() * sizeof(float));
}

// Reads what SaveKvCalibration wrote, failing on the first value that is not there.
class Reader {
 public:
  Reader(std::string_view data, const std::string& path) : data_(data), path_(path) {}
  template <typename T>
  Result<T> Value(const char* what) {
    T v;
    if (data_.size() - pos_ < sizeof v) return Short(what);
    std::memcpy(&v, data_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  // `expected` values, or none when `may_be_empty`.
  Result<std::vector<float>> Floats(const char* what, size_t expected, bool may_be_empty = false) {
    LR_ASSIGN_OR_RETURN(uint64_t n, Value<uint64_t>(what));
    if (n != expected && !(may_be_empty && n == 0))
      return Corrupt(path_ + ": " + what + " holds " + std::to_string(n) + " values, the model needs " +
                     std::to_string(expected) + " (delete the file to compute the calibration again)");
    if ((data_.size() - pos_) / sizeof(float) < n) return Short(what);
    std::vector<float> v(n);
    std::memcpy(v.data(), data_.data() + pos_, n * sizeof(float));
    pos_ += n * sizeof(float);
    return v;
  }
  size_t pos() const { return pos_; }

 private:
  Status Short(const char* what) const {
    return Corrupt(path_ + ": truncated at byte " + std::to_string(pos_) + " (" + what +
                   "); delete the file to compute the calibration again");
  }
  std::string_view data_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

std::string DefaultCacheDir() {
  if (const char* dir = std::getenv("LEANROTOR_CACHE_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return std::string(xdg) + "/leanrotor";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return std::string(home) + "/.cache/leanrotor";
  return "";
}

Result<std::string> KvCalibrationPath(const std::string& cache_dir, const std::string& gguf_path) {
  LR_ASSIGN_OR_RETURN(uint64_t fingerprint, ModelFingerprint(gguf_path));
  const std::string_view text = KvCalibrationText();
  return cache_dir + "/kvcal-v" + std::to_string(kKvCalibrationVersion) + "-" + Hex(fingerprint) + "-" +
         Hex(Fnv1a(text.data(), text.size())) + ".bin";
}

Status SaveKvCalibration(const KvCalibration& c, const std::string& path) {
  std::string out;
  Put(&out, kMagic, sizeof kMagic);
  PutValue<uint32_t>(&out, kKvCalibrationVersion);
  for (int v : {c.shape.n_layer, c.shape.n_head_kv, c.shape.k_dim, c.shape.v_dim}) PutValue<int32_t>(&out, v);
  for (const auto* v : {&c.k_center, &c.v_center, &c.k_weights, &c.v_weights}) PutFloats(&out, *v);
  PutValue<uint64_t>(&out, c.k_rotating_center.size());
  for (const std::vector<kvquant::RotatingCenter>& head : c.k_rotating_center) {
    PutValue<uint32_t>(&out, static_cast<uint32_t>(head.size()));
    for (const kvquant::RotatingCenter& p : head) {
      PutValue<int32_t>(&out, p.a);
      PutValue<int32_t>(&out, p.b);
      for (float f : {p.theta, p.ca, p.cb}) PutValue<float>(&out, f);
    }
  }
  PutValue<uint64_t>(&out, Fnv1a(out.data(), out.size()));
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return IoError("cannot create " + std::filesystem::path(path).parent_path().string() + ": " + ec.message());
  return WriteFileAtomic(path, out);
}

Result<std::shared_ptr<const KvCalibration>> LoadKvCalibration(const std::string& path, const KvShape& shape) {
  LR_ASSIGN_OR_RETURN(std::string data, ReadFile(path));
  auto damaged = [&](const std::string& why) {
    return Corrupt(path + ": " + why + "; delete the file to compute the calibration again");
  };
  if (data.size() < sizeof kMagic + sizeof(uint64_t) || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
    return damaged("not a leanrotor KV calibration file");
  uint64_t checksum;
  std::memcpy(&checksum, data.data() + data.size() - sizeof checksum, sizeof checksum);
  if (checksum != Fnv1a(data.data(), data.size() - sizeof checksum)) return damaged("checksum mismatch (damaged)");
  Reader in(std::string_view(data).substr(sizeof kMagic, data.size() - sizeof kMagic - sizeof checksum), path);
  LR_ASSIGN_OR_RETURN(uint32_t version, in.Value<uint32_t>("version"));
  if (version != static_cast<uint32_t>(kKvCalibrationVersion))
    return damaged("calibration version " + std::to_string(version) + ", expected " +
                   std::to_string(kKvCalibrationVersion));
  auto c = std::make_shared<KvCalibration>();
  for (int* v : {&c->shape.n_layer, &c->shape.n_head_kv, &c->shape.k_dim, &c->shape.v_dim}) {
    LR_ASSIGN_OR_RETURN(*v, in.Value<int32_t>("shape"));
  }
  if (c->shape.n_layer != shape.n_layer || c->shape.n_head_kv != shape.n_head_kv || c->shape.k_dim != shape.k_dim ||
      c->shape.v_dim != shape.v_dim)
    return damaged("its KV shape does not match the model's");
  const size_t heads = static_cast<size_t>(shape.n_layer) * shape.n_head_kv;
  LR_ASSIGN_OR_RETURN(c->k_center, in.Floats("k_center", heads * shape.k_dim));
  LR_ASSIGN_OR_RETURN(c->v_center, in.Floats("v_center", heads * shape.v_dim));
  LR_ASSIGN_OR_RETURN(c->k_weights, in.Floats("k_weights", heads * shape.k_dim, /*may_be_empty=*/true));
  LR_ASSIGN_OR_RETURN(c->v_weights, in.Floats("v_weights", c->k_weights.empty() ? 0 : heads * shape.v_dim));
  LR_ASSIGN_OR_RETURN(uint64_t n_heads, in.Value<uint64_t>("rotating centers"));
  if (n_heads != heads && n_heads != 0) return damaged("rotating centers for " + std::to_string(n_heads) + " heads");
  c->k_rotating_center.resize(n_heads);
  for (std::vector<kvquant::RotatingCenter>& head : c->k_rotating_center) {
    LR_ASSIGN_OR_RETURN(uint32_t pairs, in.Value<uint32_t>("rotating center"));
    if (pairs > static_cast<uint32_t>(shape.k_dim)) return damaged("a head with " + std::to_string(pairs) + " pairs");
    head.resize(pairs);
    for (kvquant::RotatingCenter& p : head) {
      LR_ASSIGN_OR_RETURN(p.a, in.Value<int32_t>("pair"));
      LR_ASSIGN_OR_RETURN(p.b, in.Value<int32_t>("pair"));
      LR_ASSIGN_OR_RETURN(p.theta, in.Value<float>("pair"));
      LR_ASSIGN_OR_RETURN(p.ca, in.Value<float>("pair"));
      LR_ASSIGN_OR_RETURN(p.cb, in.Value<float>("pair"));
      if (p.a < 0 || p.b < 0 || p.a >= shape.k_dim || p.b >= shape.k_dim || p.a == p.b)
        return damaged("a rotating-center pair outside the key row");
    }
  }
  if (in.pos() != data.size() - sizeof kMagic - sizeof checksum) return damaged("trailing bytes");
  return std::shared_ptr<const KvCalibration>(std::move(c));
}

Result<std::shared_ptr<const KvCalibration>> CachedKvCalibration(Model& model, const Tokenizer& tokenizer,
                                                                 const std::string& cache_dir,
                                                                 const std::atomic<bool>* cancel, bool* loaded) {
  if (loaded != nullptr) *loaded = false;
  if (cache_dir.empty()) return ComputeKvCalibration(model, tokenizer, cancel);
  LR_ASSIGN_OR_RETURN(std::string path, KvCalibrationPath(cache_dir, model.gguf().path()));
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    LR_ASSIGN_OR_RETURN(std::shared_ptr<const KvCalibration> stored, LoadKvCalibration(path, model.kv_shape()));
    if (loaded != nullptr) *loaded = true;
    return stored;
  }
  LR_ASSIGN_OR_RETURN(std::shared_ptr<const KvCalibration> computed, ComputeKvCalibration(model, tokenizer, cancel));
  LR_RETURN_IF_ERROR(SaveKvCalibration(*computed, path).WithContext("storing the KV calibration"));
  return computed;
}

}  // namespace lr::inference
