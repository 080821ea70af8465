/* blkfront.c - a blkif frontend guest for `pyvmm boot --pv --disk FILE` (docs/pv-boot.md).
 *
 * Freestanding C on Xen's public headers (io/blkif.h, io/ring.h, io/xenbus.h) and
 * pvlib.c. It takes the first disk under device/vbd and
 *   - does the frontend side of the xenbus handshake: waits for the backend's InitWait,
 *     grants a ring page, DATA_PAGES data pages and one indirect page per ring slot to
 *     the backend (writable: persistent grants may be mapped so, blkif.h note 8),
 *     allocates an event channel, publishes ring-ref, event-channel, protocol and
 *     feature-persistent (unless persistent=0), goes Initialised, waits for Connected,
 *     reads sectors, sector-size, info and the features (flush, discard, persistent,
 *     max-indirect-segments), goes Connected;
 *   - negotiates as Linux's blkfront does: a request has up to `maxseg` segments
 *     (default 32, Linux's xen_blkif_max_segments), capped by the backend's
 *     feature-max-indirect-segments and DATA_PAGES; one of more than 11 segments is a
 *     BLKIF_OP_INDIRECT request whose segment array is in the indirect page of its
 *     slot. A backend without the feature gets only 11-segment requests. The data
 *     pages are granted once and reused by every request, so with feature-persistent
 *     the backend maps each of them once;
 *   - mode=test (the default): writes a pattern over sectors [start, start+sectors)
 *     in requests of 1..maxseg segments (whole and partial pages), `depth` requests in
 *     flight, flushes (BLKIF_OP_FLUSH_DISKCACHE), reads the range back in maxseg-page
 *     requests and checks every sector, discards the last DISCARD_SECTORS sectors
 *     if the backend offers feature-discard and checks they read as zeros, reads past
 *     the end of the disk (expects BLKIF_RSP_ERROR); on a read-only disk (info has
 *     VDISK_READONLY) it expects its write to fail instead and only reads;
 *   - mode=bench: times (vcpu_time_info) sequential 1 MiB writes and reads over
 *     `mib` MiB from `start` (each MiB in maxseg-page requests, all in flight at once),
 *     then `ops` random 4 KiB writes and reads inside that region, `depth` requests in
 *     flight, and prints one line per phase;
 *   - closes the device (Closing, then Closed, as the backend follows) and powers off.
 * The command line sets mode=, start=, sectors=, seed=, depth=, mib=, ops=, maxseg=,
 * persistent= (decimal).
 *
 * Sector s of the pattern holds 64 little-endian words, word i = seed << 48 ^ s << 6 ^ i
 * (pyvmm/devices/block/pattern.py computes the same bytes for the host's checks).
 * Every check prints "ok NAME" or "FAIL NAME: got X want Y"; the last line says how many
 * passed, and the guest powers off with SHUTDOWN_crash if any failed.
 */
#include "pvlib.h"
#include <xen/io/blkif.h>
#include <xen/io/ring.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>

#define SECTOR_SIZE 512
#define SECTORS_PER_PAGE (PAGE_SIZE / SECTOR_SIZE)
#define RING_REF 8                          /* the first ref after GNTTAB_NR_RESERVED_ENTRIES */
#define DATA_REF (RING_REF + 1)
#define DATA_PAGES 256                      /* 1 MiB: one sequential bench I/O */
#define RING_SLOTS __CONST_RING_SIZE(blkif, PAGE_SIZE)      /* 32 */
#define INDIRECT_REF (DATA_REF + DATA_PAGES)               /* one indirect page per slot */
#define MAX_SEGS BLKIF_MAX_SEGMENTS_PER_REQUEST
#define DEFAULT_MAXSEG 32                   /* Linux blkfront's xen_blkif_max_segments */
#define DISCARD_SECTORS 16
#define STATUS_SLOTS 256                    /* responses remembered by id (more than the ring) */
#define RSP_NONE 0x7fff

