#pragma once
// Writing a GGUF-embedded vocabulary back out as Hugging Face tokenizer files, so a model imported from
// GGUF (the embedded default) converts and exports to a self-contained folder that transformers, vLLM
// and our own loader can all tokenize for.
#include <nlohmann/json.hpp>
#include <string>

#include "data/tokenizer.h"

namespace mlaforge {

struct HfTokenizerFiles {
  nlohmann::json tokenizer;         // tokenizer.json
  nlohmann::json tokenizer_config;  // tokenizer_config.json (bos/eos/pad tokens, chat template)
};

// Byte-level BPE ("gpt2") vocabularies with the pre-tokenizers tokenizer_from_gguf_vocab supports.
// SentencePiece ("llama") GGUF vocabularies are merge-free (score ordered) and are refused.
HfTokenizerFiles gguf_vocab_to_hf(const GgufVocab& vocab, const std::string& chat_template);

}  // namespace mlaforge
