/* netfront.c - a netif frontend guest for `pyvmm boot --pv --net ...` (docs/pv-boot.md).
 *
 * Freestanding C on Xen's public headers (io/netif.h, io/ring.h, io/xenbus.h) and
 * pvlib.c. It takes the first vif under device/vif and
 *   - does the frontend side of the xenbus handshake: waits for the backend's InitWait,
 *     grants a tx and an rx ring page, NR_TX transmit and NR_RX receive buffer pages to
 *     the backend, allocates an event channel, publishes tx-ring-ref, rx-ring-ref,
 *     event-channel, request-rx-copy=1 and feature-rx-notify=1, goes Initialised, waits
 *     for Connected (checks feature-rx-copy=1), posts every rx buffer, goes Connected;
 *   - answers, in every role, ARP requests for its address and ICMP echo requests to it
 *     (RFC 826, RFC 792: the reply carries the request's identifier, sequence number
 *     and data, with fresh IPv4 and ICMP checksums);
 *   - role=responder: does only that until `packets=` echo requests were answered
 *     (0: no limit) or nothing arrived for `idle_ms=` milliseconds, and prints what it
 *     answered and what it ignored;
 *   - role=pinger: ARPs for `target=` (repeated every ARP_RETRY_NS until `wait_ms=`),
 *     then sends `count=` echo requests (identifier PING_ID, sequence 1..count, `size=`
 *     data bytes, a pattern of the sequence number), up to `window=` in flight, each
 *     given `timeout_ms=`; every reply is checked (sender, identifier, sequence in
 *     range and not seen before, data) and counted; prints a summary with round-trip
 *     times and the time and bytes of the whole run (the net benchmark reads it);
 *     every request must be answered, or with `max_lost=N` all but at most N (a
 *     network that may drop frames: a migration's switch-over);
 *   - closes the device (Closing, then Closed, as the backend follows) and powers off,
 *     with SHUTDOWN_crash if a check failed.
 * Addresses: `ip=` (both roles) and `target=` are dotted quads; the MAC is the one the
 * toolstack wrote in device/vif/<id>/mac. Frames are sent whole in one slot (no
 * checksum offload, no scatter-gather) and received whole in one rx buffer.
 */
#include "pvcmdline.h"
#include <xen/io/netif.h>
#include <xen/io/xenbus.h>

#define TX_RING_REF 8                       /* the first ref after GNTTAB_NR_RESERVED_ENTRIES */
#define RX_RING_REF 9
#define NR_TX 64                            /* transmit buffers (ids 0..NR_TX-1) */
#define NR_RX 64                            /* receive buffers posted (ids 0..NR_RX-1) */
#define TX_BUF_REF 10
#define RX_BUF_REF (TX_BUF_REF + NR_TX)
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define ICMP_HLEN 8
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define PING_ID 0x7079                      /* "py" */
#define MAX_DATA (1500 - IP_HLEN - ICMP_HLEN)
#define MAX_SEQ 65535
#define ARP_RETRY_NS 20000000ULL            /* 20 ms */

static uint8_t tx_ring_page[PAGE_SIZE] __attribute__((aligned(4096)));
static uint8_t rx_ring_page[PAGE_SIZE] __attribute__((aligned(4096)));
static uint8_t tx_buf[NR_TX][PAGE_SIZE] __attribute__((aligned(4096)));
static uint8_t rx_buf[NR_RX][PAGE_SIZE] __attribute__((aligned(4096)));
static netif_tx_front_ring_t tx;
static netif_rx_front_ring_t rx;
static evtchn_port_t port;
static uint16_t free_tx[NR_TX];
static unsigned nr_free_tx;
static uint8_t my_mac[6], peer_mac[6];
static const uint8_t broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static uint32_t my_ip, target_ip;
static int peer_known;

static struct {
    unsigned long arp_requests, arp_replies, echo_requests, echo_replies, ignored, tx_errors, rx_errors;
} stat;

/* ---- the command line: `key=value` words (pvcmdline.h) ---- */
static int value_is(const char *value, const char *word)
{
    while (*word && *value == *word) { value++; word++; }
    return !*word && (*value == ' ' || !*value);
}