static uint8_t ring_page[PAGE_SIZE] __attribute__((aligned(4096)));
static uint8_t data[DATA_PAGES][PAGE_SIZE] __attribute__((aligned(4096)));
/* Segment arrays of indirect requests: the page of request id i is i % RING_SLOTS; the
 * ids in flight are consecutive and at most RING_SLOTS (the ring is drained when full). */
static struct blkif_request_segment indirect[RING_SLOTS][PAGE_SIZE / sizeof(struct blkif_request_segment)]
    __attribute__((aligned(4096)));
static blkif_front_ring_t ring;
static evtchn_port_t port;
static uint16_t handle;
static int16_t status_of[STATUS_SLOTS];
static unsigned inflight;
static uint64_t next_id;

static struct {
    unsigned long sectors, sector_size, info, flush, discard, persistent, max_indirect;
    unsigned segs;                          /* segments a request may have (negotiated) */
} disk;

static struct {
    char mode[16];
    unsigned long start, sectors, seed, depth, mib, ops, maxseg, persistent;
} opt = { "test", 64, 1000, 1, 8, 16, 512, DEFAULT_MAXSEG, 1 };

/* ---- the command line: key=value words ---- */
static int word_is(const char *w, const char *key, const char **value)
{
    while (*key && *w == *key) { w++; key++; }
    if (*key || *w != '=')
        return 0;
    *value = w + 1;
    return 1;
}

static unsigned long parse_ulong(const char *s)
{
    unsigned long v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (unsigned long)(*s++ - '0');
    return v;
}

static void parse_cmdline(const char *line)
{
    char w[64];
    while (*line) {
        while (*line == ' ')
            line++;
        size_t n = 0;
        while (*line && *line != ' ') {
            if (n < sizeof(w) - 1)
                w[n++] = *line;
            line++;
        }
        w[n] = 0;
        const char *v;
        if (word_is(w, "mode", &v)) {
            size_t i = 0;
            for (; v[i] && i < sizeof(opt.mode) - 1; i++)
                opt.mode[i] = v[i];
            opt.mode[i] = 0;
        }
        else if (word_is(w, "start", &v)) opt.start = parse_ulong(v);
        else if (word_is(w, "sectors", &v)) opt.sectors = parse_ulong(v);
        else if (word_is(w, "seed", &v)) opt.seed = parse_ulong(v);
        else if (word_is(w, "depth", &v)) opt.depth = parse_ulong(v);
        else if (word_is(w, "mib", &v)) opt.mib = parse_ulong(v);
        else if (word_is(w, "ops", &v)) opt.ops = parse_ulong(v);
        else if (word_is(w, "maxseg", &v)) opt.maxseg = parse_ulong(v);
        else if (word_is(w, "persistent", &v)) opt.persistent = parse_ulong(v);
    }
    if (opt.depth < 1)
        opt.depth = 1;
}

/* ---- xenstore paths of the device ---- */
static char fe_dir[64], be_dir[128];

/* ---- the ring ---- */
static blkif_request_t *new_request(uint8_t op, uint64_t sector);

static void push(void)
{
    RING_PUSH_AND_NOTIFY(&ring, port);
}

/* Push what is queued and take responses until none is in flight; -1 on a timeout.
 * The clock is read only once there is something to wait for: a backend that answered
 * inside the notification costs no RDTSC exit. */
static int complete_all(void)
{
    push();
    uint64_t deadline = 0;
    for (;;) {
        RING_IDX prod = ring.sring->rsp_prod;
        rmb();                                  /* responses after the index that shows them */
        for (RING_IDX i = ring.rsp_cons; i != prod; i++) {
            blkif_response_t *rsp = RING_GET_RESPONSE(&ring, i);
            status_of[rsp->id % STATUS_SLOTS] = rsp->status;
            inflight--;
        }
        ring.rsp_cons = prod;
        if (!inflight)
            return 0;
        int more;
        RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
        if (more)
            continue;
        uint64_t seen = port_events[port];
        if (!deadline)
            deadline = now_ns() + DOM0_WAIT_NS;
        if (!wait_port(port, seen, deadline) && ring.sring->rsp_prod == ring.rsp_cons) {
            line("blkfront: no response from the backend; in flight: ", inflight, "");
            return -1;
        }
    }
}

