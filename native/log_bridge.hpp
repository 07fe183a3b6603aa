// Collects llama.cpp / ggml log lines so Python can forward them to the
// `mtpstream.llama` logger. The callback runs on whatever thread llama.cpp logs
// from (often the worker, which never holds the GIL), so it only appends to a
// bounded buffer; Python drains it at convenient points.
#pragma once

#include <atomic>
#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ggml.h"

namespace mtpstream {

class LogBridge {
public:
    LogBridge() = default;
    LogBridge(const LogBridge &) = delete;
    LogBridge & operator=(const LogBridge &) = delete;

    // Route llama.cpp's (process-wide) log callback to this bridge.
    void install();
    // Lines with a ggml level below this are dropped (ggml: DEBUG=1 INFO=2 WARN=3 ERROR=4).
    void set_min_level(int level) { min_level_.store(level); }
    // Take the buffered (level, line) pairs.
    std::vector<std::pair<int, std::string>> drain();

private:
    static void callback(ggml_log_level level, const char * text, void * user_data);
    void append(int level, const char * text);

    static constexpr std::size_t max_lines_ = 2000;
    std::atomic<int> min_level_{3};
    std::mutex mutex_;
    int partial_level_ = 2;
    std::string partial_;
    std::deque<std::pair<int, std::string>> lines_;
};

}  // namespace mtpstream