/* A dotted quad ("10.0.0.2") as a host-order number; 0 if absent or malformed. */
static uint32_t parse_ip(const char *s)
{
    uint32_t ip = 0;
    for (int part = 0; part < 4; part++) {
        unsigned v = 0, digits = 0;
        while (s && *s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (!s || !digits || v > 255 || (part < 3 && *s++ != '.'))
            return 0;
        ip = ip << 8 | v;
    }
    return (*s == ' ' || !*s) ? ip : 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "52:54:00:12:34:56" into mac; 0 if well-formed. */
static int parse_mac(const char *s, uint8_t *mac)
{
    for (int i = 0; i < 6; i++) {
        int hi = hex_digit(s[0]), lo = hi < 0 ? -1 : hex_digit(s[1]);
        if (lo < 0 || (i < 5 && s[2] != ':'))
            return -1;
        mac[i] = (uint8_t)(hi << 4 | lo);
        s += 3;
    }
    return s[-1] ? -1 : 0;
}

static void put_ip(uint32_t ip)
{
    for (int shift = 24; shift >= 0; shift -= 8) {
        putdec((ip >> shift) & 0xff);
        if (shift)
            puts_(".");
    }
}

/* ---- big-endian fields and the Internet checksum (RFC 1071) ---- */
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, (uint16_t)v); }

static uint16_t inet_checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    for (; n > 1; p += 2, n -= 2)
        sum += get16(p);
    if (n)
        sum += (uint32_t)p[0] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* ---- xenstore paths of the device ---- */
static char fe_dir[64], be_dir[128];

/* ---- the rings ---- */
static void post_rx(uint16_t id)
{
    netif_rx_request_t *req = RING_GET_REQUEST(&rx, rx.req_prod_pvt);
    req->id = id;
    req->gref = RX_BUF_REF + id;
    rx.req_prod_pvt++;
}

static void push_rx(void)
{
    RING_PUSH_AND_NOTIFY(&rx, port);
}

static void reap_tx(void)
{
    RING_IDX prod = tx.sring->rsp_prod;
    rmb();                                  /* responses after the index that shows them */
    for (RING_IDX i = tx.rsp_cons; i != prod; i++) {
        netif_tx_response_t *rsp = RING_GET_RESPONSE(&tx, i);
        if (rsp->status == NETIF_RSP_NULL)
            continue;
        if (rsp->status != NETIF_RSP_OKAY)
            stat.tx_errors++;
        if (rsp->id < NR_TX && nr_free_tx < NR_TX)
            free_tx[nr_free_tx++] = rsp->id;
    }
    tx.rsp_cons = prod;
}

/* A transmit buffer for a frame, or NULL if none came back within DOM0_WAIT_NS. */
static uint8_t *tx_frame(uint16_t *id)
{
    uint64_t deadline = now_ns() + DOM0_WAIT_NS;
    for (;;) {
        reap_tx();
        if (nr_free_tx) {
            *id = free_tx[--nr_free_tx];
            return tx_buf[*id];
        }
        uint64_t seen = port_events[port];
        int more;
        RING_FINAL_CHECK_FOR_RESPONSES(&tx, more);
        if (!more) {
            if (now_ns() >= deadline)
                return NULL;
            wait_port(port, seen, deadline);
        }
    }
}

/* Send the `len` bytes already written into buffer `id` as one frame. */
static void tx_send(uint16_t id, unsigned len)
{
    netif_tx_request_t *req = RING_GET_REQUEST(&tx, tx.req_prod_pvt);
    req->gref = TX_BUF_REF + id;
    req->offset = 0;
    req->flags = 0;
    req->id = id;
    req->size = (uint16_t)len;
    tx.req_prod_pvt++;
    RING_PUSH_AND_NOTIFY(&tx, port);
}

static uint8_t *eth_header(uint8_t *f, const uint8_t *dst, uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, my_mac, 6);
    put16(f + 12, type);
    return f + ETH_HLEN;
}