static blkif_request_t *new_request(uint8_t op, uint64_t sector)
{
    if (RING_FULL(&ring))
        complete_all();
    blkif_request_t *req = RING_GET_REQUEST(&ring, ring.req_prod_pvt);
    req->operation = op;
    req->nr_segments = 0;
    req->handle = handle;
    req->id = next_id++;
    req->sector_number = sector;
    status_of[req->id % STATUS_SLOTS] = RSP_NONE;
    ring.req_prod_pvt++;
    inflight++;
    return req;
}

/* A READ or WRITE being built: segments go into the slot, or for an indirect request
 * into the indirect page of its id; the count is written by each add. */
static struct {
    blkif_request_t *req;
    struct blkif_request_segment *segs;
    int indirect;
    unsigned n;
} cur;

/* Start a READ/WRITE that will have up to `nseg` segments (<= disk.segs): indirect if
 * it needs more than fit in the slot. */
static blkif_request_t *new_rw(uint8_t op, uint64_t sector, unsigned nseg)
{
    blkif_request_t *req = new_request(nseg > MAX_SEGS ? BLKIF_OP_INDIRECT : op, sector);
    cur.req = req;
    cur.n = 0;
    cur.indirect = nseg > MAX_SEGS;
    if (cur.indirect) {
        blkif_request_indirect_t *ind = (blkif_request_indirect_t *)req;
        unsigned slot = req->id % RING_SLOTS;
        ind->indirect_op = op;
        ind->nr_segments = 0;
        ind->handle = handle;
        ind->indirect_grefs[0] = INDIRECT_REF + slot;   /* <= 512 segments: one page */
        cur.segs = indirect[slot];
    } else {
        cur.segs = req->seg;
    }
    return req;
}

static void set_count(unsigned n)
{
    cur.n = n;
    if (cur.indirect)
        ((blkif_request_indirect_t *)cur.req)->nr_segments = n;
    else
        cur.req->nr_segments = n;
}

/* One blkif_request_segment as a single 8-byte store (gref, first_sect, last_sect, pad). */
static inline void put_segment(struct blkif_request_segment *seg, unsigned page, unsigned first,
                               unsigned last)
{
    uint64_t v = (uint64_t)(DATA_REF + page) | (uint64_t)first << 32 | (uint64_t)last << 40;
    __builtin_memcpy(seg, &v, sizeof(v));
}

static void add_segment(unsigned page, unsigned first, unsigned last)
{
    put_segment(&cur.segs[cur.n], page, first, last);
    set_count(cur.n + 1);
}

/* `count` whole-page segments for data pages page .. page+count-1. */
static void add_pages(unsigned page, unsigned count)
{
    struct blkif_request_segment *seg = &cur.segs[cur.n];
    for (unsigned i = 0; i < count; i++)
        put_segment(&seg[i], page + i, 0, SECTORS_PER_PAGE - 1);
    set_count(cur.n + count);
}

/* One request and its status (BLKIF_RSP_*, or RSP_NONE if it never came back). */
static int16_t one_request(uint8_t op, uint64_t sector, unsigned page, unsigned first, unsigned last,
                           int with_segment)
{
    blkif_request_t *req = with_segment ? new_rw(op, sector, 1) : new_request(op, sector);
    uint64_t id = req->id;
    if (with_segment)
        add_segment(page, first, last);
    complete_all();
    return status_of[id % STATUS_SLOTS];
}

