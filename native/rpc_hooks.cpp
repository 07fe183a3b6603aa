// The socket hooks of rpc_guard.hpp: libggml-rpc's entries for send, recv, connect and
// close in its global offset table point to the functions here, which call the C
// library's and follow each client connection's exchange (rpc_protocol.hpp).
#include <arpa/inet.h>
#include <elf.h>
#include <link.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "fd_io.hpp"
#include "rpc_guard.hpp"
#include "rpc_protocol.hpp"
#include "rpc_worker_cap.hpp"

namespace mtpstream {

namespace {

class HookedLink : public WorkerLink {
public:
    rpc::Exchange exchange;  // used by the client's dispatcher thread only
    int reply_timeout_ms = kReplyTimeoutMs;
};

struct Hooks {
    std::mutex mutex;
    std::unordered_map<int, std::shared_ptr<HookedLink>> by_fd;
    std::unordered_map<std::string, std::shared_ptr<HookedLink>> by_addr;  // the latest per "ip:port"
    std::unordered_map<std::string, int> reply_timeout_ms;                 // per "ip:port"
    bool tried = false;
    bool installed = false;
    std::string why_not;
};

Hooks & hooks() {
    static Hooks * h = new Hooks();  // never destroyed: ggml's threads may call a hook at exit
    return *h;
}

std::shared_ptr<HookedLink> link_of(int fd) {
    Hooks & h = hooks();
    std::lock_guard<std::mutex> lock(h.mutex);
    auto it = h.by_fd.find(fd);
    return it == h.by_fd.end() ? nullptr : it->second;
}

std::string errno_text(const char * what) { return std::string(what) + ": " + std::strerror(errno); }

std::string seconds(int ms) {
    char out[32];
    std::snprintf(out, sizeof(out), "%g s", ms / 1000.0);
    return out;
}

// A worker's send under a memory cap (rpc_worker_cap.hpp): a rewritten reply goes out
// whole, in place of the worker's.
ssize_t capped_send(int fd, const void * data, size_t n, int flags) {
    uint8_t copy[16];
    if (!worker_cap_send(fd, static_cast<const uint8_t *>(data), n, copy, sizeof(copy))) {
        return send(fd, data, n, flags);
    }
    const bool sent = move_all([&](char * p, size_t left) { return send(fd, p, left, flags); },
                               reinterpret_cast<char *>(copy), n);
    return sent ? static_cast<ssize_t>(n) : -1;
}

ssize_t capped_recv(int fd, void * out, size_t n, int flags) {
    const ssize_t got = recv(fd, out, n, worker_cap_wants_whole(fd, n) ? flags | MSG_WAITALL : flags);
    if (got > 0) {
        worker_cap_read(fd, static_cast<uint8_t *>(out), static_cast<size_t>(got));
    }
    return got;
}

ssize_t hooked_send(int fd, const void * data, size_t n, int flags) {
    std::shared_ptr<HookedLink> link = link_of(fd);
    if (link == nullptr) {
        return worker_cap_active() ? capped_send(fd, data, n, flags) : send(fd, data, n, flags);
    }
    ssize_t put = static_cast<ssize_t>(n);
    if (!link->lost()) {
        do {
            put = send(fd, data, n, flags | MSG_NOSIGNAL);
        } while (put < 0 && errno == EINTR);
        if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // SO_SNDTIMEO: it takes nothing
            link->mark_lost("it took no data for " + seconds(link->reply_timeout_ms) + " (rpc_timeout)");
            shutdown(fd, SHUT_RDWR);  // a worker that comes back is free for its next client
        } else if (put < 0) {
            link->mark_lost(errno_text("sending to it"));
        }
        if (put < 0) {
            put = static_cast<ssize_t>(n);  // taken by the stand-in
        }
    }
    link->exchange.sent(static_cast<const uint8_t *>(data), static_cast<size_t>(put));
    return put;
}

ssize_t hooked_recv(int fd, void * out, size_t n, int flags) {
    std::shared_ptr<HookedLink> link = link_of(fd);
    if (link == nullptr) {
        return worker_cap_active() ? capped_recv(fd, out, n, flags) : recv(fd, out, n, flags);
    }
    auto * bytes = static_cast<uint8_t *>(out);
    if (!link->lost()) {
        ssize_t got = 0;
        do {
            got = recv(fd, out, n, flags);
        } while (got < 0 && errno == EINTR);
        if (got > 0) {
            link->exchange.received(bytes, static_cast<size_t>(got));
            return got;
        }
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // SO_RCVTIMEO: no answer in time
            link->mark_lost(no_answer(link->exchange.awaited(), link->reply_timeout_ms));
            shutdown(fd, SHUT_RDWR);
        } else {
            link->mark_lost(got == 0 ? "it closed the connection" : errno_text("receiving from it"));
        }
    }
    return static_cast<ssize_t>(link->exchange.stand_in_reply(bytes, n));
}

