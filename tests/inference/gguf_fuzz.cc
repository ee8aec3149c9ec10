// libFuzzer target for the GGUF parser: any byte string either parses, with every value and tensor readable, or is
// rejected with a message. Built only when the compiler is clang with -fsanitize=fuzzer (see CMakeLists.txt):
//   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja && cmake --build build-fuzz --target gguf_fuzz
//   build-fuzz/tests/inference/gguf_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "inference/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using lr::inference::GgufFile;
  auto f = GgufFile::FromBytes(std::vector<uint8_t>(data, data + size), "fuzz.gguf");
  if (!f.ok()) {
    if (f.status().message().empty()) std::abort();
    return 0;
  }
  for (const std::string& k : f->Keys()) {
    (void)f->GetU32(k);
    (void)f->GetU64(k);
    (void)f->GetF32(k);
    (void)f->GetBool(k);
    (void)f->GetString(k);
    (void)f->GetStringArray(k);
    (void)f->GetF32Array(k);
    (void)f->GetI32Array(k);
  }
  volatile uint8_t sink = 0;
  for (const auto& t : f->tensors())
    for (size_t i = 0; i < t.bytes; ++i) sink = sink + t.data[i];
  return 0;
}