/* ---- the pattern ---- */
static uint64_t pattern_word(uint64_t sector, unsigned i)
{
    return opt.seed << 48 ^ sector << 6 ^ i;
}

static void fill_sector(uint8_t *where, uint64_t sector)
{
    uint64_t *w = (uint64_t *)where;
    for (unsigned i = 0; i < SECTOR_SIZE / 8; i++)
        w[i] = pattern_word(sector, i);
}

static int sector_is_pattern(const uint8_t *where, uint64_t sector)
{
    const uint64_t *w = (const uint64_t *)where;
    for (unsigned i = 0; i < SECTOR_SIZE / 8; i++)
        if (w[i] != pattern_word(sector, i))
            return 0;
    return 1;
}

static int sector_is_zero(const uint8_t *where)
{
    const uint64_t *w = (const uint64_t *)where;
    for (unsigned i = 0; i < SECTOR_SIZE / 8; i++)
        if (w[i])
            return 0;
    return 1;
}

/* ---- the handshake ---- */
static int find_device(void)
{
    char list[256];
    int n = xs_request(XS_DIRECTORY, "device/vbd", NULL, list, sizeof(list));
    if (n <= 0)
        return -1;
    xs_path(fe_dir, sizeof(fe_dir), "device/vbd", list);       /* the first entry */
    handle = parse_ulong(list);
    char path[96];
    xs_path(path, sizeof(path), fe_dir, "backend");
    return xs_request(XS_READ, path, NULL, be_dir, sizeof(be_dir)) > 0 ? 0 : -1;
}

static int connect(void)
{
    grant_entry_v1_t *table = frontend_begin(be_dir);
    if (!table)
        return -1;
    blkif_sring_t *sring = (blkif_sring_t *)ring_page;
    SHARED_RING_INIT(sring);
    FRONT_RING_INIT(&ring, sring, PAGE_SIZE);
    gnttab_grant(table, RING_REF, 0, (uint64_t)ring_page >> PAGE_SHIFT, 0);
    for (unsigned i = 0; i < DATA_PAGES; i++)
        gnttab_grant(table, DATA_REF + i, 0, (uint64_t)data[i] >> PAGE_SHIFT, 0);
    for (unsigned i = 0; i < RING_SLOTS; i++)
        gnttab_grant(table, INDIRECT_REF + i, 0, (uint64_t)indirect[i] >> PAGE_SHIFT, 0);
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };
    check("alloc_unbound_for_backend", evtchn_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    port = alloc.port;

    char path[96], out[32];
    xs_write_uint_at(fe_dir, "ring-ref", RING_REF);
    xs_write_uint_at(fe_dir, "event-channel", port);
    xs_path(path, sizeof(path), fe_dir, "protocol");
    xs_request(XS_WRITE, path, XEN_IO_PROTO_ABI_NATIVE, out, sizeof(out));
    if (opt.persistent)
        xs_write_uint_at(fe_dir, "feature-persistent", 1);      /* we reuse our grants */
    check("frontend_initialised", xs_write_uint_at(fe_dir, "state", XenbusStateInitialised) >= 0, 1);
    check("backend_connected", xenbus_wait_state(be_dir, XenbusStateConnected, 0), XenbusStateConnected);
    disk.sectors = xs_read_uint_at(be_dir, "sectors");
    disk.sector_size = xs_read_uint_at(be_dir, "sector-size");
    disk.info = xs_read_uint_at(be_dir, "info");
    disk.flush = xs_read_uint_at(be_dir, "feature-flush-cache") == 1;
    disk.discard = xs_read_uint_at(be_dir, "feature-discard") == 1;
    disk.persistent = opt.persistent && xs_read_uint_at(be_dir, "feature-persistent") == 1;
    long max_indirect = xs_read_uint_at(be_dir, "feature-max-indirect-segments");   /* -1: absent */
    disk.max_indirect = max_indirect > 0 ? (unsigned long)max_indirect : 0;
    unsigned long segs = opt.maxseg < disk.max_indirect ? opt.maxseg : disk.max_indirect;
    if (segs > DATA_PAGES)
        segs = DATA_PAGES;
    disk.segs = segs > MAX_SEGS ? segs : MAX_SEGS;
    check("sector_size_512", disk.sector_size, SECTOR_SIZE);
    check("frontend_connected", xs_write_uint_at(fe_dir, "state", XenbusStateConnected) >= 0, 1);
    puts_("blkfront: ");
    puts_(fe_dir);
    puts_(" connected: ");
    putdec(disk.sectors);
    puts_(" sectors, info ");
    putdec(disk.info);
    puts_(disk.flush ? ", flush" : "");
    puts_(disk.discard ? ", discard" : "");
    puts_(disk.persistent ? ", persistent" : "");
    if (disk.max_indirect) {
        puts_(", indirect ");
        putdec(disk.max_indirect);
    }
    puts_("; requests of up to ");
    putdec(disk.segs);
    puts_(" segments\n");
    cons_flush();
    return disk.sector_size == SECTOR_SIZE ? 0 : -1;
}

