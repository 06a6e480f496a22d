// cuda_emu_runtime.hpp -- the CPU runtime of the cupyvae CUDA emulator.
//
// Compiled ONCE (per shim/runtime/compiler version) into its own shared
// library, loaded with RTLD_GLOBAL; every emulated kernel module links its
// cuemu_rt_* calls against it.  Built as C++ with:
//   g++ -x c++ -std=c++20 -O2 -shared -fPIC -fno-exceptions -fno-rtti -pthread
//
// Model: every CUDA thread of a block is a fiber (own stack + guard page) on
// one OS worker thread.  Fibers switch only at __syncthreads / warp
// operations / exit, so kernel bodies run at native speed.  The scheduler
// runs in "passes": each runnable fiber (in thread_order) runs until it
// blocks; then complete warp ops, then a block barrier, else report a
// deadlock.  Blocks are distributed over 1..N worker threads.
#define __CUEMU_RUNTIME_BUILD__ 1
#include "cuda_emu.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) || defined(CUEMU_USE_UCONTEXT)
#include <ucontext.h>
#define CUEMU_UCTX 1
#endif

#define CUEMU_API extern "C" __attribute__((visibility("default")))
#define CUEMU_HIDDEN __attribute__((visibility("hidden")))

namespace cuemu {

#define CUEMU_MAX_DYN_SHARED (227u * 1024u)

enum State : int { ST_RUN = 0, ST_BAR = 1, ST_WARP = 2, ST_EXIT = 3, ST_TRAP = 4 };
enum Order : int { ORD_FORWARD = 0, ORD_REVERSE = 1, ORD_RANDOM = 2 };

// Must match the ctypes Structure in cupyvae/emulator/_runtime.py.
struct LaunchDesc {
    void (*entry)(FiberHead*, void**);
    void** args;
    void* (*dynsmem)(void);     // address of this OS thread's dynamic smem buffer (or null)
    void* (*tls_anchor)(void);  // address of a TLS variable of the kernel module (or null)
    const char* kernel_name;
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_mem;
    unsigned long long seed;
    unsigned long long stack_size;
    unsigned long long livelock_limit;
    int order;
    int workers;
};

struct Worker;
struct Launch;

struct Fiber {
    FiberHead h;  // must stay first: kernel code sees a FiberHead*
    void* sp;
#ifdef CUEMU_UCTX
    ucontext_t uc;
#endif
    char* stack;
    Worker* w;
    const char* what;  // trap message
    void* fault_addr;  // for ST_TRAP caused by a signal
    unsigned int amask;  // __activemask(): live lanes of the warp at this lane's last sync point
    int fault_sig;
    int state;
    int line;
    int kind;  // SyncKind or WarpOp
    int pred;
    unsigned int mask;
    int param;
    int width;
    int vkind;
    u64 val;
    u64 result;
};

struct Launch {
    const LaunchDesc* d;
    unsigned int T;
    unsigned int nwarps;
    u64 nblocks;
    u64 next_block;  // atomic
    u64 lcg_bits;    // for random block order
    int failed;      // atomic
    char* err;
    int errlen;
};

struct Worker {
    Launch* L;
    Fiber* fibers;
    unsigned int* order;
    unsigned char* dyn;
    unsigned char* tls;  // this thread's TLS block of the kernel module = static __shared__
    size_t tls_size;
    void* sched_sp;
#ifdef CUEMU_UCTX
    ucontext_t sched_uc;
#endif
    unsigned int mxcsr;
    unsigned short fpcw;
    u64 rng;
    u64 block;              // linear index of the running block
    Fiber* volatile running;  // fiber currently switched in (read by the fault handler)
    pthread_t thread;
    int slot;               // index in g_active, or -1
};

// ------------------------------------------------------------------ errors
static void fail(Launch* L, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(Launch* L, const char* fmt, ...) {
    int expected = 0;
    if (!__atomic_compare_exchange_n(&L->failed, &expected, 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;  // first error wins
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->err, (size_t)L->errlen, fmt, ap);
    va_end(ap);
}
static bool failed(Launch* L) { return __atomic_load_n(&L->failed, __ATOMIC_ACQUIRE) != 0; }

// small append-only string builder on a fixed buffer
struct Str {
    char buf[1600];
    size_t n = 0;
    void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        if (n >= sizeof(buf) - 1) return;
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
        va_end(ap);
        if (k > 0) n += (size_t)k;
        if (n > sizeof(buf) - 1) n = sizeof(buf) - 1;
    }
};

// "0-15, 32, 40-47" from a sorted list of thread ids (at most 8 ranges shown)
static void add_ranges(Str& s, const unsigned int* ids, unsigned int n) {
    unsigned int shown = 0;
    for (unsigned int i = 0; i < n;) {
        unsigned int j = i;
        while (j + 1 < n && ids[j + 1] == ids[j] + 1) ++j;
        if (shown == 8) {
            s.add(", ...");
            break;
        }
        s.add(shown ? ", " : "");
        if (j == i) s.add("%u", ids[i]);
        else s.add("%u-%u", ids[i], ids[j]);
        ++shown;
        i = j + 1;
    }
}

static const char* op_name(int state, int kind) {
    if (state == ST_BAR) {
        static const char* n[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and", "__syncthreads_or"};
        return (kind >= 0 && kind < 4) ? n[kind] : "__syncthreads?";
    }
    static const char* n[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                              "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp",
                              "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync",
                              "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync"};
    return (kind >= 0 && kind < 14) ? n[kind] : "warp op?";
}

static void block_prefix(Str& s, Worker* w, const Fiber* f0) {
    s.add("kernel '%s', block (%u,%u,%u) [block size (%u,%u,%u)]: ", w->L->d->kernel_name, f0->h.blockIdx.x,
          f0->h.blockIdx.y, f0->h.blockIdx.z, f0->h.blockDim.x, f0->h.blockDim.y, f0->h.blockDim.z);
}

// Describe every blocked fiber, grouped by (state, op, line).
static void describe_waiters(Str& s, Worker* w) {
    Launch* L = w->L;
    unsigned int T = L->T;
    unsigned int* ids = (unsigned int*)malloc(sizeof(unsigned int) * T);
    char* seen = (char*)calloc(T, 1);
    if (!ids || !seen) {
        free(ids);
        free(seen);
        return;
    }
    bool first = true;
    for (unsigned int t = 0; t < T; ++t) {
        Fiber* f = &w->fibers[t];
        if (seen[t] || (f->state != ST_BAR && f->state != ST_WARP)) continue;
        unsigned int n = 0;
        for (unsigned int u = t; u < T; ++u) {
            Fiber* g = &w->fibers[u];
            if (!seen[u] && g->state == f->state && g->kind == f->kind && g->line == f->line) {
                seen[u] = 1;
                ids[n++] = u;
            }
        }
        s.add(first ? "" : "; ");
        first = false;
        s.add("thread%s ", n > 1 ? "s" : "");
        add_ranges(s, ids, n);
        s.add(" wait%s at %s (line %d)", n > 1 ? "" : "s", op_name(f->state, f->kind), f->line);
    }
    unsigned int nexit = 0;
    for (unsigned int t = 0; t < T; ++t)
        if (w->fibers[t].state == ST_EXIT) ids[nexit++] = t;
    if (nexit) {
        s.add("; thread%s ", nexit > 1 ? "s" : "");
        add_ranges(s, ids, nexit);
        s.add(" exited");
    }
    s.add(" (linear thread ids: x + y*blockDim.x + z*blockDim.x*blockDim.y)");
    free(ids);
    free(seen);
}

// ------------------------------------------------------------ fiber switch
#ifndef CUEMU_UCTX
extern "C" void cuemu_switch(void** save_sp, void* new_sp) CUEMU_HIDDEN;
extern "C" void cuemu_fiber_start(void) CUEMU_HIDDEN;
asm(R"(
    .text
    .globl cuemu_switch
    .hidden cuemu_switch
    .type cuemu_switch,@function
    .p2align 4
cuemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_switch, .-cuemu_switch

    .globl cuemu_fiber_start
    .hidden cuemu_fiber_start
    .type cuemu_fiber_start,@function
    .p2align 4
cuemu_fiber_start:
    movq %r12, %rdi
    call cuemu_fiber_main
    ud2
    .size cuemu_fiber_start, .-cuemu_fiber_start
)");
#endif

extern "C" CUEMU_HIDDEN __attribute__((used, noreturn)) void cuemu_fiber_main(Fiber* f);

static inline void resume(Worker* w, Fiber* f) {
    w->running = f;
#ifdef CUEMU_UCTX
    swapcontext(&w->sched_uc, &f->uc);
#else
    cuemu_switch(&w->sched_sp, f->sp);
#endif
    w->running = nullptr;
}
static inline void yield_to_scheduler(Fiber* f) {
#ifdef CUEMU_UCTX
    swapcontext(&f->uc, &f->w->sched_uc);
#else
    cuemu_switch(&f->sp, f->w->sched_sp);
#endif
}

#ifdef CUEMU_UCTX
static void fiber_main_uc(unsigned int hi, unsigned int lo) {
    cuemu_fiber_main((Fiber*)(((unsigned long)hi << 32) | (unsigned long)lo));
}
#endif

static void init_context(Worker* w, Fiber* f, size_t stack_size) {
#ifdef CUEMU_UCTX
    (void)w;
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = stack_size;
    f->uc.uc_link = nullptr;
    unsigned long p = (unsigned long)f;
    makecontext(&f->uc, (void (*)())fiber_main_uc, 2, (unsigned int)(p >> 32), (unsigned int)(p & 0xffffffffu));
#else
    char* top = (char*)(((unsigned long)(f->stack + stack_size)) & ~(unsigned long)15);
    char* A = top - 16;  // rsp after `ret` into cuemu_fiber_start: 16-byte aligned
    *(u64*)(A - 8) = (u64)(void*)cuemu_fiber_start;
    for (int k = 2; k <= 7; ++k) *(u64*)(A - 8 * k) = 0;  // rbp rbx r12 r13 r14 r15
    *(u64*)(A - 32) = (u64)f;                             // r12 -> first argument
    *(u32*)(A - 64) = w->mxcsr;
    *(unsigned short*)(A - 60) = w->fpcw;
    f->sp = A - 64;
#endif
}

// ----------------------------------------------------------- fault trap
// A SIGSEGV/SIGBUS/SIGFPE/SIGILL raised while a fiber runs becomes a launch
// error instead of killing the process: the handler (on an alternate signal
// stack) marks the fiber trapped and switches straight back to the scheduler.
// Faults elsewhere are passed on to the previously installed handler.
#define CUEMU_MAX_ACTIVE 256
static Worker* volatile g_active[CUEMU_MAX_ACTIVE];
static const int g_sigs[4] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
static struct sigaction g_old_act[4];
static pthread_mutex_t g_sig_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_sig_installed = 0;

static void fault_handler(int sig, siginfo_t* si, void* uc) {
    pthread_t self = pthread_self();
    for (int i = 0; i < CUEMU_MAX_ACTIVE; ++i) {
        Worker* w = g_active[i];
        if (w && pthread_equal(w->thread, self)) {
            Fiber* f = w->running;
            if (!f) break;
            f->state = ST_TRAP;
            f->fault_addr = si ? si->si_addr : nullptr;
            f->fault_sig = sig;
            f->what = nullptr;
            w->running = nullptr;
            yield_to_scheduler(f);  // never returns
        }
    }
    int k = 0;
    while (k < 4 && g_sigs[k] != sig) ++k;
    if (k == 4) return;
    struct sigaction* old = &g_old_act[k];
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) {
            old->sa_sigaction(sig, si, uc);
            return;
        }
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    // default action: restore it and let the faulting instruction run again
    signal(sig, SIG_DFL);
}

static void install_fault_handler() {
    pthread_mutex_lock(&g_sig_mu);
    if (!g_sig_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = fault_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        for (int k = 0; k < 4; ++k) sigaction(g_sigs[k], &sa, &g_old_act[k]);
        g_sig_installed = 1;
    }
    pthread_mutex_unlock(&g_sig_mu);
}

static void register_worker(Worker* w) {
    w->thread = pthread_self();
    w->running = nullptr;
    w->slot = -1;
    for (int i = 0; i < CUEMU_MAX_ACTIVE; ++i) {
        Worker* expected = nullptr;
        if (__atomic_compare_exchange_n((Worker**)&g_active[i], &expected, w, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            w->slot = i;
            return;
        }
    }
}
static void unregister_worker(Worker* w) {
    if (w->slot >= 0) __atomic_store_n((Worker**)&g_active[w->slot], (Worker*)nullptr, __ATOMIC_SEQ_CST);
}

// ------------------------------------------------------------- stack pool
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static char** g_pool = nullptr;
static size_t g_pool_n = 0, g_pool_cap = 0, g_pool_size = 0;
static size_t g_page = 4096;
// PROT_NONE region below each fiber stack (virtual only).  Kernels are also
// compiled with -fstack-clash-protection so big frames probe page by page.
static const size_t g_guard = 64 * 1024;

static char* new_stack(size_t size) {
    size_t total = size + g_guard;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, g_guard, PROT_NONE);
    return (char*)p + g_guard;
}
static bool get_stacks(char** out, size_t n, size_t size) {
    pthread_mutex_lock(&g_pool_mu);
    if (size != g_pool_size) {
        for (size_t i = 0; i < g_pool_n; ++i) munmap(g_pool[i] - g_guard, g_pool_size + g_guard);
        g_pool_n = 0;
        g_pool_size = size;
    }
    size_t k = 0;
    while (k < n && g_pool_n > 0) out[k++] = g_pool[--g_pool_n];
    pthread_mutex_unlock(&g_pool_mu);
    for (; k < n; ++k) {
        out[k] = new_stack(size);
        if (!out[k]) {
            for (size_t j = 0; j < k; ++j) munmap(out[j] - g_guard, size + g_guard);
            return false;
        }
    }
    return true;
}
static void put_stacks(char** s, size_t n, size_t size) {
    pthread_mutex_lock(&g_pool_mu);
    if (size == g_pool_size) {
        if (g_pool_n + n > g_pool_cap) {
            size_t cap = g_pool_cap ? g_pool_cap : 1024;
            while (cap < g_pool_n + n) cap *= 2;
            char** np = (char**)realloc(g_pool, cap * sizeof(char*));
            if (np) {
                g_pool = np;
                g_pool_cap = cap;
            }
        }
        size_t i = 0;
        for (; i < n && g_pool_n < g_pool_cap; ++i) g_pool[g_pool_n++] = s[i];
        for (; i < n; ++i) munmap(s[i] - g_guard, size + g_guard);
    } else {
        for (size_t i = 0; i < n; ++i) munmap(s[i] - g_guard, size + g_guard);
    }
    pthread_mutex_unlock(&g_pool_mu);
}

// ------------------------------------------------------------------- rng
static inline u64 splitmix(u64 x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline u64 next_rand(u64& s) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
}

// ------------------------------------------------------------ warp logic
static const u64 POISON_I32 = 0xDEADBEEFull;
static const u64 POISON_F32 = 0x7FFFFFFFull;  // NaN
static const u64 POISON_I64 = 0xDEADBEEFDEADBEEFull;
static const u64 POISON_F64 = 0x7FFFFFFFFFFFFFFFull;  // NaN
static inline u64 poison(int vk) {
    switch (vk) {
        case VK_F32: return POISON_F32;
        case VK_F64: return POISON_F64;
        case VK_I64:
        case VK_U64: return POISON_I64;
        default: return POISON_I32;
    }
}

// Try to complete the warp operations of warp `wi`.  Returns the number of
// groups completed, or -1 after reporting an error.
static int complete_warp(Worker* w, unsigned int wi, unsigned int* n_warp) {
    Launch* L = w->L;
    unsigned int base = wi * 32u;
    unsigned int nl = L->T - base < 32u ? L->T - base : 32u;
    Fiber* F = &w->fibers[base];
    unsigned int live = 0, waiting = 0;
    for (unsigned int l = 0; l < nl; ++l) {
        if (F[l].state != ST_EXIT) live |= 1u << l;
        if (F[l].state == ST_WARP) waiting |= 1u << l;
    }
    if (!waiting) return 0;
    int completed = 0;
    unsigned int todo = waiting;
    while (todo) {
        unsigned int l0 = (unsigned int)__builtin_ctz(todo);
        Fiber* f0 = &F[l0];
        unsigned int mask = f0->mask;
        if (!(mask & (1u << l0))) {
            Str s;
            block_prefix(s, w, f0);
            s.add("thread %u calls %s (line %d) with a mask 0x%08x that does not contain its own lane %u",
                  base + l0, op_name(ST_WARP, f0->kind), f0->line, mask, l0);
            fail(L, "%s", s.buf);
            return -1;
        }
        unsigned int part = mask & live;
        // every participant must be waiting at a warp op with the same mask
        bool ready = true;
        for (unsigned int m = part; m; m &= m - 1) {
            Fiber* g = &F[__builtin_ctz(m)];
            if (g->state != ST_WARP || g->mask != mask) {
                ready = false;
                break;
            }
        }
        if (!ready) {
            todo &= ~(1u << l0);
            continue;
        }
        todo &= ~part;
        // same operation at the same source line (any line for __syncwarp)
        for (unsigned int m = part; m; m &= m - 1) {
            Fiber* g = &F[__builtin_ctz(m)];
            bool same = g->kind == f0->kind && (g->kind == OP_SYNCWARP || g->line == f0->line);
            if (!same) {
                Str s;
                block_prefix(s, w, f0);
                s.add("divergent warp operation in warp %u: lanes wait at different warp operations: ", wi);
                describe_waiters(s, w);
                fail(L, "%s", s.buf);
                return -1;
            }
            if (g->kind <= OP_SHFL_XOR && (g->width != f0->width || g->vkind != f0->vkind)) {
                Str s;
                block_prefix(s, w, f0);
                s.add("%s (line %d) in warp %u: lanes disagree on width or value type",
                      op_name(ST_WARP, g->kind), g->line, wi);
                fail(L, "%s", s.buf);
                return -1;
            }
        }
        int op = f0->kind;
        if (op <= OP_SHFL_XOR) {
            int width = f0->width;
            if (width < 1 || width > 32 || (width & (width - 1))) {
                Str s;
                block_prefix(s, w, f0);
                s.add("%s (line %d): width %d is not a power of two in [1, 32]", op_name(ST_WARP, op), f0->line,
                      width);
                fail(L, "%s", s.buf);
                return -1;
            }
            unsigned int wd = (unsigned int)width;
            for (unsigned int m = part; m; m &= m - 1) {
                unsigned int l = (unsigned int)__builtin_ctz(m);
                Fiber* g = &F[l];
                unsigned int seg = l & ~(wd - 1);
                unsigned int src = l;
                unsigned int p = (unsigned int)g->param;
                switch (op) {
                    case OP_SHFL_IDX: src = seg + (p & (wd - 1)); break;
                    case OP_SHFL_UP: src = (l - seg) >= p ? l - p : l; break;
                    case OP_SHFL_DOWN: src = (l - seg) + p < wd && p < wd ? l + p : l; break;
                    case OP_SHFL_XOR: {
                        unsigned int s2 = l ^ (p & 31u);
                        src = s2 >= seg + wd ? l : s2;
                        break;
                    }
                }
                g->result = (src < 32u && (part & (1u << src))) ? F[src].val : poison(g->vkind);
            }
        } else if (op == OP_BALLOT || op == OP_ANY || op == OP_ALL) {
            unsigned int bal = 0;
            for (unsigned int m = part; m; m &= m - 1) {
                unsigned int l = (unsigned int)__builtin_ctz(m);
                if (F[l].val) bal |= 1u << l;
            }
            u64 r = op == OP_BALLOT ? bal : op == OP_ANY ? (bal != 0) : (bal == part);
            for (unsigned int m = part; m; m &= m - 1) F[__builtin_ctz(m)].result = r;
        } else if (op == OP_SYNCWARP) {
            for (unsigned int m = part; m; m &= m - 1) F[__builtin_ctz(m)].result = 0;
        } else {  // __reduce_*_sync on 32-bit ints
            bool sgn = f0->vkind == VK_I32;
            u32 acc = (u32)F[l0].val;
            for (unsigned int m = part & (part - 1); m; m &= m - 1) {
                u32 v = (u32)F[__builtin_ctz(m)].val;
                switch (op) {
                    case OP_RED_ADD: acc += v; break;
                    case OP_RED_AND: acc &= v; break;
                    case OP_RED_OR: acc |= v; break;
                    case OP_RED_XOR: acc ^= v; break;
                    case OP_RED_MIN:
                        acc = sgn ? ((int)v < (int)acc ? v : acc) : (v < acc ? v : acc);
                        break;
                    case OP_RED_MAX:
                        acc = sgn ? ((int)v > (int)acc ? v : acc) : (v > acc ? v : acc);
                        break;
                }
            }
            for (unsigned int m = part; m; m &= m - 1) F[__builtin_ctz(m)].result = acc;
        }
        for (unsigned int m = part; m; m &= m - 1) {
            F[__builtin_ctz(m)].state = ST_RUN;
            F[__builtin_ctz(m)].amask = live;
        }
        *n_warp -= (unsigned int)__builtin_popcount(part);
        ++completed;
    }
    return completed;
}

// --------------------------------------------------------- shared memory
// The kernel module's TLS block holds its static __shared__ arrays, the
// dynamic shared buffer and cuemu::cur (which every fiber sets on entry and
// after each switch), so all of it can be poisoned at block start.
struct TlsQuery {
    unsigned long addr;
    unsigned char* data;
    size_t size;
};
static int tls_cb(struct dl_phdr_info* info, size_t, void* arg) {
    TlsQuery* q = (TlsQuery*)arg;
    bool mine = false;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        unsigned long lo = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && q->addr >= lo && q->addr < lo + ph.p_memsz) mine = true;
    }
    if (!mine) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i)
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            q->data = (unsigned char*)info->dlpi_tls_data;
            q->size = info->dlpi_phdr[i].p_memsz;
        }
    return 1;
}
static void find_tls(Worker* w) {
    const LaunchDesc* d = w->L->d;
    w->tls = nullptr;
    w->tls_size = 0;
    if (!d->tls_anchor) return;
    unsigned char* anchor = (unsigned char*)d->tls_anchor();  // also allocates the block in this thread
    TlsQuery q = {(unsigned long)(void*)d->entry, nullptr, 0};
    dl_iterate_phdr(tls_cb, &q);
    if (q.data && anchor >= q.data && anchor < q.data + q.size) {
        w->tls = q.data;
        w->tls_size = q.size;
    }
}
static void poison_shared(Worker* w) {
    const LaunchDesc* d = w->L->d;
    unsigned char* dyn = w->dyn;
    size_t dyn_used = (size_t)d->shared_mem;
    if (w->tls) {
        unsigned char* lo = w->tls;
        unsigned char* hi = w->tls + w->tls_size;
        if (dyn && dyn >= lo && dyn < hi) {
            unsigned char* dyn_end = dyn + CUEMU_MAX_DYN_SHARED;
            memset(lo, 0xFF, (size_t)(dyn - lo));
            if (dyn_end < hi) memset(dyn_end, 0xFF, (size_t)(hi - dyn_end));
        } else {
            memset(lo, 0xFF, w->tls_size);
            if (dyn) memset(dyn, 0xFF, dyn_used);
            return;
        }
    }
    if (dyn && dyn_used) memset(dyn, 0xFF, dyn_used);  // 0xFF..: NaN as float and double
}

