// The nnunet_export.json document stored in an exported file (extra/nnunet_export.json),
// reduced to the fields a deployment needs. Parsed with the system cJSON library.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace nnunet_infer {

// Newest metadata format_version this reader understands.
constexpr int64_t kMetadataFormatVersion = 1;

struct Metadata {
    int64_t format_version = 0;
    std::string file_format;      // "torchscript"; empty when absent
    std::string export_method;    // "script" or "trace"; empty when absent
    std::string dataset_name;
    std::string configuration;
    std::string trainer_name;
    std::string checkpoint_name;  // empty when absent
    std::vector<std::string> folds;  // ints printed as text; "all" stays "all"
    std::vector<std::pair<std::string, std::string>> weights_sha256;  // fold -> hex digest, file order
    std::vector<int64_t> patch_size;
    int64_t num_input_channels = 0;
    int64_t num_output_channels = 0;
    // A whole prediction pipeline (metadata "pipeline" present): predict_logits takes one
    // preprocessed volume (C, *spatial) and returns fp16 logits; otherwise forward takes a batch.
    bool pipeline = false;
    std::string pipeline_mode;  // "exact" or "fast" for a pipeline
};

// Parses the document; `source` names the model file in messages. Throws std::runtime_error
// (one line: what is missing or wrong and where) when the text is not JSON, not an
// nnunet_export document, of a newer format_version, or lacks a required field.
Metadata parse_metadata(const std::string& json, const std::string& source);

// Prints one "name  value" line per field, sha256 one line per fold.
void print_metadata(std::ostream& out, const Metadata& meta);

}  // namespace nnunet_infer