std::string address_text(const sockaddr_in & a) {
    char ip[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
    return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

int hooked_connect(int fd, const sockaddr * addr, socklen_t len) {
    int rc = connect(fd, addr, len);
    if (addr == nullptr || addr->sa_family != AF_INET || len < sizeof(sockaddr_in)) {
        return rc;  // not the client's kind of connection (IPv4)
    }
    auto link = std::make_shared<HookedLink>();
    const std::string where = address_text(*reinterpret_cast<const sockaddr_in *>(addr));
    Hooks & h = hooks();
    std::lock_guard<std::mutex> lock(h.mutex);
    auto timeout = h.reply_timeout_ms.find(where);
    if (timeout != h.reply_timeout_ms.end()) {
        link->reply_timeout_ms = timeout->second;
    }
    if (rc != 0) {  // the client would abort: the link stands in from the start
        link->mark_lost(errno_text("cannot connect"));
        rc = 0;
    } else {
        WorkerLink::watch_socket(fd);
        // a blocking send or receive waits at most this long (no extra call per message)
        timeval tv{link->reply_timeout_ms / 1000, (link->reply_timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    h.by_fd[fd] = link;
    h.by_addr[where] = link;
    return rc;
}

int hooked_close(int fd) {
    {
        Hooks & h = hooks();
        std::lock_guard<std::mutex> lock(h.mutex);
        h.by_fd.erase(fd);
    }
    if (worker_cap_active()) {
        worker_cap_closed(fd);
    }
    return close(fd);
}

// ---------------------------------------------------------------- the offset table

struct Patch {
    const char * symbol;
    void * hook;
    int done = 0;
};

struct PatchJob {
    Patch * patches;
    size_t n;
    bool found = false;
    uintptr_t relro_begin = 0;  // the part made read-only after relocation (PT_GNU_RELRO)
    uintptr_t relro_end = 0;
};

#if defined(__x86_64__)
constexpr uint32_t kJumpSlot = R_X86_64_JUMP_SLOT;
constexpr uint32_t kGlobDat = R_X86_64_GLOB_DAT;
#elif defined(__aarch64__)
constexpr uint32_t kJumpSlot = R_AARCH64_JUMP_SLOT;
constexpr uint32_t kGlobDat = R_AARCH64_GLOB_DAT;
#endif

#if defined(__x86_64__) || defined(__aarch64__)
// Points the slots of `table` (relocations with addend) naming a patched symbol at its hook.
void patch_table(ElfW(Addr) base, const ElfW(Rela) * table, size_t bytes, const ElfW(Sym) * symtab,
                 const char * strtab, PatchJob & job) {
    const long page = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < bytes / sizeof(ElfW(Rela)); ++i) {
        const ElfW(Rela) & r = table[i];
        const uint32_t type = ELF64_R_TYPE(r.r_info);
        if (type != kJumpSlot && type != kGlobDat) {
            continue;
        }
        const char * name = strtab + symtab[ELF64_R_SYM(r.r_info)].st_name;
        for (size_t p = 0; p < job.n; ++p) {
            if (std::strcmp(name, job.patches[p].symbol) != 0) {
                continue;
            }
            auto * slot = reinterpret_cast<void **>(base + r.r_offset);
            auto * start = reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(slot) & ~static_cast<uintptr_t>(page - 1));
            // the slot may lie in the read-only part after relocation (RELRO): open it for the write
            if (mprotect(start, static_cast<size_t>(page), PROT_READ | PROT_WRITE) == 0) {
                __atomic_store_n(slot, job.patches[p].hook, __ATOMIC_SEQ_CST);
                ++job.patches[p].done;
                const auto at = reinterpret_cast<uintptr_t>(slot);
                if (at >= job.relro_begin && at < job.relro_end) {
                    mprotect(start, static_cast<size_t>(page), PROT_READ);  // read-only again
                }
            }
        }
    }
}

int patch_object(dl_phdr_info * info, size_t, void * data) {
    auto & job = *static_cast<PatchJob *>(data);
    if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "libggml-rpc.so") == nullptr) {
        return 0;
    }
    const ElfW(Addr) base = info->dlpi_addr;
    const ElfW(Dyn) * dyn = nullptr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) {
            dyn = reinterpret_cast<const ElfW(Dyn) *>(base + info->dlpi_phdr[i].p_vaddr);
        } else if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO) {
            job.relro_begin = base + info->dlpi_phdr[i].p_vaddr;
            job.relro_end = job.relro_begin + info->dlpi_phdr[i].p_memsz;
        }
    }
    ElfW(Addr) symtab = 0, strtab = 0, jmprel = 0, rela = 0;
    size_t pltrelsz = 0, relasz = 0;
    for (; dyn != nullptr && dyn->d_tag != DT_NULL; ++dyn) {
        switch (dyn->d_tag) {
            case DT_SYMTAB: symtab = dyn->d_un.d_ptr; break;
            case DT_STRTAB: strtab = dyn->d_un.d_ptr; break;
            case DT_JMPREL: jmprel = dyn->d_un.d_ptr; break;
            case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
            case DT_RELA: rela = dyn->d_un.d_ptr; break;
            case DT_RELASZ: relasz = dyn->d_un.d_val; break;
            default: break;
        }
    }
    // glibc relocates these addresses in the loaded table; be safe where it does not
    const auto at = [base](ElfW(Addr) a) { return a != 0 && a < base ? a + base : a; };
    if (symtab == 0 || strtab == 0) {
        return 1;
    }
    const auto * syms = reinterpret_cast<const ElfW(Sym) *>(at(symtab));
    const auto * strs = reinterpret_cast<const char *>(at(strtab));
    if (jmprel != 0) {
        patch_table(base, reinterpret_cast<const ElfW(Rela) *>(at(jmprel)), pltrelsz, syms, strs, job);
    }
    if (rela != 0) {
        patch_table(base, reinterpret_cast<const ElfW(Rela) *>(at(rela)), relasz, syms, strs, job);
    }
    job.found = true;
    return 1;
}
#endif

}  // namespace