// ------------------------------------------------------------- one block
static void run_block(Worker* w, u64 b) {
    Launch* L = w->L;
    const LaunchDesc* d = L->d;
    const unsigned int T = L->T;
    const unsigned int bx = d->block[0], by = d->block[1];
    const unsigned int gx = d->grid[0], gy = d->grid[1];
    w->block = b;
    poison_shared(w);
    uint3 bidx = {(unsigned int)(b % gx), (unsigned int)((b / gx) % gy), (unsigned int)(b / ((u64)gx * gy))};
    for (unsigned int t = 0; t < T; ++t) {
        Fiber* f = &w->fibers[t];
        f->h.threadIdx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        f->h.blockIdx = bidx;
        f->h.blockDim = dim3(d->block[0], d->block[1], d->block[2]);
        f->h.gridDim = dim3(d->grid[0], d->grid[1], d->grid[2]);
        f->h.lane = t & 31u;
        f->h.tid = t;
        f->state = ST_RUN;
        f->line = 0;
        f->kind = 0;
        f->what = nullptr;
        {
            unsigned int base = t & ~31u, nl = T - base < 32u ? T - base : 32u;
            f->amask = nl == 32u ? 0xffffffffu : ((1u << nl) - 1u);
        }
        init_context(w, f, (size_t)d->stack_size);
    }
    unsigned int* ord = w->order;
    for (unsigned int t = 0; t < T; ++t) ord[t] = d->order == ORD_REVERSE ? T - 1 - t : t;
    w->rng = splitmix(d->seed ^ splitmix(b + 0x1234567ull)) | 1ull;

    unsigned int n_live = T, n_bar = 0, n_warp = 0;
    u64 stalled = 0;  // passes in which only warp ops progressed while a barrier waited
    for (;;) {
        if (d->order == ORD_RANDOM) {
            for (unsigned int i = T; i > 1; --i) {
                unsigned int j = (unsigned int)(next_rand(w->rng) % i);
                unsigned int tmp = ord[i - 1];
                ord[i - 1] = ord[j];
                ord[j] = tmp;
            }
        }
        bool arrived = false;
        for (unsigned int k = 0; k < T; ++k) {
            Fiber* f = &w->fibers[ord[k]];
            if (f->state != ST_RUN) continue;
            resume(w, f);
            switch (f->state) {
                case ST_BAR: ++n_bar; arrived = true; break;
                case ST_WARP: ++n_warp; break;
                case ST_EXIT: --n_live; arrived = true; break;
                case ST_TRAP: {
                    Str s;
                    block_prefix(s, w, f);
                    s.add("thread (%u,%u,%u): ", f->h.threadIdx.x, f->h.threadIdx.y, f->h.threadIdx.z);
                    if (f->what) {
                        s.add("%s (line %d)", f->what, f->line);
                    } else {
                        const char* what = f->fault_sig == SIGFPE   ? "arithmetic exception (integer division by zero?)"
                                           : f->fault_sig == SIGILL ? "illegal instruction"
                                                                    : "invalid memory access";
                        s.add("%s at address %p", what, f->fault_addr);
                        char* a = (char*)f->fault_addr;
                        if (f->fault_sig != SIGFPE && a >= f->stack - g_guard && a < f->stack)
                            s.add(" = fiber stack overflow (each emulated thread has %llu KiB of stack; "
                                  "raise $CUPYVAE_EMU_STACK_KB)", (unsigned long long)(d->stack_size / 1024));
                        else if (f->fault_sig == SIGSEGV || f->fault_sig == SIGBUS)
                            s.add(" (out-of-bounds or null pointer access in the kernel; a GPU would report "
                                  "an illegal address)");
                    }
                    fail(L, "%s", s.buf);
                    return;
                }
                default: break;
            }
        }
        if (n_live == 0) return;
        if (failed(L)) return;
        if (n_warp) {
            int done = 0;
            for (unsigned int wi = 0; wi < L->nwarps; ++wi) {
                int r = complete_warp(w, wi, &n_warp);
                if (r < 0) return;
                done += r;
            }
            if (done) {
                if (n_bar && !arrived) {
                    if (++stalled > d->livelock_limit) {
                        Str s;
                        block_prefix(s, w, &w->fibers[0]);
                        s.add("probable deadlock: %llu scheduling rounds in which only warp operations made "
                              "progress while threads wait at a barrier: ",
                              (unsigned long long)stalled);
                        describe_waiters(s, w);
                        fail(L, "%s", s.buf);
                        return;
                    }
                } else {
                    stalled = 0;
                }
                continue;
            }
        }
        if (n_bar == n_live) {
            // every live thread is at a __syncthreads: same line and kind?
            Fiber* f0 = nullptr;
            bool same = true;
            int count = 0;
            for (unsigned int t = 0; t < T; ++t) {
                Fiber* f = &w->fibers[t];
                if (f->state != ST_BAR) continue;
                if (!f0) f0 = f;
                else if (f->line != f0->line || f->kind != f0->kind) same = false;
                count += f->pred;
            }
            if (!same) {
                Str s;
                block_prefix(s, w, f0);
                s.add("divergent __syncthreads: threads wait at different barriers: ");
                describe_waiters(s, w);
                fail(L, "%s", s.buf);
                return;
            }
            int r = 0;
            switch (f0->kind) {
                case SYNC_COUNT: r = count; break;
                case SYNC_AND: r = count == (int)n_live; break;
                case SYNC_OR: r = count != 0; break;
                default: r = 0;
            }
            unsigned int live = 0;
            for (unsigned int t = 0; t < T; ++t) {
                Fiber* f = &w->fibers[t];
                if ((t & 31u) == 0) live = 0;
                if (f->state != ST_EXIT) live |= 1u << (t & 31u);
                if ((t & 31u) == 31u || t == T - 1) {
                    for (unsigned int u = t & ~31u; u <= t; ++u) w->fibers[u].amask = live;
                }
            }
            for (unsigned int t = 0; t < T; ++t) {
                Fiber* f = &w->fibers[t];
                if (f->state == ST_BAR) {
                    f->result = (u64)(unsigned int)r;
                    f->state = ST_RUN;
                }
            }
            n_bar = 0;
            stalled = 0;
            continue;
        }
        Str s;
        block_prefix(s, w, &w->fibers[0]);
        s.add("deadlock: no thread can make progress: ");
        describe_waiters(s, w);
        fail(L, "%s", s.buf);
        return;
    }
}

