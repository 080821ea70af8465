/* See exitpath.h. Compiled by cffi into pyvmm._exitpath (csrc/exitpath_build.py). */
#include <dlfcn.h>
#include <string.h>
#include <time.h>
#include <stdbool.h>
#include "exitpath.h"

/* Hook types from unicorn/unicorn.h (enum uc_hook_type). Register and instruction
 * ids are passed in by pv_bind() from the unicorn package's x86_const, so this file
 * holds no copy of those enums. */
#define UC_HOOK_INTR (1 << 0)
#define UC_HOOK_INSN (1 << 1)
#define UC_HOOK_INSN_INVALID (1 << 14)
#define UC_HOOK_CODE (1 << 2)
#define UC_HOOK_BLOCK (1 << 3)
#define RFLAGS_IF 0x200

enum { INS_CPUID, INS_IN, INS_OUT, INS_SYSCALL, INS_RDTSC, NINS };
static int insn_ids[NINS];
static int msr_regid;            /* UC_X86_REG_MSR */

static int (*p_reg_read_batch)(void *, int *, void **, int);
static int (*p_reg_read)(void *, int, void *);
static int (*p_reg_write)(void *, int, const void *);
static int (*p_reg_write_batch)(void *, int *, void *const *, int);
static int (*p_hook_add)(void *, size_t *, int, void *, void *, uint64_t, uint64_t, ...);
static int (*p_hook_del)(void *, size_t);
static int (*p_emu_stop)(void *);
static int (*p_context_alloc)(void *, void **);
static int (*p_context_free)(void *);
static int (*p_context_save)(void *, void *);
static int (*p_context_restore)(void *, void *);
static size_t (*p_context_size)(void *);

static int regids[PV_NREGS];

static uint64_t pv_exit(pv_vcpu *v, int kind, uint64_t a, uint64_t b, uint64_t c);

static const char *bind_error = "not bound";

