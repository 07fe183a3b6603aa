// Turns the byte pieces of generated tokens into valid UTF-8 text, holding back
// (a) the bytes of an incomplete multi-byte character and (b) text that could be
// the beginning of a stop string, and cutting the output at the first stop string.
#pragma once

#include <string>
#include <vector>

namespace mtpstream {

class TextStream {
public:
    explicit TextStream(std::vector<std::string> stops = {});

    // Append one token's bytes; returns the text that may be released now ("" is fine).
    std::string push(const std::string & bytes);
    // Release everything still held (an unfinished character becomes U+FFFD).
    std::string flush();
    // True once a stop string was seen; nothing after it is ever released.
    bool stopped() const { return stopped_; }
    // The stop string that ended the text ("" until one did).
    const std::string & matched() const { return matched_; }

private:
    std::string release_held();

    std::vector<std::string> stops_;
    std::string raw_;   // undecoded bytes: an incomplete UTF-8 sequence at most
    std::string held_;  // decoded text not yet released
    bool stopped_ = false;
    std::string matched_;
};

}  // namespace mtpstream
