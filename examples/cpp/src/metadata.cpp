#include "metadata.h"

#include <cjson/cJSON.h>

#include <cmath>
#include <iomanip>
#include <memory>
#include <stdexcept>

namespace nnunet_infer {
namespace {

using JsonPtr = std::unique_ptr<cJSON, decltype(&cJSON_Delete)>;

// Largest integer a JSON double holds exactly; larger values may have been rounded.
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53

class Reader {
public:
    explicit Reader(std::string source) : source_(std::move(source)) {}

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw std::runtime_error(source_ + ": metadata field '" + key + "' " + what);
    }

    const cJSON* member(const cJSON* object, const std::string& parent, const char* name) const {
        const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, name);
        if (item == nullptr) {
            fail(parent + name, "is missing");
        }
        return item;
    }

    std::string string(const cJSON* object, const std::string& parent, const char* name, bool required) const {
        const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, name);
        if (item == nullptr || (!required && cJSON_IsNull(item))) {
            if (required) {
                fail(parent + name, "is missing");
            }
            return std::string();
        }
        if (!cJSON_IsString(item)) {
            fail(parent + name, "must be a string");
        }
        return item->valuestring;
    }

    // cJSON numbers are doubles: accept only finite, integral values in the exact range.
    int64_t integer(const cJSON* item, const std::string& key, int64_t minimum) const {
        if (!cJSON_IsNumber(item)) {
            fail(key, "must be an integer");
        }
        const double value = item->valuedouble;
        if (!std::isfinite(value) || std::floor(value) != value || value > kMaxExactInteger ||
            value < static_cast<double>(minimum)) {
            fail(key, "must be an integer >= " + std::to_string(minimum));
        }
        return static_cast<int64_t>(value);
    }

private:
    std::string source_;
};

std::string fold_text(const Reader& reader, const cJSON* item, const std::string& key) {
    if (cJSON_IsString(item)) {
        return item->valuestring;
    }
    return std::to_string(reader.integer(item, key, 0));
}

}  // namespace