const char *pv_bind(const char *libpath, const int *regs, const int *insns, int msr_id)
{
    void *h = dlopen(libpath, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        h = dlopen(libpath, RTLD_NOW);
    if (!h)
        return dlerror();
#define SYM(var, name) do { *(void **)&var = dlsym(h, name); if (!var) return "missing " name; } while (0)
    SYM(p_reg_read_batch, "uc_reg_read_batch");
    SYM(p_reg_read, "uc_reg_read");
    SYM(p_reg_write, "uc_reg_write");
    SYM(p_reg_write_batch, "uc_reg_write_batch");
    SYM(p_hook_add, "uc_hook_add");
    SYM(p_hook_del, "uc_hook_del");
    SYM(p_emu_stop, "uc_emu_stop");
    SYM(p_context_alloc, "uc_context_alloc");
    SYM(p_context_free, "uc_context_free");
    SYM(p_context_save, "uc_context_save");
    SYM(p_context_restore, "uc_context_restore");
    SYM(p_context_size, "uc_context_size");
#undef SYM
    memcpy(regids, regs, sizeof regids);
    memcpy(insn_ids, insns, sizeof insn_ids);
    msr_regid = msr_id;
    bind_error = NULL;
    return NULL;
}

uint64_t pv_now_ns(void);
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

int pv_read_frame(pv_vcpu *v)
{
    void *ptrs[PV_NREGS];
    uint64_t *f = &v->f.rax;
    for (int i = 0; i < PV_NREGS; i++)
        ptrs[i] = &f[i];
    int err = p_reg_read_batch(v->uc, regids, ptrs, PV_NREGS);
    v->saved = v->f;
    return err;
}

/* Write back the registers that differ from what pv_read_frame saw. */
int pv_write_frame(pv_vcpu *v)
{
    int ids[PV_NREGS];
    void *ptrs[PV_NREGS];
    uint64_t *f = &v->f.rax, *s = &v->saved.rax;
    int n = 0;
    for (int i = 0; i < PV_NREGS; i++) {
        if (f[i] != s[i]) {
            ids[n] = regids[i];
            ptrs[n] = &f[i];
            n++;
        }
    }
    v->saved = v->f;
    return n ? p_reg_write_batch(v->uc, ids, (void *const *)ptrs, n) : 0;
}

uint64_t pv_now_ns(void) { return now_ns(); }

/* Count one exit of ``reason`` that took ``ns`` in root mode. */
void pv_account(pv_vcpu *v, int reason, uint64_t ns)
{
    if (reason >= 0 && reason < PV_NREASONS) {
        v->reason_count[reason]++;
        v->reason_ns[reason] += ns;
    }
}

static inline uint64_t dispatch(pv_vcpu *v, int kind, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t t0 = now_ns();
    pv_read_frame(v);
    v->reason = -1;
    v->observer_ns = 0;
    uint64_t r = pv_exit(v, kind, a, b, c);
    pv_write_frame(v);
    uint64_t dt = now_ns() - t0 - v->observer_ns;
    v->hook_ns += dt;
    v->nexits++;
    pv_account(v, v->reason, dt);
    v->reason = PV_OUTSIDE_EXIT;
    if (v->kick_pending) {              /* a soft kick: stop here, synchronously */
        v->kick_pending = 0;
        p_emu_stop(v->uc);
    }
    return r;
}

/* CPUID served from the table root mode installed (the way KVM serves CPUID from
 * what userspace gave KVM_SET_CPUID2). A miss goes to the Python handler. */
static int cpuid_fast(pv_vcpu *v)
{
    uint64_t t0 = now_ns();
    int ids[4] = {regids[0], regids[1], regids[2], regids[3]};   /* rax rbx rcx rdx */
    uint64_t in[4];
    void *ptrs[4] = {&in[0], &in[1], &in[2], &in[3]};
    if (p_reg_read_batch(v->uc, ids, ptrs, 4))
        return 0;
    uint32_t leaf = (uint32_t)in[0], sub = (uint32_t)in[2];
    for (int i = 0; i < v->ncpuid; i++) {
        pv_cpuid_entry *e = &v->cpuid[i];
        if (e->leaf == leaf && (e->any_subleaf || e->subleaf == sub)) {
            uint64_t out[4] = {e->eax, e->ebx, e->ecx, e->edx};
            void *optrs[4] = {&out[0], &out[1], &out[2], &out[3]};
            p_reg_write_batch(v->uc, ids, (void *const *)optrs, 4);
            v->seq++;
            v->nexits++;
            uint64_t dt = now_ns() - t0;
            v->hook_ns += dt;
            pv_account(v, PV_REASON_CPUID, dt);
            if (v->kick_pending) {
                v->kick_pending = 0;
                p_emu_stop(v->uc);
            }
            return 1;
        }
    }
    return 0;
}

static int cb_cpuid(void *uc, void *ud)
{
    pv_vcpu *v = ud;
    if (!(v->fast_cpuid && cpuid_fast(v)))
        dispatch(v, PV_CPUID, 0, 0, 0);
    return 1;
}
static int cb_rdtsc(void *uc, void *ud) { dispatch(ud, PV_RDTSC, 0, 0, 0); return 1; }
static uint32_t cb_in(void *uc, uint32_t port, int size, void *ud)
{
    return (uint32_t)dispatch(ud, PV_IN, port, (uint64_t)size, 0);
}
static void cb_out(void *uc, uint32_t port, int size, uint32_t value, void *ud)
{
    dispatch(ud, PV_OUT, port, (uint64_t)size, value);
}
static bool cb_invalid(void *uc, void *ud) { return dispatch(ud, PV_INVALID, 0, 0, 0) != 0; }
static void cb_intr(void *uc, uint32_t intno, void *ud) { dispatch(ud, PV_INTR, intno, 0, 0); }
static void cb_syscall(void *uc, void *ud) { dispatch(ud, PV_SYSCALL, 0, 0, 0); }

/* Runs at the start of every translated block: a kick from the host timer stops the
 * engine here, synchronously, at a block boundary where the CPU state is whole.
 * (uc_emu_stop from another thread corrupted Linux while it patched its own code.) */
static void cb_block(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    pv_vcpu *v = ud;
    if (v->kick_pending) {
        v->kick_pending = 0;
        p_emu_stop(uc);
    }
}

/* Install the exit hooks on v->uc. want_rdtsc: also trap RDTSC. Returns a uc_err. */
int pv_attach(pv_vcpu *v, int want_rdtsc)
{
    int err;
    if (bind_error)
        return -1;
#define ADD(type, cb, ...) do { \
        err = p_hook_add(v->uc, &v->hooks[v->nhooks], type, (void *)cb, v, (uint64_t)1, (uint64_t)0, ##__VA_ARGS__); \
        if (err) return err; v->nhooks++; } while (0)
    ADD(UC_HOOK_INSN, cb_cpuid, insn_ids[INS_CPUID]);
    ADD(UC_HOOK_INSN, cb_in, insn_ids[INS_IN]);
    ADD(UC_HOOK_INSN, cb_out, insn_ids[INS_OUT]);
    ADD(UC_HOOK_INSN, cb_syscall, insn_ids[INS_SYSCALL]);
    ADD(UC_HOOK_INSN_INVALID, cb_invalid);
    ADD(UC_HOOK_INTR, cb_intr);
    ADD(UC_HOOK_BLOCK, cb_block);
    if (want_rdtsc)
        ADD(UC_HOOK_INSN, cb_rdtsc, insn_ids[INS_RDTSC]);
#undef ADD
    if (!v->ctx) {
        err = p_context_alloc(v->uc, &v->ctx);
        if (err) return err;
        v->ctx_size = p_context_size(v->uc);
    }
    return 0;
}

/* Turn the RDTSC hook on or off after attach (it is the last hook when present). */
#define PV_BASE_HOOKS 7   /* cpuid, in, out, syscall, invalid, intr, block (pv_attach) */
int pv_set_rdtsc_exiting(pv_vcpu *v, int on)
{
    int err;
    int have = v->nhooks > PV_BASE_HOOKS;     /* the RDTSC hook is the one after them */
    if (on && !have) {
        err = p_hook_add(v->uc, &v->hooks[v->nhooks], UC_HOOK_INSN, (void *)cb_rdtsc, v,
                         (uint64_t)1, (uint64_t)0, insn_ids[INS_RDTSC]);
        if (!err) v->nhooks++;
        return err;
    }
    if (!on && have) {
        v->nhooks--;
        return p_hook_del(v->uc, v->hooks[v->nhooks]);
    }
    return 0;
}

void pv_detach(pv_vcpu *v)
{
    while (v->nhooks > 0)
        p_hook_del(v->uc, v->hooks[--v->nhooks]);
    if (v->ctx) {
        p_context_free(v->ctx);
        v->ctx = NULL;
    }
}

int pv_stop(pv_vcpu *v) { return p_emu_stop(v->uc); }

/* Guest-state area access: the engine's CPU state as a uc_context blob. The
 * offsets are found by calibration in pyvmm/cpu/_unicorn.py, not assumed. */
int pv_ctx_save(pv_vcpu *v) { return p_context_save(v->uc, v->ctx); }
int pv_ctx_restore(pv_vcpu *v) { return p_context_restore(v->uc, v->ctx); }
uint8_t *pv_ctx_bytes(pv_vcpu *v) { return (uint8_t *)v->ctx; }

/* RDMSR/WRMSR from root mode. Under SVM the engine's own MSR helper obeys the MSR
 * permission map and would take a #VMEXIT inside uc_reg_read/uc_reg_write, so the
 * byte holding this MSR's intercept bits (msrpm_byte, NULL for MSRs outside the map)
 * is cleared for the access and restored after. */
typedef struct { uint32_t rid; uint64_t value; } pv_uc_msr;

int pv_msr_access(pv_vcpu *v, uint8_t *msrpm_byte, uint32_t index, uint64_t *value, int write)
{
    uint8_t saved = 0;
    pv_uc_msr m = {index, write ? *value : 0};
    if (msrpm_byte) {
        saved = *msrpm_byte;
        *msrpm_byte = 0;
    }
    int err = write ? p_reg_write(v->uc, msr_regid, &m) : p_reg_read(v->uc, msr_regid, &m);
    if (msrpm_byte)
        *msrpm_byte = saved;
    if (!write)
        *value = m.value;
    return err;
}

/* Interrupt-window exiting. While an interrupt waits for IF=1, this code hook runs
 * before every guest instruction and stops the engine at the second consecutive
 * boundary with IF=1: the first is the instruction in an STI shadow, which must run
 * (SDM Vol. 3A, 6.8.3). After POPF/IRET this delivers one instruction later than
 * the earliest point, which the architecture allows. A hook on every instruction
 * slows the guest many times over, so it watches at most PV_WINDOW_BUDGET
 * instructions; longer IRQ-off stretches (Linux's TSC calibration) are left to
 * root mode's polling. */
static void cb_window(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    pv_vcpu *v = ud;
    uint64_t rflags = 0;
    if (v->kick_pending) {
        v->kick_pending = 0;
        p_emu_stop(uc);
        return;
    }
    if (--v->window_budget < 0) {      /* a long IRQ-off stretch: stop watching every insn */
        v->window_expired = 1;
        p_emu_stop(uc);
        return;
    }
    p_reg_read(uc, regids[17], &rflags);
    if (!(rflags & RFLAGS_IF)) {
        v->window_if_seen = 0;
    } else if (v->window_if_seen) {
        p_emu_stop(uc);
    } else {
        v->window_if_seen = 1;
    }
}

/* Install (on=1) or remove the window hook. The caller flushes translated code so
 * that the hook reaches blocks translated before. */
int pv_window(pv_vcpu *v, int on)
{
    if (on && !v->window_hook) {
        v->window_if_seen = 0;
        v->window_expired = 0;
        v->window_budget = PV_WINDOW_BUDGET;
        return p_hook_add(v->uc, &v->window_hook, UC_HOOK_CODE, (void *)cb_window, v, (uint64_t)1, (uint64_t)0);
    }
    if (!on && v->window_hook) {
        int err = p_hook_del(v->uc, v->window_hook);
        v->window_hook = 0;
        return err;
    }
    return 0;
}