/* ARP for IPv4 over Ethernet (RFC 826): op 1 request, 2 reply. */
static void send_arp(uint16_t op, const uint8_t *dst, const uint8_t *tha, uint32_t tpa)
{
    uint16_t id;
    uint8_t *f = tx_frame(&id);
    if (!f)
        return;
    uint8_t *a = eth_header(f, dst, ETH_P_ARP);
    put16(a, 1);                            /* hardware: Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, my_mac, 6);
    put32(a + 14, my_ip);
    memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    tx_send(id, ETH_HLEN + 28);
}

/* An IPv4 ICMP echo message (type 8 request, 0 reply) with `n` data bytes. */
static void send_echo(uint8_t type, const uint8_t *dst_mac, uint32_t dst_ip, uint16_t ident,
                      uint16_t seq, const uint8_t *data, unsigned n)
{
    uint16_t id;
    uint8_t *f = tx_frame(&id);
    if (!f)
        return;
    uint8_t *ip = eth_header(f, dst_mac, ETH_P_IP);
    uint8_t *icmp = ip + IP_HLEN;
    ip[0] = 0x45;                           /* version 4, 5 words of header */
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + ICMP_HLEN + n));
    put16(ip + 4, seq);                     /* identification */
    put16(ip + 6, 0x4000);                  /* don't fragment */
    ip[8] = 64;                             /* TTL */
    ip[9] = 1;                              /* ICMP */
    put16(ip + 10, 0);
    put32(ip + 12, my_ip);
    put32(ip + 16, dst_ip);
    put16(ip + 10, inet_checksum(ip, IP_HLEN));
    icmp[0] = type;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, ident);
    put16(icmp + 6, seq);
    memcpy(icmp + ICMP_HLEN, data, n);
    put16(icmp + 2, inet_checksum(icmp, ICMP_HLEN + n));
    tx_send(id, ETH_HLEN + IP_HLEN + ICMP_HLEN + n);
}

/* ---- the pinger's requests ---- */
static struct {
    unsigned long count, size, window, sent, replies, bad, duplicates, lost, oldest, max_lost;
    uint64_t timeout, rtt_min, rtt_max, rtt_sum;
} ping;
static uint64_t sent_at[MAX_SEQ + 1];       /* 0: not outstanding */
static uint8_t answered[MAX_SEQ + 1];
static uint8_t data[MAX_DATA];

static uint8_t pattern_byte(uint16_t seq, unsigned i) { return (uint8_t)(seq * 31 + i * 7 + 0x11); }

static void echo_reply_in(uint32_t src, const uint8_t *icmp, unsigned n)
{
    uint16_t ident = get16(icmp + 4), seq = get16(icmp + 6);
    unsigned dn = n - ICMP_HLEN;
    int good = src == target_ip && ident == PING_ID && seq >= 1 && seq <= ping.sent && dn == ping.size;
    for (unsigned i = 0; good && i < dn; i++)
        good = icmp[ICMP_HLEN + i] == pattern_byte(seq, i);
    if (!good) {
        ping.bad++;
        return;
    }
    if (answered[seq]) {
        ping.duplicates++;
        return;
    }
    answered[seq] = 1;
    ping.replies++;
    if (sent_at[seq]) {                     /* not given up as lost */
        uint64_t rtt = now_ns() - sent_at[seq];
        sent_at[seq] = 0;
        ping.rtt_sum += rtt;
        if (rtt < ping.rtt_min) ping.rtt_min = rtt;
        if (rtt > ping.rtt_max) ping.rtt_max = rtt;
    } else {
        ping.lost--;                         /* it came after its timeout after all */
    }
}

/* ---- one received frame ---- */
static void arp_in(const uint8_t *a, unsigned n)
{
    if (n < 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4) {
        stat.ignored++;
        return;
    }
    uint16_t op = get16(a + 6);
    uint32_t spa = get32(a + 14), tpa = get32(a + 24);
    if (op == 1 && tpa == my_ip) {
        stat.arp_requests++;
        send_arp(2, a + 8, a + 8, spa);
    } else if (op == 2 && tpa == my_ip && spa == target_ip && target_ip) {
        stat.arp_replies++;
        memcpy(peer_mac, a + 8, 6);
        peer_known = 1;
    } else {
        stat.ignored++;
    }
}

static void ip_in(const uint8_t *ip, unsigned n)
{
    unsigned ihl = (ip[0] & 15) * 4u, total = n >= IP_HLEN ? get16(ip + 2) : 0;
    if (n < IP_HLEN || ip[0] >> 4 != 4 || ihl < IP_HLEN || total < ihl + ICMP_HLEN || total > n
            || inet_checksum(ip, ihl) || ip[9] != 1 || get32(ip + 16) != my_ip
            || (get16(ip + 6) & 0x3fff)) {  /* a fragment */
        stat.ignored++;
        return;
    }
    const uint8_t *icmp = ip + ihl;
    unsigned len = total - ihl;
    if (inet_checksum(icmp, len)) {
        stat.ignored++;
        return;
    }
    uint32_t src = get32(ip + 12);
    if (icmp[0] == ICMP_ECHO_REQUEST && icmp[1] == 0 && len - ICMP_HLEN <= MAX_DATA) {
        stat.echo_requests++;
        const uint8_t *eth = ip - ETH_HLEN;
        send_echo(ICMP_ECHO_REPLY, eth + 6, src, get16(icmp + 4), get16(icmp + 6), icmp + ICMP_HLEN,
                  len - ICMP_HLEN);
    } else if (icmp[0] == ICMP_ECHO_REPLY && icmp[1] == 0) {
        stat.echo_replies++;
        echo_reply_in(src, icmp, len);
    } else {
        stat.ignored++;
    }
}

