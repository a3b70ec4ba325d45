#include "raw_io.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
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
void swap_bytes_if_big_endian(void* data, int64_t numel, int64_t element_bytes) {
    if (host_is_little_endian() || element_bytes == 1) {
        return;
    }
    auto* bytes = static_cast<unsigned char*>(data);
    for (int64_t i = 0; i < numel; ++i) {
        std::reverse(bytes + i * element_bytes, bytes + (i + 1) * element_bytes);
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
    swap_bytes_if_big_endian(values.data(), numel, kFloatBytes);
    return values;
}

std::vector<double> parse_spacing(const std::string& text) {
    const std::string allowed = "expected Z,Y,X: three positive numbers (the image's spacing in mm, z first)";
    std::vector<double> spacing;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        const size_t end = comma == std::string::npos ? text.size() : comma;
        const std::string entry = text.substr(start, end - start);
        char* stop = nullptr;
        errno = 0;
        const double value = entry.empty() ? 0.0 : std::strtod(entry.c_str(), &stop);
        if (entry.empty() || errno != 0 || stop != entry.c_str() + entry.size() || !std::isfinite(value) ||
            value <= 0.0) {
            throw std::runtime_error("--spacing '" + text + "': entry '" + entry + "' is not a positive number; " +
                                     allowed);
        }
        spacing.push_back(value);
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
    if (spacing.size() != 3) {
        throw std::runtime_error("--spacing '" + text + "' has " + std::to_string(spacing.size()) + " entries; " +
                                 allowed);
    }
    return spacing;
}

void write_raw_le(const std::string& path, const void* data, int64_t numel, int64_t element_bytes) {
    std::vector<unsigned char> copy;
    if (!host_is_little_endian() && element_bytes > 1) {
        const auto* bytes = static_cast<const unsigned char*>(data);
        copy.assign(bytes, bytes + numel * element_bytes);
        swap_bytes_if_big_endian(copy.data(), numel, element_bytes);
        data = copy.data();
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) {
        throw std::runtime_error("output '" + path + "' cannot be opened for writing: " + std::strerror(errno));
    }
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(numel * element_bytes));
    out.close();
    if (!out) {
        throw std::runtime_error("output '" + path + "': writing " + std::to_string(numel * element_bytes) +
                                 " bytes failed (disk full?)");
    }
}

void write_float32_le(const std::string& path, const float* data, int64_t numel) {
    write_raw_le(path, data, numel, kFloatBytes);
}

}  // namespace nnunet_infer