static void disconnect(void)
{
    xs_write_uint_at(fe_dir, "state", XenbusStateClosing);
    check("backend_closing", xenbus_wait_state(be_dir, XenbusStateClosing, 1) >= XenbusStateClosing, 1);
    xs_write_uint_at(fe_dir, "state", XenbusStateClosed);
    check("backend_closed", xenbus_wait_state(be_dir, XenbusStateClosed, 0), XenbusStateClosed);
}

/* ---- mode=test ---- */
static unsigned long failed_requests;

static void count_failures(uint64_t first_id)
{
    for (uint64_t id = first_id; id < next_id; id++)
        if (status_of[id % STATUS_SLOTS] != BLKIF_RSP_OKAY)
            failed_requests++;
}

/* Write the pattern over [start, end): request k has 1 + k % disk.segs segments; some
 * segments hold fewer than 8 sectors, at the start or the end of their page. */
static unsigned long write_pattern(uint64_t start, uint64_t end, unsigned long *requests)
{
    uint64_t sector = start;
    unsigned long k = 0;
    failed_requests = 0;
    while (sector < end) {
        unsigned page = 0;
        uint64_t batch_first = next_id;
        for (unsigned d = 0; d < opt.depth && sector < end && page + disk.segs <= DATA_PAGES; d++, k++) {
            unsigned nseg = 1 + k % disk.segs;
            new_rw(BLKIF_OP_WRITE, sector, nseg);
            for (unsigned j = 0; j < nseg && sector < end; j++) {
                unsigned count = (k + j) % 4 == 3 ? 1 + (k * 3 + j) % 7 : SECTORS_PER_PAGE;
                if (count > end - sector)
                    count = end - sector;
                unsigned first = (k & 1) ? SECTORS_PER_PAGE - count : 0;
                for (unsigned s = 0; s < count; s++)
                    fill_sector(data[page] + (first + s) * SECTOR_SIZE, sector + s);
                add_segment(page++, first, first + count - 1);
                sector += count;
            }
        }
        if (complete_all())
            return failed_requests + 1;
        count_failures(batch_first);
        *requests = k;
    }
    return failed_requests;
}

/* Read [start, end) in whole-page segments, disk.segs a request, `depth` in flight; `bad`
 * counts sectors that are not the pattern (or not zeros when `zeros`). */