static void frame_in(const uint8_t *f, unsigned n)
{
    if (n < ETH_HLEN || (memcmp(f, my_mac, 6) && memcmp(f, broadcast, 6))) {
        stat.ignored++;
        return;
    }
    uint16_t type = get16(f + 12);
    if (type == ETH_P_ARP)
        arp_in(f + ETH_HLEN, n - ETH_HLEN);
    else if (type == ETH_P_IP)
        ip_in(f + ETH_HLEN, n - ETH_HLEN);
    else
        stat.ignored++;
}

/* Take every received frame, answer what asks for an answer, re-post the buffers.
 * Returns how many frames came. */
static unsigned receive(void)
{
    unsigned frames = 0;
    for (;;) {
        RING_IDX prod = rx.sring->rsp_prod;
        rmb();
        for (RING_IDX i = rx.rsp_cons; i != prod; i++) {
            netif_rx_response_t *rsp = RING_GET_RESPONSE(&rx, i);
            uint16_t id = rsp->id;
            if (id >= NR_RX)
                continue;                   /* not a buffer of ours: nothing to re-post */
            if (rsp->status > 0 && rsp->offset + (unsigned)rsp->status <= PAGE_SIZE) {
                frames++;
                frame_in(rx_buf[id] + rsp->offset, (unsigned)rsp->status);
            } else {
                stat.rx_errors++;
            }
            post_rx(id);
        }
        rx.rsp_cons = prod;
        push_rx();
        int more;
        RING_FINAL_CHECK_FOR_RESPONSES(&rx, more);
        if (!more)
            return frames;
    }
}

/* Receive until something came or `deadline`; returns the frames taken. */
static unsigned wait_frames(uint64_t deadline)
{
    for (;;) {
        uint64_t seen = port_events[port];
        unsigned got = receive();
        if (got || now_ns() >= deadline)
            return got;
        wait_port(port, seen, deadline);
    }
}

/* ---- the handshake ---- */
static int find_device(void)
{
    char list[256], mac[32], path[96];
    int n = xs_request(XS_DIRECTORY, "device/vif", NULL, list, sizeof(list));
    if (n <= 0)
        return -1;
    xs_path(fe_dir, sizeof(fe_dir), "device/vif", list);               /* the first entry */
    xs_path(path, sizeof(path), fe_dir, "backend");
    if (xs_request(XS_READ, path, NULL, be_dir, sizeof(be_dir)) <= 0)
        return -1;
    xs_path(path, sizeof(path), fe_dir, "mac");
    if (xs_request(XS_READ, path, NULL, mac, sizeof(mac)) <= 0 || parse_mac(mac, my_mac)) {
        puts_("netfront: no usable mac in ");
        puts_(path);
        puts_("\n");
        return -1;
    }
    return 0;
}

