"""cffi builder for pyvmm._exitpath, the C side of the VM-exit path (csrc/exitpath.c).

The struct layouts are taken from exitpath.h itself (cffi's cdef cannot #include),
so they are written once.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _header_cdef():
    text = open(os.path.join(HERE, "exitpath.h")).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    defines = dict(re.findall(r"^#define\s+(\w+)\s+(\S+)", text, flags=re.M))
    structs = re.findall(r"typedef struct \w+ \{.*?\} \w+;", text, flags=re.S)
    body = "\n".join(structs)
    for name, value in defines.items():
        body = re.sub(r"\b%s\b" % name, value, body)
    return body


ffibuilder = FFI()
ffibuilder.cdef(_header_cdef() + """
extern "Python" uint64_t pv_exit(pv_vcpu *v, int kind, uint64_t a, uint64_t b, uint64_t c);
const char *pv_bind(const char *libpath, const int *regs, const int *insns, int msr_id);
int pv_msr_access(pv_vcpu *v, uint8_t *msrpm_byte, uint32_t index, uint64_t *value, int write);
int pv_attach(pv_vcpu *v, int want_rdtsc);
int pv_set_rdtsc_exiting(pv_vcpu *v, int on);
void pv_detach(pv_vcpu *v);
int pv_stop(pv_vcpu *v);
int pv_read_frame(pv_vcpu *v);
int pv_write_frame(pv_vcpu *v);
int pv_ctx_save(pv_vcpu *v);
int pv_ctx_restore(pv_vcpu *v);
uint8_t *pv_ctx_bytes(pv_vcpu *v);
void pv_account(pv_vcpu *v, int reason, uint64_t ns);
uint64_t pv_now_ns(void);
int pv_window(pv_vcpu *v, int on);
""")
with open(os.path.join(HERE, "exitpath.c")) as f:
    ffibuilder.set_source("pyvmm._exitpath", f.read(), include_dirs=[HERE],
                          libraries=["dl"], extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=False)