bool install_socket_hooks(std::string & why_not) {
    Hooks & h = hooks();
    std::lock_guard<std::mutex> lock(h.mutex);
    if (!h.tried) {
        h.tried = true;
#if defined(__x86_64__) || defined(__aarch64__)
        Patch patches[] = {{"send", reinterpret_cast<void *>(&hooked_send)},
                           {"recv", reinterpret_cast<void *>(&hooked_recv)},
                           {"connect", reinterpret_cast<void *>(&hooked_connect)},
                           {"close", reinterpret_cast<void *>(&hooked_close)}};
        PatchJob job{patches, sizeof(patches) / sizeof(patches[0])};
        dl_iterate_phdr(&patch_object, &job);
        h.installed = job.found;
        for (const Patch & p : patches) {
            h.installed = h.installed && p.done > 0;
        }
        h.why_not = !job.found ? "libggml-rpc is not loaded as a shared library"
                    : !h.installed ? "libggml-rpc does not call send, recv, connect and close through its offset table"
                                   : "";
#else
        h.why_not = "the socket hooks support x86-64 and AArch64 only";
#endif
    }
    why_not = h.why_not;
    return h.installed;
}

// "ip:port" of `endpoint` as ggml's client resolves it (IPv4), or "".
static std::string resolved(const std::string & endpoint) {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos) {
        return "";
    }
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    if (getaddrinfo(endpoint.substr(0, colon).c_str(), endpoint.substr(colon + 1).c_str(), &hints, &found) != 0 ||
        found == nullptr) {
        return "";
    }
    const std::string addr = address_text(*reinterpret_cast<const sockaddr_in *>(found->ai_addr));
    freeaddrinfo(found);
    return addr;
}

std::shared_ptr<WorkerLink> hooked_link(const std::string & endpoint) {
    const std::string addr = resolved(endpoint);
    Hooks & h = hooks();
    std::lock_guard<std::mutex> lock(h.mutex);
    auto it = h.by_addr.find(addr);
    return it == h.by_addr.end() ? nullptr : it->second;
}

void set_hooked_reply_timeout(const std::string & endpoint, int ms) {
    const std::string addr = resolved(endpoint);
    Hooks & h = hooks();
    std::lock_guard<std::mutex> lock(h.mutex);
    h.reply_timeout_ms[addr] = ms;
}

}  // namespace mtpstream
