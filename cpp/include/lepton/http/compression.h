// HTTP content codings on zlib: inflating request bodies without letting a small compressed body
// grow past a limit, and compressing responses for clients that accept it.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace lepton::http {

enum class Coding { kIdentity, kGzip, kDeflate };

// The coding a Content-Encoding value names; nullopt-like kIdentity for "" and "identity".
// Throws std::invalid_argument for a coding lepton does not speak.
Coding ParseContentEncoding(std::string_view value);

// The best coding an Accept-Encoding value allows (gzip, then deflate), or kIdentity.
Coding PreferredCoding(std::string_view accept_encoding);

// Inflates a gzip or zlib ("deflate") body. Stops as soon as the output would pass `limit`
// (returns false, having inflated at most `limit` bytes), so that a compression bomb costs no more
// than the limit. `reserve` is asked for each chunk of output before it is produced; when it says
// no, inflating stops and std::length_error is thrown. Throws std::invalid_argument for a corrupt
// or truncated body.
bool Inflate(std::string_view in, size_t limit, const std::function<bool(size_t)>& reserve,
             std::string* out);

// Compresses `in` with the coding (not kIdentity).
std::string Compress(std::string_view in, Coding coding);

// Whether compressing `body` would save a tenth of it, judged from three samples of a large
// body: floating-point tensors as binary data barely shrink, and deflating a megabyte of them
// costs tens of milliseconds to save a few percent.
bool WorthCompressing(std::string_view body);

const char* CodingName(Coding coding);

}  // namespace lepton::http
