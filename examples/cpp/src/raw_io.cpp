#include "raw_io.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

namespace nnunet_infer {
namespace {

constexpr int64_t kFloatBytes = 4;
static_assert(sizeof(float) == kFloatBytes, "raw files hold IEEE float32");

bool host_is_little_endian() {
    const uint32_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

// The raw format is little-endian whatever the host is; swapping in place keeps one buffer.
void swap_bytes_if_big_endian(float* data, int64_t numel) {
    if (host_is_little_endian()) {
        return;
    }
    auto* bytes = reinterpret_cast<unsigned char*>(data);
    for (int64_t i = 0; i < numel; ++i) {
        std::reverse(bytes + i * kFloatBytes, bytes + (i + 1) * kFloatBytes);
    }
}

}  // namespace

std::vector<int64_t> parse_shape(const std::string& text) {
    const std::string allowed = "expected N,C,D,H,W (3D) or N,C,H,W (2D) with positive integers";
    std::vector<int64_t> shape;
    int64_t numel = 1;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        const size_t end = comma == std::string::npos ? text.size() : comma;
        const char* first = text.data() + start;
        const char* last = text.data() + end;
        int64_t value = 0;
        const auto parsed = std::from_chars(first, last, value);
        if (first == last || parsed.ec != std::errc() || parsed.ptr != last || value <= 0) {
            throw std::runtime_error("--shape '" + text + "': entry '" + std::string(first, last) +
                                     "' is not a positive integer; " + allowed);
        }
        // Bound the element count so that numel * 4 bytes fits in int64 and in a file size.
        if (numel > std::numeric_limits<int64_t>::max() / kFloatBytes / value) {
            throw std::runtime_error("--shape '" + text + "' has too many elements");
        }
        numel *= value;
        shape.push_back(value);
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
    if (shape.size() != 4 && shape.size() != 5) {
        throw std::runtime_error("--shape '" + text + "' has " + std::to_string(shape.size()) +
                                 " entries; " + allowed);
    }
    return shape;
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
    int64_t numel = 1;
    for (const int64_t extent : shape) {
        numel *= extent;
    }
    return numel;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
    std::string text;
    for (size_t i = 0; i < shape.size(); ++i) {
        text += (i == 0 ? "" : " x ") + std::to_string(shape[i]);
    }
    return text;
}

std::vector<float> read_float32_le(const std::string& path, int64_t numel) {
    std::error_code error;
    const auto status = std::filesystem::status(path, error);
    if (error || !std::filesystem::is_regular_file(status)) {
        throw std::runtime_error("input '" + path + "' does not exist or is not a file");
    }
    const uintmax_t size = std::filesystem::file_size(path, error);
    const auto expected = static_cast<uintmax_t>(numel * kFloatBytes);
    if (error || size != expected) {
        throw std::runtime_error("input '" + path + "' has " + std::to_string(size) + " bytes, but --shape needs " +
                                 std::to_string(numel) + " float32 values = " + std::to_string(expected) +
                                 " bytes");
    }
    std::vector<float> values(static_cast<size_t>(numel));
    std::ifstream in(path, std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(expected))) {
        throw std::runtime_error("input '" + path + "': read failed after " + std::to_string(in.gcount()) +
                                 " of " + std::to_string(expected) + " bytes");
    }
    swap_bytes_if_big_endian(values.data(), numel);
    return values;
}

void write_float32_le(const std::string& path, const float* data, int64_t numel) {
    std::vector<float> copy;
    if (!host_is_little_endian()) {
        copy.assign(data, data + numel);
        swap_bytes_if_big_endian(copy.data(), numel);
        data = copy.data();
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) {
        throw std::runtime_error("output '" + path + "' cannot be opened for writing: " + std::strerror(errno));
    }
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(numel * kFloatBytes));
    out.close();
    if (!out) {
        throw std::runtime_error("output '" + path + "': writing " + std::to_string(numel * kFloatBytes) +
                                 " bytes failed (disk full?)");
    }
}

}  // namespace nnunet_infer
