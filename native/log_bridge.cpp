#include "log_bridge.hpp"

#include "llama.h"

namespace mtpstream {

void LogBridge::install() { llama_log_set(&LogBridge::callback, this); }

void LogBridge::callback(ggml_log_level level, const char * text, void * user_data) {
    static_cast<LogBridge *>(user_data)->append(static_cast<int>(level), text);
}

void LogBridge::append(int level, const char * text) {
    if (text == nullptr) {
        return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (level != GGML_LOG_LEVEL_CONT) {
        partial_level_ = level;
    }
    if (partial_level_ < min_level_.load(std::memory_order_relaxed)) {
        return;
    }
    partial_ += text;
    std::size_t nl;
    while ((nl = partial_.find('\n')) != std::string::npos) {
        std::string line = partial_.substr(0, nl);
        partial_.erase(0, nl + 1);
        if (line.empty()) {
            continue;
        }
        if (lines_.size() >= max_lines_) {
            lines_.pop_front();
        }
        lines_.emplace_back(partial_level_, std::move(line));
    }
}

std::vector<std::pair<int, std::string>> LogBridge::drain() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<int, std::string>> out(lines_.begin(), lines_.end());
    lines_.clear();
    return out;
}

}  // namespace mtpstream