static u64 block_for(Launch* L, u64 k) {
    int ord = L->d->order;
    if (ord == ORD_FORWARD) return k;
    if (ord == ORD_REVERSE) return L->nblocks - 1 - k;
    // random: LCG over [0, 2^m) (full period: a % 4 == 1, c odd) + cycle walking
    u64 m = L->lcg_bits;
    u64 mask = m >= 64 ? ~0ull : ((1ull << m) - 1);
    u64 c = (splitmix(L->d->seed) | 1ull) & mask;
    u64 x = k;
    do {
        x = (x * 0x5851F42D4C957F2Dull + c) & mask;
    } while (x >= L->nblocks);
    return x;
}

static void* worker_main(void* arg) {
    Worker* w = (Worker*)arg;
    Launch* L = w->L;
    // alternate signal stack for the fault handler (keep an existing one)
    stack_t old_ss, ss;
    void* alt = nullptr;
    bool own_alt = false;
    if (sigaltstack(nullptr, &old_ss) == 0 && (old_ss.ss_flags & SS_DISABLE)) {
        size_t alt_size = 64 * 1024;
        alt = malloc(alt_size);
        if (alt) {
            ss.ss_sp = alt;
            ss.ss_size = alt_size;
            ss.ss_flags = 0;
            own_alt = sigaltstack(&ss, nullptr) == 0;
        }
    }
    register_worker(w);
#ifndef CUEMU_UCTX
    w->mxcsr = __builtin_ia32_stmxcsr();
    __asm__ volatile("fnstcw %0" : "=m"(w->fpcw));
#endif
    w->dyn = L->d->dynsmem ? (unsigned char*)L->d->dynsmem() : nullptr;
    find_tls(w);
    for (;;) {
        if (failed(L)) break;
        u64 k = __atomic_fetch_add(&L->next_block, 1, __ATOMIC_RELAXED);
        if (k >= L->nblocks) break;
        run_block(w, block_for(L, k));
    }
    unregister_worker(w);
    if (own_alt) {
        ss.ss_sp = nullptr;
        ss.ss_size = 0;
        ss.ss_flags = SS_DISABLE;
        sigaltstack(&ss, nullptr);
    }
    free(alt);
    return nullptr;
}

}  // namespace cuemu

