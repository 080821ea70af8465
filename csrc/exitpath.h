/* pyvmm exit fast path: the C side of a VM exit.
 *
 * Unicorn calls these hooks while the guest is suspended. Each hook reads the
 * guest's general registers into a frame with one batched call, calls the
 * Python exit dispatcher (pv_exit, an extern "Python" function), and writes back
 * only the registers the dispatcher changed. Python never pays for the ctypes
 * hook wrapper or for one foreign call per register.
 *
 * libunicorn is not linked: pv_bind() dlopen()s the copy the unicorn Python
 * package already loaded (RTLD_NOLOAD) and looks up the few functions used.
 */
#include <stdint.h>
#include <stddef.h>

typedef struct pv_frame {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
    uint64_t cs;         /* selector only (its RPL is the CPL); read, never written */
} pv_frame;

#define PV_NREGS 19
#define PV_NREASONS 64   /* SDM basic exit reasons used by pyvmm are < 64 */
#define PV_MAX_CPUID 256
#define PV_WINDOW_BUDGET 20000  /* instructions watched per interrupt window */
#define PV_REASON_CPUID 10
#define PV_OUTSIDE_EXIT (-2)   /* pv_vcpu.reason between exits */

/* exit kinds passed to pv_exit */
enum {
    PV_CPUID = 1,   /* a, b: unused */
    PV_IN = 2,      /* a = port, b = size; returns the value */
    PV_OUT = 3,     /* a = port, b = size, c = value */
    PV_INVALID = 4, /* invalid opcode (VMCALL, VMMCALL, UD2...); returns 1 if handled */
    PV_INTR = 5,    /* a = intno (0x100 + SVM exit code for intercepts) */
    PV_RDTSC = 6,
    PV_SYSCALL = 7,
};

typedef struct pv_cpuid_entry {
    uint32_t leaf, subleaf, any_subleaf, eax, ebx, ecx, edx;
} pv_cpuid_entry;

typedef struct pv_vcpu {
    void *uc;            /* uc_engine * */
    void *handle;        /* cffi handle of the Python Vcpu backend */
    pv_frame f;          /* registers of the exit being handled */
    pv_frame saved;      /* as read, to find what the handler changed */
    void *ctx;           /* a uc_context for guest-state reads/writes */
    size_t ctx_size;     /* bytes of the context including its header */
    uint64_t hook_ns;    /* total ns spent in pv_exit, for bookkeeping */
    uint64_t nexits;
    size_t hooks[8];
    int nhooks;
    int stop_requested;
    uint64_t seq;                 /* exits so far (the Exit sequence number) */
    int reason;                   /* set by the dispatcher: the SDM reason of this exit, -1 none */
    uint64_t reason_count[PV_NREASONS];
    uint64_t reason_ns[PV_NREASONS];   /* time in root mode, by reason */
    uint64_t observer_ns;         /* time spent in observers during this exit (not counted) */
    int fast_cpuid;               /* serve CPUID from the table below without calling Python */
    size_t window_hook;           /* the interrupt-window code hook while one is wanted, else 0 */
    int window_if_seen;           /* IF was 1 at the previous instruction boundary */
    volatile int kick_pending;    /* root mode wants the engine back: stop at the next exit */
    int window_budget;            /* instructions the hook may still watch before giving up */
    int window_expired;           /* the budget ran out: root mode falls back to polling */
    int ncpuid;
    pv_cpuid_entry cpuid[PV_MAX_CPUID];
} pv_vcpu;