static unsigned long read_range(uint64_t start, uint64_t end, int zeros, unsigned long *bad,
                                unsigned long *requests)
{
    uint64_t sector = start;
    failed_requests = 0;
    *bad = 0;
    *requests = 0;
    while (sector < end) {
        uint64_t batch_first = next_id, batch_start = sector;
        unsigned page = 0;
        for (unsigned d = 0; d < opt.depth && sector < end && page + disk.segs <= DATA_PAGES; d++) {
            new_rw(BLKIF_OP_READ, sector, disk.segs);
            for (unsigned j = 0; j < disk.segs && sector < end; j++) {
                unsigned count = end - sector < SECTORS_PER_PAGE ? end - sector : SECTORS_PER_PAGE;
                memset(data[page], 0xA5, PAGE_SIZE);
                add_segment(page++, 0, count - 1);
                sector += count;
            }
            (*requests)++;
        }
        if (complete_all())
            return failed_requests + 1;
        count_failures(batch_first);
        for (uint64_t s = batch_start; s < sector; s++) {
            const uint8_t *where = data[(s - batch_start) / SECTORS_PER_PAGE] +
                                   (s - batch_start) % SECTORS_PER_PAGE * SECTOR_SIZE;
            if (zeros ? !sector_is_zero(where) : !sector_is_pattern(where, s))
                (*bad)++;
        }
    }
    return failed_requests;
}

static void run_test(void)
{
    uint64_t start = opt.start, end = opt.start + opt.sectors;
    if (end > disk.sectors) {
        line("blkfront: the range ends past the disk at sector ", (long)end, "");
        check("range_inside_disk", 0, 1);
        return;
    }
    if (disk.info & VDISK_READONLY) {
        puts_("blkfront: read-only disk\n");
        int16_t st = one_request(BLKIF_OP_WRITE, start, 0, 0, SECTORS_PER_PAGE - 1, 1);
        line("blkfront: write on the read-only disk: status ", st, "");
        check("readonly_write_refused", st, BLKIF_RSP_ERROR);
        unsigned long bad, requests;
        check("readonly_read_okay", read_range(start, end, 0, &bad, &requests), 0);
        line("blkfront: read ", (long)opt.sectors, " sectors from the read-only disk");
        return;
    }
    unsigned long requests = 0;
    check("write_pattern", write_pattern(start, end, &requests), 0);
    puts_("blkfront: wrote ");
    putdec(opt.sectors);
    puts_(" sectors at ");
    putdec(start);
    puts_(" in ");
    putdec(requests);
    puts_(" requests (1..");
    putdec(disk.segs);
    puts_(" segments, up to ");
    putdec(opt.depth);
    puts_(" in flight)\n");
    cons_flush();
    if (disk.flush) {
        int16_t st = one_request(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0, 0, 0);
        check("flush_diskcache", st, BLKIF_RSP_OKAY);
    }
    unsigned long bad;
    check("read_back", read_range(start, end, 0, &bad, &requests), 0);
    check("read_back_matches", bad, 0);
    puts_("blkfront: read back ");
    putdec(opt.sectors);
    puts_(" sectors in ");
    putdec(requests);
    puts_(" requests: ");
    putdec(bad);
    puts_(" bad sectors\n");
    cons_flush();

    if (disk.discard && opt.sectors >= DISCARD_SECTORS) {
        blkif_request_discard_t *d = (blkif_request_discard_t *)new_request(BLKIF_OP_DISCARD, end - DISCARD_SECTORS);
        uint64_t id = d->id;
        d->flag = 0;
        d->nr_sectors = DISCARD_SECTORS;
        complete_all();
        check("discard", status_of[id % STATUS_SLOTS], BLKIF_RSP_OKAY);
        check("discarded_reads_zeros", read_range(end - DISCARD_SECTORS, end, 1, &bad, &requests), 0);
        check("discarded_sectors_zero", bad, 0);
        line("blkfront: discarded ", DISCARD_SECTORS, " sectors at the end of the range; they read as zeros");
    }
    /* past the end: a page that straddles it, and one that starts at it */
    check("read_across_end_error",
          one_request(BLKIF_OP_READ, disk.sectors - 4, 0, 0, SECTORS_PER_PAGE - 1, 1), BLKIF_RSP_ERROR);
    check("read_at_end_error", one_request(BLKIF_OP_READ, disk.sectors, 0, 0, 0, 1), BLKIF_RSP_ERROR);
    puts_("blkfront: reads past the end of the disk answered BLKIF_RSP_ERROR\n");
    cons_flush();
}

