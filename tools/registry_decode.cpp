// The built-in decode and eviction methods of spattn-compare's registry (declared in
// compare_methods.hpp). Compiled once into spattn_compare_methods, which the tool and its tests
// link: these instantiate the decode kernels over full and compacted caches for every dtype.
#include "compare_methods.hpp"

namespace spattn::compare {

std::vector<method> builtin_decode_methods() {
  std::vector<method> m;
  m.push_back(
      decode_method(policies::quest{}, "quest",
                    "policies::quest: per step, the top pages of 16 tokens by their min/max "
                    "key bound (shared by a GQA group) + the current page; full cache kept"));
  m.push_back(
      eviction_method(policies::snapkv{}, "snapkv",
                      "policies::snapkv: evicts the prompt's cache once, keeping per KV head "
                      "the tokens the last 256 prompt queries attend (pooled, kernel 21)"));
  m.push_back(eviction_method(policies::ada_snapkv{}, "ada-snapkv",
                              "policies::ada_snapkv: as snapkv (max/max scores), the budget shared "
                              "across KV heads (floor 0.2 of the uniform share)"));
  m.push_back(eviction_method(policies::streaming_llm{}, "streaming-llm",
                              "policies::streaming_llm: evicts the prompt's cache to 4 sinks + the "
                              "recent window"));
  return m;
}

}  // namespace spattn::compare
