// nnunet_infer: loads an nnunet_export TorchScript file with libtorch (no Python), prints its
// metadata, runs it on a raw float32 input and writes the logits as raw float32.
//
//   nnunet_infer MODEL.pt INPUT.raw OUTPUT.raw --shape N,C,D,H,W   (2D models: N,C,H,W)
//   nnunet_infer PIPELINE.pt INPUT.raw OUTPUT.raw --shape C,D,H,W  (a whole pipeline: one
//       preprocessed volume through predict_logits; its fp16 logits are written as float32,
//       which holds every fp16 value exactly)
//   nnunet_infer PIPELINE.pt IMAGE.raw SEG.raw --shape C,Z,Y,X --spacing Z,Y,X  (a whole
//       pipeline from the image as nnU-Net's reader gives it, float32, to the segmentation
//       nnU-Net writes, in the image's geometry: raw uint8, or uint16 little-endian for 255 or
//       more foreground labels)
//
// Exit status: 0 on success, 2 on a usage error, 1 on any other error; every error is one
// line on stderr starting with "nnunet_infer: error: ".
#include <torch/script.h>

#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "metadata.h"
#include "raw_io.h"

namespace {

using nnunet_infer::Metadata;

constexpr char kMetadataName[] = "nnunet_export.json";
constexpr char kUsage[] =
    "usage: nnunet_infer MODEL.pt INPUT.raw OUTPUT.raw --shape N,C,D,H,W (2D: N,C,H,W; pipelines: C,D,H,W; "
    "pipelines from the image: C,Z,Y,X --spacing Z,Y,X)";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Arguments {
    std::string model;
    std::string input;
    std::string output;
    std::vector<int64_t> shape;
    std::vector<double> spacing;  // empty: no --spacing
};

Arguments parse_arguments(int argc, char** argv) {
    Arguments args;
    std::vector<std::string> positional;
    std::string shape_text;
    std::string spacing_text;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--spacing") {
            if (i + 1 >= argc) {
                throw UsageError("--spacing needs a value");
            }
            spacing_text = argv[++i];
        } else if (arg.rfind("--spacing=", 0) == 0) {
            spacing_text = arg.substr(10);
        } else if (arg == "--shape") {
            if (i + 1 >= argc) {
                throw UsageError("--shape needs a value");
            }
            shape_text = argv[++i];
        } else if (arg.rfind("--shape=", 0) == 0) {
            shape_text = arg.substr(8);
        } else if (arg == "-h" || arg == "--help") {
            throw UsageError("");
        } else if (arg.rfind("--", 0) == 0) {
            throw UsageError("unknown option '" + arg + "'");
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() != 3) {
        throw UsageError("expected MODEL INPUT OUTPUT, got " + std::to_string(positional.size()) + " paths");
    }
    if (shape_text.empty()) {
        throw UsageError("--shape is required");
    }
    args.model = positional[0];
    args.input = positional[1];
    args.output = positional[2];
    args.shape = nnunet_infer::parse_shape(shape_text);
    if (!spacing_text.empty()) {
        args.spacing = nnunet_infer::parse_spacing(spacing_text);
    }
    return args;
}

// libtorch's messages span several lines (source location, backtrace); keep the first.
std::string first_line(const std::string& text) {
    return text.substr(0, text.find('\n'));
}

torch::jit::Module load_model(const std::string& path, Metadata& meta) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
        throw std::runtime_error("model '" + path + "' does not exist or is not a file");
    }
    // Only the names asked for are read back; an absent entry leaves its value empty.
    torch::jit::ExtraFilesMap extra_files{{kMetadataName, ""}};
    torch::jit::Module module;
    try {
        module = torch::jit::load(path, torch::kCPU, extra_files);
    } catch (const c10::Error& err) {
        throw std::runtime_error("model '" + path + "' is not a loadable TorchScript file: " +
                                 first_line(err.what_without_backtrace()));
    }
    const std::string& json = extra_files[kMetadataName];
    if (json.empty()) {
        throw std::runtime_error("model '" + path + "' is not an nnunet_export file: it has no extra/" +
                                 kMetadataName + " (write it with nnunet_export.to_torchscript)");
    }
    meta = nnunet_infer::parse_metadata(json, "model '" + path + "'");
    module.eval();
    return module;
}

