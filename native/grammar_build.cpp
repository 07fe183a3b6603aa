#include "grammar_build.hpp"

#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace mtpstream {

namespace {

// llama.cpp prints a grammar's parse error with fprintf(stderr) instead of its log
// callback. This runs `fn` with file descriptor 2 pointed at a temporary file and
// returns what was written there (the user gets it in the exception instead).
template <typename Fn>
std::string capture_stderr(Fn && fn) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    std::FILE * tmp = std::tmpfile();
    const int saved = tmp != nullptr ? ::dup(2) : -1;
    if (saved < 0) {
        if (tmp != nullptr) {
            std::fclose(tmp);
        }
        fn();
        return "";
    }
    std::fflush(stderr);
    ::dup2(::fileno(tmp), 2);
    fn();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::string out;
    std::rewind(tmp);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, tmp)) > 0 && out.size() < 16384) {
        out.append(buf, n);
    }
    std::fclose(tmp);
    return out;
}

// The first line of llama.cpp's grammar parse error ("parse: error parsing grammar: ...").
std::string parse_error_line(const std::string & text) {
    const size_t at = text.find("error parsing grammar");
    if (at == std::string::npos) {
        return "";
    }
    const size_t end = text.find('\n', at);
    return text.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

// `text` as a regular expression that matches it literally.
std::string regex_literal(const std::string & text) {
    static const std::string special = "\\^$.|?*+()[]{}";
    std::string out;
    for (char c : text) {
        if (special.find(c) != std::string::npos) {
            out += '\\';
        }
        out += c;
    }
    return out;
}

SamplerPtr make_grammar(const GrammarSpec & spec, const llama_vocab * vocab) {
    if (!spec.lazy()) {
        return SamplerPtr(llama_sampler_init_grammar(vocab, spec.text.c_str(), "root"));
    }
    std::vector<std::string> patterns;
    std::vector<llama_token> tokens;
    for (const std::string & word : spec.triggers) {
        llama_token one[2];
        const int32_t n = llama_tokenize(vocab, word.data(), static_cast<int32_t>(word.size()), one, 2, false, true);
        if (n == 1) {
            tokens.push_back(one[0]);
        } else {
            patterns.push_back(regex_literal(word));
        }
    }
    std::vector<const char *> pattern_ptrs;
    for (const std::string & p : patterns) {
        pattern_ptrs.push_back(p.c_str());
    }
    return SamplerPtr(llama_sampler_init_grammar_lazy_patterns(vocab, spec.text.c_str(), "root", pattern_ptrs.data(),
                                                               pattern_ptrs.size(), tokens.data(), tokens.size()));
}

}  // namespace

SamplerPtr build_grammar(const GrammarSpec & spec, const llama_vocab * vocab, std::string & error) {
    SamplerPtr grammar;
    const std::string printed = capture_stderr([&] { grammar = make_grammar(spec, vocab); });
    error = grammar ? std::string() : parse_error_line(printed);
    return grammar;
}

}  // namespace mtpstream