using namespace cuemu;

extern "C" CUEMU_HIDDEN __attribute__((used, noreturn)) void cuemu_fiber_main(Fiber* f) {
    Launch* L = f->w->L;
    L->d->entry(&f->h, L->d->args);
    f->state = ST_EXIT;
    yield_to_scheduler(f);
    __builtin_trap();  // an exited fiber is never resumed
}

CUEMU_API int cuemu_rt_sync(FiberHead* h, int kind, int pred, int line) {
    Fiber* f = (Fiber*)h;
    f->state = ST_BAR;
    f->kind = kind;
    f->pred = pred;
    f->line = line;
    yield_to_scheduler(f);
    return (int)(unsigned int)f->result;
}

CUEMU_API u64 cuemu_rt_warp(FiberHead* h, int op, unsigned int mask, u64 val, int param, int width, int vkind,
                            int line) {
    Fiber* f = (Fiber*)h;
    f->state = ST_WARP;
    f->kind = op;
    f->mask = mask;
    f->val = val;
    f->param = param;
    f->width = width;
    f->vkind = vkind;
    f->line = line;
    yield_to_scheduler(f);
    return f->result;
}

CUEMU_API unsigned int cuemu_rt_activemask(FiberHead* h) {
    // deterministic: the warp's live lanes at this lane's last synchronization
    // point (block start, warp operation or barrier), always including itself
    Fiber* f = (Fiber*)h;
    return f->amask | (1u << f->h.lane);
}