void check_input_shape(const std::vector<int64_t>& shape, const Metadata& meta, bool image_input) {
    if (image_input && !meta.pipeline) {
        throw std::runtime_error("--spacing needs a whole pipeline file (model.pipeline() exported); this file holds "
                                 "the network alone");
    }
    if (meta.pipeline) {
        // One volume (C, X, Y, Z); a 2D configuration predicts it slice by slice (C, slices, X, Y).
        if (shape.size() != 4 || shape[0] != meta.num_input_channels) {
            throw std::runtime_error("--shape " + nnunet_infer::shape_to_string(shape) +
                                     " is not one preprocessed volume for this pipeline: expected " +
                                     std::to_string(meta.num_input_channels) + ",D,H,W");
        }
        return;
    }
    const auto spatial_axes = static_cast<int64_t>(shape.size()) - 2;
    const auto model_axes = static_cast<int64_t>(meta.patch_size.size());
    if (spatial_axes != model_axes) {
        throw std::runtime_error("--shape " + nnunet_infer::shape_to_string(shape) + " has " +
                                 std::to_string(spatial_axes) + " spatial axes, but the model is " +
                                 std::to_string(model_axes) + "D (patch size has " + std::to_string(model_axes) +
                                 " entries)");
    }
    if (shape[1] != meta.num_input_channels) {
        throw std::runtime_error("--shape " + nnunet_infer::shape_to_string(shape) + " has " +
                                 std::to_string(shape[1]) + " input channels, but the model expects " +
                                 std::to_string(meta.num_input_channels));
    }
}

int run(const Arguments& args) {
    Metadata meta;
    torch::jit::Module module = load_model(args.model, meta);
    std::cout << std::left << "model             " << args.model << '\n';
    nnunet_infer::print_metadata(std::cout, meta);
    const bool image_input = !args.spacing.empty();
    check_input_shape(args.shape, meta, image_input);

    std::vector<float> input_values = nnunet_infer::read_float32_le(args.input, nnunet_infer::shape_numel(args.shape));
    // from_blob does not copy: input_values must outlive the forward pass, which it does.
    const torch::Tensor input = torch::from_blob(input_values.data(), args.shape, torch::kFloat32);

    torch::Tensor output;
    {
        // InferenceMode: no autograd graph and no version counters, cheaper than NoGradGuard alone.
        c10::InferenceMode guard;
        torch::jit::IValue result;
        try {
            if (image_input) {
                const torch::Tensor spacing = torch::tensor(args.spacing, torch::kFloat64);
                result = module.forward({input, spacing});
            } else if (meta.pipeline) {
                result = module.get_method("predict_logits")({input});
            } else {
                result = module.forward({input});
            }
        } catch (const c10::Error& err) {
            throw std::runtime_error("forward failed on input " + nnunet_infer::shape_to_string(args.shape) + ": " +
                                     first_line(err.what_without_backtrace()));
        }
        if (!result.isTensor()) {
            throw std::runtime_error("forward returned " + result.tagKind() +
                                     ", expected one Tensor (was the model exported with deep supervision?)");
        }
        output = result.toTensor().to(torch::kCPU);
        // Logits go out as float32 (exact for fp16); a segmentation keeps its integer type.
        output = (image_input ? output : output.to(torch::kFloat32)).contiguous();
    }
    const std::vector<int64_t> output_shape(output.sizes().begin(), output.sizes().end());
    const int64_t element_bytes = static_cast<int64_t>(output.element_size());
    nnunet_infer::write_raw_le(args.output, output.data_ptr(), output.numel(), element_bytes);
    const std::string type = image_input ? (element_bytes == 1 ? "uint8" : "uint16") : "float32";
    std::cout << "input shape       " << nnunet_infer::shape_to_string(args.shape) << '\n'
              << "output shape      " << nnunet_infer::shape_to_string(output_shape) << '\n'
              << "wrote             " << args.output << " (" << output.numel() * element_bytes << " bytes " << type
              << ")\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_arguments(argc, argv));
    } catch (const UsageError& err) {
        if (err.what()[0] != '\0') {
            std::cerr << "nnunet_infer: error: " << err.what() << "; " << kUsage << '\n';
            return 2;
        }
        std::cout << kUsage << '\n';
        return 0;
    } catch (const std::exception& err) {
        std::cerr << "nnunet_infer: error: " << first_line(err.what()) << '\n';
        return 1;
    }
}
