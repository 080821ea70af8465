/* pvlib.h - what every pyvmm PV guest shares (docs/pv-boot.md is the contract).
 *
 * Freestanding C on Xen's public headers (Debian's libxen-dev): hypercalls through the
 * hypercall page, event channels, upcalls on a callback vector (the 2-level event ABI),
 * system time from vcpu_time_info, console output over the console ring, xenstore
 * requests over the xenstore ring, the grant table, and the checks a guest prints.
 *
 * A guest calls pvlib_init(start_info) first, then setup_upcalls() before anything that
 * waits for an event (xs_request, wait_port). pvhead.S provides _start (which calls the
 * guest's pv_main), the upcall entry (which calls do_upcall) and the hypercall page.
 */
#ifndef PYVMM_PVLIB_H
#define PYVMM_PVLIB_H

#define __XEN_INTERFACE_VERSION__ 0x00040a00
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

#define PAGE_SHIFT 12
#define PAGE_SIZE 4096UL
#define MAX_PORTS 64                         /* ports whose upcalls port_events counts */
#define DOM0_WAIT_NS 300000000ULL            /* how long to wait for domain 0 */
#define barrier() __asm__ __volatile__("" ::: "memory")
#define mb() __asm__ __volatile__("mfence" ::: "memory")
#define rmb() barrier()                     /* x86: loads are not reordered with loads */
#define wmb() barrier()                     /* x86: stores are not reordered with stores */
/* Publish a front ring's queued requests and signal `port` only if the backend asked to
 * be woken (req_event, io/ring.h). Needs <xen/io/ring.h>. */
#define RING_PUSH_AND_NOTIFY(ring, port) do {                  \
        int notify_;                                           \
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(ring, notify_);    \
        if (notify_)                                           \
            evtchn_send(port);                                 \
    } while (0)
/* io/ring.h wants the includer's barriers (since interface version 0x00030208) */
#define xen_mb() mb()
#define xen_rmb() rmb()
#define xen_wmb() wmb()

extern start_info_t *si;
extern shared_info_t *shared;
extern volatile uint64_t port_events[MAX_PORTS];   /* upcalls seen per port */
extern volatile uint64_t upcalls;
extern unsigned checks, passed;

void pvlib_init(start_info_t *start);

/* hypercalls (RAX; RDI, RSI, RDX, R10, R8) */
long hypercall(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3,
               unsigned long a4, unsigned long a5);
long evtchn_op(int cmd, void *op);
long sched_op(int cmd, void *arg);
long evtchn_send(evtchn_port_t port);
void shutdown(unsigned reason);                    /* SCHEDOP_shutdown; never returns */

/* strings and the console */
size_t slen(const char *s);
int streq(const char *a, const char *b);
void utoa(unsigned long v, char *buf);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void cons_write(const char *s, size_t n);
void cons_flush(void);
void puts_(const char *s);
void putdec(long v);
void line(const char *a, long num, const char *b);  /* a, then num and b if b; newline */
void check(const char *name, long got, long want);  /* "ok NAME" or "FAIL NAME: got X want Y" */
void finish(const char *who);   /* "WHO: P/C checks passed", then poweroff (crash if any failed) */

/* time and sleeping */
uint64_t rdtsc(void);
uint64_t now_ns(void);                              /* system time from vcpu_time_info */
void setup_upcalls(void);
void block(void);
void wait_events(evtchn_port_t port, uint64_t seen);
int wait_port(evtchn_port_t port, uint64_t seen, uint64_t deadline);

/* xenstore: one request; reply payload NUL-terminated in out. Returns its length, or -1
 * for an XS_ERROR reply (out holds the errno name) or a broken ring. */
int xs_request(enum xsd_sockmsg_type type, const char *path, const char *value,
               char *out, uint32_t outlen);
int xs_write_uint(const char *path, unsigned long value);
long xs_read_uint(const char *path);                /* -1 if missing or not a number */

/* xenbus (io/xenbus.h) over xenstore: "dir/key" paths, numbers under a device directory,
 * and waiting for the peer's state: returns it once it is `want` (or past it when
 * `or_later`), or whatever it is after DOM0_WAIT_NS; polled every millisecond. */
void xs_path(char *out, size_t size, const char *dir, const char *key);
long xs_read_uint_at(const char *dir, const char *key);
int xs_write_uint_at(const char *dir, const char *key, unsigned long value);
long xenbus_wait_state(const char *peer_dir, long want, int or_later);

/* grants (grant_table.h, v1 entries written directly) */
grant_entry_v1_t *gnttab_setup(void);               /* the first grant frame, or NULL */
/* A split-driver frontend's first step: wait for the backend at be_dir to reach
 * InitWait (xenbus), then set up the grant table; both are checks. The table or NULL. */
grant_entry_v1_t *frontend_begin(const char *be_dir);
void gnttab_grant(grant_entry_v1_t *table, grant_ref_t ref, domid_t domid, uint64_t frame,
                  int readonly);

#endif