CUEMU_API void cuemu_rt_trap(FiberHead* h, int line, const char* what) {
    Fiber* f = (Fiber*)h;
    f->state = ST_TRAP;
    f->line = line;
    f->what = what;
    yield_to_scheduler(f);
    __builtin_trap();
}

CUEMU_API int cuemu_rt_abi_version(void) { return 1; }

// Returns 0 on success, nonzero with a message in err on failure.
CUEMU_API int cuemu_rt_launch(const LaunchDesc* d, char* err, int errlen) {
    Launch L;
    memset(&L, 0, sizeof(L));
    L.d = d;
    L.err = err;
    L.errlen = errlen;
    if (errlen > 0) err[0] = 0;
    for (int i = 0; i < 3; ++i)
        if (d->grid[i] == 0 || d->block[i] == 0) {
            fail(&L, "kernel '%s': grid and block dimensions must be >= 1", d->kernel_name);
            return 1;
        }
    L.T = d->block[0] * d->block[1] * d->block[2];
    if (L.T > 1024) {
        fail(&L, "kernel '%s': %u threads per block exceeds 1024", d->kernel_name, L.T);
        return 1;
    }
    L.nwarps = (L.T + 31) / 32;
    L.nblocks = (u64)d->grid[0] * d->grid[1] * d->grid[2];
    while (L.lcg_bits < 64 && (1ull << L.lcg_bits) < L.nblocks) ++L.lcg_bits;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg > 0) g_page = (size_t)pg;
    size_t ss = (size_t)d->stack_size;
    ss = (ss + g_page - 1) & ~(g_page - 1);
    if (ss < 4 * g_page) ss = 4 * g_page;
    LaunchDesc dd = *d;
    dd.stack_size = ss;
    L.d = &dd;
    install_fault_handler();

    unsigned int nw = d->workers < 1 ? 1u : (unsigned int)d->workers;
    if ((u64)nw > L.nblocks) nw = (unsigned int)L.nblocks;
    Worker* ws = (Worker*)calloc(nw, sizeof(Worker));
    char** stacks = (char**)calloc((size_t)nw * L.T, sizeof(char*));
    if (!ws || !stacks) {
        free(ws);
        free(stacks);
        fail(&L, "out of memory");
        return 1;
    }
    unsigned int ready = 0;
    for (; ready < nw; ++ready) {
        Worker* w = &ws[ready];
        w->L = &L;
        w->fibers = (Fiber*)calloc(L.T, sizeof(Fiber));
        w->order = (unsigned int*)calloc(L.T, sizeof(unsigned int));
        char** st = stacks + (size_t)ready * L.T;
        if (!w->fibers || !w->order || !get_stacks(st, L.T, ss)) {
            free(w->fibers);
            free(w->order);
            break;
        }
        for (unsigned int t = 0; t < L.T; ++t) {
            w->fibers[t].stack = st[t];
            w->fibers[t].w = w;
        }
    }
    if (ready == 0) {
        free(ws);
        free(stacks);
        fail(&L, "could not allocate fiber stacks (%u threads x %zu bytes)", L.T, ss);
        return 1;
    }
    nw = ready;
    pthread_t* th = (pthread_t*)calloc(nw, sizeof(pthread_t));
    char* started = (char*)calloc(nw, 1);
    for (unsigned int i = 1; i < nw && th && started; ++i)
        started[i] = pthread_create(&th[i], nullptr, worker_main, &ws[i]) == 0;
    worker_main(&ws[0]);  // the calling thread is worker 0
    for (unsigned int i = 1; i < nw && th && started; ++i)
        if (started[i]) pthread_join(th[i], nullptr);
    for (unsigned int i = 0; i < nw; ++i) {
        put_stacks(stacks + (size_t)i * L.T, L.T, ss);
        free(ws[i].fibers);
        free(ws[i].order);
    }
    free(th);
    free(started);
    free(ws);
    free(stacks);
    return failed(&L) ? 1 : 0;
}