Metadata parse_metadata(const std::string& json, const std::string& source) {
    const char* parse_end = nullptr;
    // return_parse_end instead of cJSON_GetErrorPtr: the latter is process-global state.
    // Trailing text is checked here: cJSON's own check wants a NUL inside the given length.
    JsonPtr root(cJSON_ParseWithLengthOpts(json.data(), json.size(), &parse_end, 0), &cJSON_Delete);
    size_t offset = parse_end == nullptr ? 0 : static_cast<size_t>(parse_end - json.data());
    if (root) {
        offset = json.find_first_not_of(" \t\r\n", offset);
    }
    if (!root || offset != std::string::npos) {
        throw std::runtime_error(source + ": extra/nnunet_export.json is not valid JSON (error at byte " +
                                 std::to_string(offset) + ")");
    }
    const cJSON* doc = root.get();
    const Reader reader(source);
    if (!cJSON_IsObject(doc)) {
        throw std::runtime_error(source + ": extra/nnunet_export.json is not a JSON object");
    }
    const cJSON* format = cJSON_GetObjectItemCaseSensitive(doc, "format");
    if (!cJSON_IsString(format) || std::string(format->valuestring) != "nnunet_export") {
        throw std::runtime_error(source + ": not an nnunet_export file (metadata 'format' is not \"nnunet_export\")");
    }

    Metadata meta;
    meta.format_version = reader.integer(reader.member(doc, "", "format_version"), "format_version", 1);
    if (meta.format_version > kMetadataFormatVersion) {
        throw std::runtime_error(source + ": metadata format_version " + std::to_string(meta.format_version) +
                                 " is newer than this reader's " + std::to_string(kMetadataFormatVersion) +
                                 "; rebuild nnunet_infer from a matching nnunet_export");
    }
    meta.file_format = reader.string(doc, "", "file_format", false);
    meta.export_method = reader.string(doc, "", "export_method", false);
    meta.dataset_name = reader.string(doc, "", "dataset_name", true);
    meta.configuration = reader.string(doc, "", "configuration", true);
    meta.trainer_name = reader.string(doc, "", "trainer_name", true);
    meta.checkpoint_name = reader.string(doc, "", "checkpoint_name", false);

    const cJSON* folds = reader.member(doc, "", "folds");
    if (!cJSON_IsArray(folds) || cJSON_GetArraySize(folds) == 0) {
        reader.fail("folds", "must be a non-empty list");
    }
    const cJSON* fold = nullptr;
    cJSON_ArrayForEach(fold, folds) {
        meta.folds.push_back(fold_text(reader, fold, "folds[" + std::to_string(meta.folds.size()) + "]"));
    }

    const cJSON* hashes = reader.member(doc, "", "weights_sha256");
    if (!cJSON_IsObject(hashes)) {
        reader.fail("weights_sha256", "must be an object of fold -> sha256");
    }
    const cJSON* hash = nullptr;
    cJSON_ArrayForEach(hash, hashes) {
        if (!cJSON_IsString(hash)) {
            reader.fail(std::string("weights_sha256.") + hash->string, "must be a string");
        }
        meta.weights_sha256.emplace_back(hash->string, hash->valuestring);
    }

    const cJSON* pipeline = cJSON_GetObjectItemCaseSensitive(doc, "pipeline");
    if (pipeline != nullptr && !cJSON_IsNull(pipeline)) {
        if (!cJSON_IsObject(pipeline)) {
            reader.fail("pipeline", "must be an object of pipeline settings");
        }
        meta.pipeline = true;
        meta.pipeline_mode = reader.string(pipeline, "pipeline.", "mode", true);
    }

    const cJSON* config = reader.member(doc, "", "model_config");
    if (!cJSON_IsObject(config)) {
        reader.fail("model_config", "must be an object");
    }
    const cJSON* patch = reader.member(config, "model_config.", "patch_size");
    if (!cJSON_IsArray(patch) || cJSON_GetArraySize(patch) < 2 || cJSON_GetArraySize(patch) > 3) {
        reader.fail("model_config.patch_size", "must be a list of 2 or 3 integers");
    }
    const cJSON* extent = nullptr;
    cJSON_ArrayForEach(extent, patch) {
        meta.patch_size.push_back(reader.integer(extent, "model_config.patch_size", 1));
    }
    meta.num_input_channels = reader.integer(reader.member(config, "model_config.", "num_input_channels"),
                                             "model_config.num_input_channels", 1);
    meta.num_output_channels = reader.integer(reader.member(config, "model_config.", "num_output_channels"),
                                              "model_config.num_output_channels", 1);
    return meta;
}

void print_metadata(std::ostream& out, const Metadata& meta) {
    const auto row = [&out](const std::string& name, const std::string& value) {
        out << std::left << std::setw(18) << name << value << '\n';
    };
    std::string format = "nnunet_export " + std::to_string(meta.format_version);
    if (!meta.file_format.empty()) {
        format += " (" + meta.file_format + (meta.export_method.empty() ? "" : ", " + meta.export_method) + ")";
    }
    row("format", format);
    row("dataset", meta.dataset_name);
    row("configuration", meta.configuration);
    row("trainer", meta.trainer_name);
    std::string folds;
    for (const auto& fold : meta.folds) {
        folds += (folds.empty() ? "" : ", ") + fold;
    }
    row("folds", folds);
    if (!meta.checkpoint_name.empty()) {
        row("checkpoint", meta.checkpoint_name);
    }
    std::string patch;
    for (const int64_t extent : meta.patch_size) {
        patch += (patch.empty() ? "" : " x ") + std::to_string(extent);
    }
    row("patch size", patch);
    row("input channels", std::to_string(meta.num_input_channels));
    row("output channels", std::to_string(meta.num_output_channels));
    if (meta.pipeline) {
        row("pipeline", meta.pipeline_mode + " (predict_logits on one preprocessed volume; with --spacing the image "
                                             "in, the segmentation out)");
    }
    for (const auto& [fold_name, digest] : meta.weights_sha256) {
        row("sha256 fold " + fold_name, digest);
    }
}

}  // namespace nnunet_infer