static int connect(void)
{
    grant_entry_v1_t *table = frontend_begin(be_dir);
    if (!table)
        return -1;
    netif_tx_sring_t *txs = (netif_tx_sring_t *)tx_ring_page;
    netif_rx_sring_t *rxs = (netif_rx_sring_t *)rx_ring_page;
    SHARED_RING_INIT(txs);
    SHARED_RING_INIT(rxs);
    FRONT_RING_INIT(&tx, txs, PAGE_SIZE);
    FRONT_RING_INIT(&rx, rxs, PAGE_SIZE);
    gnttab_grant(table, TX_RING_REF, 0, (uint64_t)tx_ring_page >> PAGE_SHIFT, 0);
    gnttab_grant(table, RX_RING_REF, 0, (uint64_t)rx_ring_page >> PAGE_SHIFT, 0);
    for (unsigned i = 0; i < NR_TX; i++) {
        gnttab_grant(table, TX_BUF_REF + i, 0, (uint64_t)tx_buf[i] >> PAGE_SHIFT, 1);
        free_tx[nr_free_tx++] = (uint16_t)(NR_TX - 1 - i);
    }
    for (unsigned i = 0; i < NR_RX; i++)
        gnttab_grant(table, RX_BUF_REF + i, 0, (uint64_t)rx_buf[i] >> PAGE_SHIFT, 0);
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };
    check("alloc_unbound_for_backend", evtchn_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    port = alloc.port;
    xs_write_uint_at(fe_dir, "tx-ring-ref", TX_RING_REF);
    xs_write_uint_at(fe_dir, "rx-ring-ref", RX_RING_REF);
    xs_write_uint_at(fe_dir, "event-channel", port);
    xs_write_uint_at(fe_dir, "request-rx-copy", 1);
    xs_write_uint_at(fe_dir, "feature-rx-notify", 1);
    check("frontend_initialised", xs_write_uint_at(fe_dir, "state", XenbusStateInitialised) >= 0, 1);
    check("backend_connected", xenbus_wait_state(be_dir, XenbusStateConnected, 0), XenbusStateConnected);
    check("feature_rx_copy", xs_read_uint_at(be_dir, "feature-rx-copy"), 1);
    for (uint16_t i = 0; i < NR_RX; i++)
        post_rx(i);
    push_rx();
    check("frontend_connected", xs_write_uint_at(fe_dir, "state", XenbusStateConnected) >= 0, 1);
    puts_("netfront: ");
    puts_(fe_dir);
    puts_(" connected, ip ");
    put_ip(my_ip);
    puts_("\n");
    cons_flush();
    return 0;
}

static void disconnect(void)
{
    xs_write_uint_at(fe_dir, "state", XenbusStateClosing);
    check("backend_closing", xenbus_wait_state(be_dir, XenbusStateClosing, 1) >= XenbusStateClosing, 1);
    xs_write_uint_at(fe_dir, "state", XenbusStateClosed);
    check("backend_closed", xenbus_wait_state(be_dir, XenbusStateClosed, 0), XenbusStateClosed);
}

/* ---- role=responder ---- */
static void run_responder(void)
{
    uint64_t idle = cmdline_uint("idle_ms", 2000) * 1000000ULL;
    unsigned long packets = cmdline_uint("packets", 0);
    uint64_t quiet_since = now_ns();
    while (!packets || stat.echo_requests < packets) {
        if (wait_frames(quiet_since + idle))
            quiet_since = now_ns();
        else if (now_ns() >= quiet_since + idle)
            break;
    }
    reap_tx();
    puts_("netfront: responder answered ");
    putdec(stat.arp_requests);
    puts_(" ARP requests and ");
    putdec(stat.echo_requests);
    puts_(" echo requests; ignored ");
    putdec(stat.ignored);
    puts_(" frames; ");
    putdec(stat.tx_errors);
    puts_(" tx errors\n");
    cons_flush();
    if (packets)
        check("echo_requests_answered", stat.echo_requests, packets);
}

/* ---- role=pinger ---- */
static void print_mac(const uint8_t *mac)
{
    static const char hex[] = "0123456789abcdef";
    char s[18];
    for (int i = 0; i < 6; i++) {
        s[i * 3] = hex[mac[i] >> 4];
        s[i * 3 + 1] = hex[mac[i] & 15];
        s[i * 3 + 2] = i < 5 ? ':' : 0;
    }
    puts_(s);
}

static int resolve_target(void)
{
    uint64_t give_up = now_ns() + cmdline_uint("wait_ms", 10000) * 1000000ULL;
    unsigned long tries = 0;
    static const uint8_t zero[6];
    while (!peer_known && now_ns() < give_up) {
        send_arp(1, broadcast, zero, target_ip);
        tries++;
        uint64_t retry = now_ns() + ARP_RETRY_NS;
        while (!peer_known && now_ns() < retry)
            wait_frames(retry);
    }
    check("target_answered_arp", peer_known, 1);
    if (peer_known) {
        puts_("netfront: ");
        put_ip(target_ip);
        puts_(" is at ");
        print_mac(peer_mac);
        puts_(" (ARP requests sent: ");
        putdec(tries);
        puts_(")\n");
        cons_flush();
    }
    return peer_known ? 0 : -1;
}

/* Give up on requests older than the timeout; returns how many are still outstanding.
 * ping.oldest is the lowest sequence number that may still be outstanding. */