/* ---- mode=bench ---- */
static uint64_t lcg;

static uint64_t next_random(void)
{
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return lcg >> 33;
}

static void report(const char *phase, unsigned long ops, unsigned long bytes, uint64_t ns)
{
    puts_("bench ");
    puts_(phase);
    puts_(" ops=");
    putdec(ops);
    puts_(" bytes=");
    putdec(bytes);
    puts_(" ns=");
    putdec(ns);
    puts_(" errors=");
    putdec(failed_requests);
    puts_("\n");
    cons_flush();
}

/* `mib` sequential 1 MiB I/Os from `start`, each in requests of disk.segs pages (one
 * 256-segment indirect request, or 24 = 23 x 11 + 3 pages without indirect), all of a
 * MiB in flight at once. */
static void bench_sequential(const char *phase, uint8_t op)
{
    failed_requests = 0;
    uint64_t t0 = now_ns();
    for (unsigned long m = 0; m < opt.mib; m++) {
        uint64_t first = next_id, sector = opt.start + m * (DATA_PAGES * SECTORS_PER_PAGE);
        for (unsigned page = 0; page < DATA_PAGES;) {
            unsigned n = DATA_PAGES - page < disk.segs ? DATA_PAGES - page : disk.segs;
            new_rw(op, sector, n);
            add_pages(page, n);
            page += n;
            sector += n * SECTORS_PER_PAGE;
        }
        complete_all();
        count_failures(first);
    }
    report(phase, opt.mib, opt.mib * DATA_PAGES * PAGE_SIZE, now_ns() - t0);
}

/* `ops` 4 KiB I/Os at random pages of the sequential region, `depth` in flight. */
static void bench_random(const char *phase, uint8_t op)
{
    unsigned long pages = opt.mib * DATA_PAGES;
    failed_requests = 0;
    lcg = opt.seed;
    uint64_t t0 = now_ns();
    for (unsigned long done = 0; done < opt.ops;) {
        uint64_t first = next_id;
        for (unsigned d = 0; d < opt.depth && done < opt.ops; d++, done++) {
            new_rw(op, opt.start + next_random() % pages * SECTORS_PER_PAGE, 1);
            add_segment(d % DATA_PAGES, 0, SECTORS_PER_PAGE - 1);
        }
        complete_all();
        count_failures(first);
    }
    report(phase, opt.ops, opt.ops * PAGE_SIZE, now_ns() - t0);
}

static void run_bench(void)
{
    if (opt.start + opt.mib * DATA_PAGES * SECTORS_PER_PAGE > disk.sectors || !opt.mib) {
        check("bench_region_inside_disk", 0, 1);
        return;
    }
    for (unsigned i = 0; i < DATA_PAGES; i++)
        for (unsigned s = 0; s < SECTORS_PER_PAGE; s++)
            fill_sector(data[i] + s * SECTOR_SIZE, i * SECTORS_PER_PAGE + s);
    bench_sequential("seqwrite", BLKIF_OP_WRITE);
    bench_sequential("seqread", BLKIF_OP_READ);
    bench_random("randwrite", BLKIF_OP_WRITE);
    bench_random("randread", BLKIF_OP_READ);
    if (disk.flush)
        check("flush_diskcache", one_request(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0, 0, 0), BLKIF_RSP_OKAY);
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    parse_cmdline((const char *)si->cmd_line);
    setup_upcalls();
    if (find_device()) {
        puts_("blkfront: no disk under device/vbd\n");
        check("found_a_disk", 0, 1);
    } else if (connect() == 0) {
        if (streq(opt.mode, "bench"))
            run_bench();
        else
            run_test();
        disconnect();
    }
    finish("blkfront");
}
