"""cffi builder for pyvmm._exitpath, the C side of the VM-exit path (csrc/exitpath.c)."""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef("""
typedef struct pv_frame {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
} pv_frame;
typedef struct pv_vcpu {
    void *uc;
    void *handle;
    pv_frame f;
    pv_frame saved;
    void *ctx;
    size_t ctx_size;
    uint64_t hook_ns;
    uint64_t nexits;
    size_t hooks[8];
    int nhooks;
    int stop_requested;
} pv_vcpu;
extern "Python" uint64_t pv_exit(pv_vcpu *v, int kind, uint64_t a, uint64_t b, uint64_t c);
const char *pv_bind(const char *libpath, const int *regs, const int *insns);
int pv_attach(pv_vcpu *v, int want_rdtsc);
int pv_set_rdtsc_exiting(pv_vcpu *v, int on);
void pv_detach(pv_vcpu *v);
int pv_stop(pv_vcpu *v);
int pv_read_frame(pv_vcpu *v);
int pv_write_frame(pv_vcpu *v);
int pv_ctx_save(pv_vcpu *v);
int pv_ctx_restore(pv_vcpu *v);
uint8_t *pv_ctx_bytes(pv_vcpu *v);
""")
with open(os.path.join(HERE, "exitpath.c")) as f:
    ffibuilder.set_source("pyvmm._exitpath", f.read(), include_dirs=[HERE],
                          libraries=["dl"], extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=False)