static unsigned long expire(uint64_t now)
{
    unsigned long outstanding = 0;
    while (ping.oldest <= ping.sent && !sent_at[ping.oldest])
        ping.oldest++;
    for (unsigned long s = ping.oldest; s <= ping.sent; s++) {
        if (!sent_at[s])
            continue;
        if (now - sent_at[s] >= ping.timeout) {
            sent_at[s] = 0;
            ping.lost++;
        } else {
            outstanding++;
        }
    }
    return outstanding;
}

static void run_pinger(void)
{
    ping.count = cmdline_uint("count", 10);
    ping.size = cmdline_uint("size", 56);
    ping.window = cmdline_uint("window", 1);
    ping.timeout = cmdline_uint("timeout_ms", 1000) * 1000000ULL;
    ping.max_lost = cmdline_uint("max_lost", 0);
    ping.rtt_min = ~0ULL;
    ping.oldest = 1;
    if (ping.count > MAX_SEQ || ping.size > MAX_DATA || !ping.window || ping.window > NR_TX / 2) {
        check("options_in_range", 0, 1);
        return;
    }
    if (!target_ip || resolve_target())
        return;
    uint64_t start = now_ns();
    while (ping.replies + ping.lost < ping.count) {
        uint64_t now = now_ns();
        unsigned long outstanding = expire(now);
        while (outstanding < ping.window && ping.sent < ping.count) {
            uint16_t seq = (uint16_t)++ping.sent;
            for (unsigned i = 0; i < ping.size; i++)
                data[i] = pattern_byte(seq, i);
            sent_at[seq] = now_ns() | 1;
            send_echo(ICMP_ECHO_REQUEST, peer_mac, target_ip, PING_ID, seq, data, (unsigned)ping.size);
            outstanding++;
        }
        if (outstanding)
            wait_frames(now_ns() + ping.timeout / 4 + 1);
    }
    uint64_t elapsed = now_ns() - start;
    reap_tx();
    unsigned long frame = ETH_HLEN + IP_HLEN + ICMP_HLEN + ping.size;
    puts_("netfront: pinger sent ");
    putdec(ping.sent);
    puts_(" echo requests to ");
    put_ip(target_ip);
    puts_(", replies ");
    putdec(ping.replies);
    puts_(", bad ");
    putdec(ping.bad);
    puts_(", duplicates ");
    putdec(ping.duplicates);
    puts_(", lost ");
    putdec(ping.lost);
    puts_("\n");
    if (ping.replies) {
        puts_("netfront: rtt min/avg/max ");
        putdec(ping.rtt_min / 1000);
        puts_("/");
        putdec(ping.rtt_sum / ping.replies / 1000);
        puts_("/");
        putdec(ping.rtt_max / 1000);
        puts_(" us\n");
    }
    puts_("bench ping frames=");
    putdec(2 * ping.replies);
    puts_(" frame_bytes=");
    putdec(frame);
    puts_(" window=");
    putdec(ping.window);
    puts_(" ns=");
    putdec(elapsed);
    puts_("\n");
    cons_flush();
    if (ping.max_lost)
        check("lost_at_most_max_lost", ping.lost <= ping.max_lost, 1);
    else
        check("every_echo_answered", ping.replies, ping.count);
    check("no_bad_replies", ping.bad, 0);
    check("no_duplicate_replies", ping.duplicates, 0);
    check("no_tx_errors", stat.tx_errors, 0);
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    setup_upcalls();
    struct evtchn_bind_virq timer = { .virq = VIRQ_TIMER, .vcpu = 0 };
    check("bind_virq_timer", evtchn_op(EVTCHNOP_bind_virq, &timer), 0);
    const char *role = cmdline_value("role");
    my_ip = parse_ip(cmdline_value("ip"));
    target_ip = parse_ip(cmdline_value("target"));
    int pinger = role && value_is(role, "pinger");
    if (!role || !(pinger || value_is(role, "responder")) || !my_ip || (pinger && !target_ip)) {
        puts_("netfront: give role=responder ip=A.B.C.D, or role=pinger ip=A.B.C.D target=A.B.C.D\n");
        check("command_line", 0, 1);
    } else if (find_device()) {
        puts_("netfront: no vif under device/vif\n");
        check("found_a_vif", 0, 1);
    } else if (connect() == 0) {
        if (pinger)
            run_pinger();
        else
            run_responder();
        disconnect();
    }
    finish("netfront");
}
