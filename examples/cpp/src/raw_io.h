// Shapes given on the command line and raw little-endian float32 files.
// Every function throws std::runtime_error with a one-line message on bad input.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nnunet_infer {

// "N,C,D,H,W" (3D) or "N,C,H,W" (2D): positive decimal integers. The element count must fit
// a file's byte size (checked here so later size arithmetic cannot overflow).
std::vector<int64_t> parse_shape(const std::string& text);

// The product of the entries of a shape parse_shape accepted.
int64_t shape_numel(const std::vector<int64_t>& shape);

// "1 x 2 x 8 x 12 x 10", for messages and the printed summary.
std::string shape_to_string(const std::vector<int64_t>& shape);

// Reads exactly `numel` little-endian float32 values; the file size must be numel * 4 bytes.
std::vector<float> read_float32_le(const std::string& path, int64_t numel);

// "Z,Y,X": three positive finite numbers (an image's spacing in mm, as nnU-Net's readers give it).
std::vector<double> parse_spacing(const std::string& text);

// Writes `numel` elements of `element_bytes` each (1, 2, 4 or 8) from `data`, little-endian.
void write_raw_le(const std::string& path, const void* data, int64_t numel, int64_t element_bytes);

// Writes `numel` floats from `data` as little-endian float32.
void write_float32_le(const std::string& path, const float* data, int64_t numel);

}  // namespace nnunet_infer
