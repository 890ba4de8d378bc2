/*
 * Load generator for the fastserver benchmark.
 *
 * One epoll loop drives every connection (or UDP slot), so the client costs a
 * single core and never becomes the bottleneck through thread scheduling.
 * Every reply is checked byte for byte: payloads are a pure function of
 * (slot, sequence number) or (slot, stream offset), so the expected bytes are
 * regenerated instead of stored (http mode checks the status line and a
 * fixed body, framed by Content-Length).  Results go to stdout as one JSON line;
 * diagnostics go to stderr.
 *
 * --tls speaks TLS on every stream connection (loadgen_tls.c, OpenSSL): a
 * session per persistent connection, or a full handshake per connection in
 * perconn mode.  --silent N holds N extra plain TCP connections open for the
 * whole run that never send a byte (a client stalling a server's accept
 * path); they are connected before any measured connection starts.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_tls.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { M_PINGPONG, M_PIPELINED, M_PERCONN, M_UDP, M_UNIX, M_BULK, M_HTTP, N_MODES };
static const char *mode_names[N_MODES] = {"pingpong", "pipelined", "perconn", "udp", "unix", "bulk", "http"};

enum state { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN };

/* Header "SSSSSSSS:QQQQQQQQQQQQQQQQ:" identifies slot and sequence number. */
#define HEADER_LEN 26
#define MAX_EVENTS 256
#define HIST_US 1000000 /* 1 us buckets up to one second, then an overflow bucket */
#define MAX_REPORTED 5  /* per kind, so a broken server cannot flood stderr */

/* http mode: one keep-alive GET in flight per connection.  The body must be
 * byte for byte HTTP_BODY in bench/handlers.py (and echo_ref.c's). */
static const char HTTP_REQUEST[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
static const char HTTP_STATUS[] = "HTTP/1.1 200 OK\r\n";
static const char HTTP_BODY[] = "fastserver http-keepalive bench reply: 64 bytes of body, done!!\n";
#define HTTP_REQUEST_LEN (sizeof HTTP_REQUEST - 1)
#define HTTP_STATUS_LEN (sizeof HTTP_STATUS - 1)
#define HTTP_BODY_LEN (sizeof HTTP_BODY - 1)
#define HTTP_MAX_RESPONSE 16384 /* head and body; anything longer is a mismatch */

static struct {
    enum mode mode;
    const char *host;
    int port;
    const char *path;
    int conns, depth, size, chunk, window;
    double duration, warmup;
    int udp_timeout_ms, any_reply, cpu, tls, silent;
    long long requests; /* > 0: end the run once this many are answered (bulk: bytes) */
} opt = {M_PINGPONG, "127.0.0.1", 0, NULL, 0, 0, 64, 65536, 0, 2.0, 0.5, 250, 0, -1, 0, 0, 0};

static struct {
    uint64_t count, bytes, errors, mismatches, lost, late, connects, closed_by_server;
    uint64_t silent_closed; /* silent connections the server closed (they are reopened) */
    int silent_open_at_start; /* silent connections up when the measured clients started */
    int reported_errors, reported_mismatches;
    char first_error[200], first_mismatch[200];
    char tls_version[32], tls_cipher[64]; /* as agreed by the first handshake */
} st;

static uint32_t hist[HIST_US + 1];
static uint64_t hist_n, hist_max;

typedef struct conn {
    int fd, id;
    int silent;           /* a --silent connection: connects, then only watches for the server closing it */
    SSL *ssl;             /* --tls: the session on fd, from connect to close */
    enum state state;
    uint64_t sent, rcvd;  /* lines (bulk: bytes) */
    double t_start;       /* batch send time, or connect time for perconn and a new http connection */
    double retry_at;
    int want_out;
    uint64_t sent_at_connect; /* http: c->sent when this connection opened */
    size_t chunk_left;    /* bulk: bytes of the current chunk still to write */
    char *wbuf;
    size_t wlen, woff;
    char *rbuf;
    size_t rlen, rcap;
} conn_t;

typedef struct udp_slot {
    uint64_t seq;
    double t_sent;
    int pending, need_send;
} udp_slot_t;

static int epfd;
static int measuring;
static double now_s, measure_start, measure_end;
static struct sockaddr_storage server_addr;
static socklen_t server_addr_len;
static uint64_t src_counter;
static char *pattern; /* bulk stream content, PATTERN_LEN + chunk bytes long */
#define PATTERN_LEN 65521u /* prime, so streams of different slots do not line up */

/* The run's end: the clock, or with --requests, the count answered. */
static int run_over(double end) {
    return now_s >= end || (opt.requests > 0 && st.count >= (uint64_t)opt.requests);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void json_escape_into(char *dst, size_t cap, const char *src) {
    size_t j = 0;
    for (size_t i = 0; src[i] && j + 2 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch == '"' || ch == '\\') { dst[j++] = '\\'; dst[j++] = ch; }
        else if (ch < 0x20 || ch > 0x7e) dst[j++] = '?';
        else dst[j++] = ch;
    }
    dst[j] = 0;
}

static void note(uint64_t *counter, int *reported, char *first, size_t cap, const char *kind,
                 const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (*counter == 0) json_escape_into(first, cap, msg);
    (*counter)++;
    if (*reported < MAX_REPORTED) {
        fprintf(stderr, "loadgen: %s: %s\n", kind, msg);
        (*reported)++;
    }
}
#define ERROR(...) note(&st.errors, &st.reported_errors, st.first_error, sizeof st.first_error, "error", __VA_ARGS__)
#define MISMATCH(...) note(&st.mismatches, &st.reported_mismatches, st.first_mismatch, sizeof st.first_mismatch, "mismatch", __VA_ARGS__)

static void record_latency(double seconds) {
    if (!measuring) return;
    double us_f = seconds * 1e6;
    uint64_t us = us_f < 0 ? 0 : (uint64_t)(us_f + 0.5);
    if (us > hist_max) hist_max = us;
    hist[us < HIST_US ? us : HIST_US]++;
    hist_n++;
}

static double percentile(double p) {
    if (hist_n == 0) return -1;
    uint64_t target = (uint64_t)ceil(p * hist_n), seen = 0;
    if (target == 0) target = 1;
    for (uint64_t i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen >= target) return i < HIST_US ? (double)i : (double)hist_max;
    }
    return (double)hist_max;
}

/* Payloads must never contain '\n' except as the final byte of a line. */
static void fill_line(char *buf, uint32_t slot, uint64_t seq, int size) {
    char head[HEADER_LEN + 1];
    snprintf(head, sizeof head, "%08x:%016llx:", slot, (unsigned long long)seq);
    memcpy(buf, head, HEADER_LEN);
    for (int i = HEADER_LEN; i < size - 1; i++)
        buf[i] = (char)('a' + (seq * 7 + (uint64_t)i * 13 + slot) % 26);
    buf[size - 1] = '\n';
}

static int parse_hex(const char *p, int n, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static const char *bulk_at(const conn_t *c, uint64_t offset) {
    return pattern + (offset + (uint64_t)c->id * 977u) % PATTERN_LEN;
}

static void set_out_interest(conn_t *c, int want) {
    if (c->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) ERROR("epoll_ctl: %s", strerror(errno));
    c->want_out = want;
}

static void drop_conn(conn_t *c, double retry_delay) {
    if (c->ssl) {
        tls_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = S_IDLE;
    c->retry_at = now_s + retry_delay;
    /* Whatever was in flight is abandoned; resynchronise the sequence. */
    c->rcvd = c->sent;
    c->wlen = c->woff = c->rlen = 0;
    c->chunk_left = 0;
    c->want_out = 0;
}

static void fail_conn(conn_t *c) { drop_conn(c, 0.01); }

static void next_source_address(struct sockaddr_in *src) {
    /* Spread perconn clients over 127.0.0.0/8 so TIME_WAIT never exhausts one address's ports. */
    uint64_t k = src_counter++;
    uint32_t b = 1 + (uint32_t)((k >> 16) % 254), c = (uint32_t)((k >> 8) & 255),
             d = 1 + (uint32_t)((k & 255) % 254);
    memset(src, 0, sizeof *src);
    src->sin_family = AF_INET;
    src->sin_addr.s_addr = htonl(127u << 24 | b << 16 | c << 8 | d);
    src->sin_port = 0;
}

static void open_conn(conn_t *c) {
    int family = server_addr.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ERROR("socket: %s", strerror(errno));
        c->retry_at = now_s + 0.05;
        return;
    }
    if (family == AF_INET) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* http: for servers that close after each reply */
        if (opt.mode == M_PERCONN || opt.mode == M_HTTP || c->silent) {
            struct sockaddr_in src;
            next_source_address(&src);
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
                ERROR("bind source %s: %s", inet_ntoa(src.sin_addr), strerror(errno));
                close(fd);
                c->retry_at = now_s + 0.01;
                return;
            }
        }
    }
    c->fd = fd;
    c->want_out = 1;
    c->state = S_CONNECTING;
    /* A request that needs a new connection waits for it (and its handshake) too. */
    if (opt.mode == M_PERCONN || opt.mode == M_HTTP) c->t_start = now_s;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&server_addr, server_addr_len) < 0 && errno != EINPROGRESS) {
        if (errno == EAGAIN) { /* AF_UNIX backlog full: not an error, try again shortly */
            drop_conn(c, 0.001);
            return;
        }
        ERROR("connect: %s", strerror(errno));
        fail_conn(c);
    }
}

/* TLS: what a call that could not complete waits for. */
static void tls_wait(conn_t *c, enum tls_status status) {
    set_out_interest(c, status == TLS_WANT_WRITE);
}

static void flush_lines(conn_t *c) {
    while (c->woff < c->wlen) {
        if (c->ssl) {
            enum tls_status status;
            char why[160];
            ssize_t n = tls_write(c->ssl, c->wbuf + c->woff, c->wlen - c->woff, &status, why, sizeof why);
            if (n > 0) { c->woff += (size_t)n; continue; }
            /* A write that waits for readability is retried on EPOLLIN (on_stream_event). */
            if (status == TLS_WANT_READ || status == TLS_WANT_WRITE) { tls_wait(c, status); return; }
            ERROR("conn %d: TLS send: %s", c->id, status == TLS_EOF ? "server closed the connection" : why);
            fail_conn(c);
            return;
        }
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) { c->woff += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) { set_out_interest(c, 1); return; }
        ERROR("send: %s", n < 0 ? strerror(errno) : "wrote 0 bytes");
        fail_conn(c);
        return;
    }
    c->wlen = c->woff = 0;
    set_out_interest(c, 0);
}

static void start_batch(conn_t *c) {
    if (opt.mode == M_HTTP) {
        memcpy(c->wbuf, HTTP_REQUEST, HTTP_REQUEST_LEN);
        if (c->sent > c->sent_at_connect) c->t_start = now_s; /* else since the connect */
        c->sent++;
        c->wlen = HTTP_REQUEST_LEN;
        c->woff = 0;
        flush_lines(c);
        return;
    }
    int lines = opt.mode == M_PIPELINED ? opt.depth : 1;
    for (int i = 0; i < lines; i++) fill_line(c->wbuf + (size_t)i * opt.size, c->id, c->sent + i, opt.size);
    c->sent += lines;
    c->wlen = (size_t)lines * opt.size;
    c->woff = 0;
    if (opt.mode != M_PERCONN) c->t_start = now_s;
    flush_lines(c);
}

static void pump_bulk(conn_t *c) {
    for (;;) {
        if (c->chunk_left == 0) {
            if (c->sent - c->rcvd + (uint64_t)opt.chunk > (uint64_t)opt.window) break;
            c->chunk_left = (size_t)opt.chunk;
        }
        ssize_t n = send(c->fd, bulk_at(c, c->sent), c->chunk_left, MSG_NOSIGNAL);
        if (n > 0) { c->sent += (uint64_t)n; c->chunk_left -= (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) { set_out_interest(c, 1); return; }
        ERROR("send: %s", n < 0 ? strerror(errno) : "wrote 0 bytes");
        fail_conn(c);
        return;
    }
    set_out_interest(c, 0);
}

/* The connection is up (and its handshake done): start its load. */
static void on_open(conn_t *c) {
    c->state = S_OPEN;
    c->sent_at_connect = c->sent;
    st.connects++;
    if (c->ssl && !st.tls_version[0]) {
        snprintf(st.tls_version, sizeof st.tls_version, "%s", tls_version_name(c->ssl));
        snprintf(st.tls_cipher, sizeof st.tls_cipher, "%s", tls_cipher_name(c->ssl));
    }
    if (opt.mode == M_BULK) pump_bulk(c);
    else start_batch(c);
}

static void continue_handshake(conn_t *c) {
    char why[160];
    enum tls_status status = tls_handshake(c->ssl, why, sizeof why);
    if (status == TLS_OK) on_open(c);
    else if (status == TLS_WANT_READ || status == TLS_WANT_WRITE) tls_wait(c, status);
    else {
        ERROR("conn %d: TLS handshake: %s", c->id, status == TLS_EOF ? "server closed the connection" : why);
        fail_conn(c);
    }
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        ERROR("%sconnect: %s", c->silent ? "silent connection: " : "", strerror(err));
        fail_conn(c);
        return;
    }
    if (server_addr.ss_family == AF_INET) {
        /* A loopback connect to a port nobody listens on can connect to itself. */
        struct sockaddr_in a, b;
        socklen_t la = sizeof a, lb = sizeof b;
        if (getsockname(c->fd, (struct sockaddr *)&a, &la) == 0 &&
            getpeername(c->fd, (struct sockaddr *)&b, &lb) == 0 && a.sin_port == b.sin_port &&
            a.sin_addr.s_addr == b.sin_addr.s_addr) {
            ERROR("self-connect on port %d", ntohs(a.sin_port));
            fail_conn(c);
            return;
        }
    }
    if (c->silent) {
        c->state = S_OPEN;
        set_out_interest(c, 0); /* from now on only the server's closing it matters */
        return;
    }
    if (!opt.tls) {
        on_open(c);
        return;
    }
    char why[160];
    c->ssl = tls_attach(c->fd, why, sizeof why);
    if (!c->ssl) {
        ERROR("conn %d: %s", c->id, why);
        fail_conn(c);
        return;
    }
    c->state = S_HANDSHAKE;
    continue_handshake(c);
}

static void on_line(conn_t *c, const char *line, size_t len, int *stop) {
    if (c->rcvd >= c->sent) {
        MISMATCH("conn %d: reply with nothing outstanding: %.40s", c->id, line);
        *stop = 1;
        return;
    }
    if (!opt.any_reply) {
        char expect[opt.size];
        fill_line(expect, c->id, c->rcvd, opt.size);
        if (len != (size_t)opt.size || memcmp(expect, line, len) != 0) {
            MISMATCH("conn %d seq %llu: got %zu bytes '%.40s'", c->id, (unsigned long long)c->rcvd, len, line);
            *stop = 1;
            return;
        }
    }
    c->rcvd++;
    if (measuring) { st.count++; st.bytes += len; }
}

/* Appends what the socket holds to c->rbuf: 1 if bytes came, 0 if none are
 * waiting, -1 if the connection ended (it has been dropped). */
static int recv_more(conn_t *c) {
    if (c->ssl) {
        enum tls_status status;
        char why[160];
        ssize_t n = tls_read(c->ssl, c->rbuf + c->rlen, c->rcap - c->rlen, &status, why, sizeof why);
        if (n > 0) {
            c->rlen += (size_t)n;
            return 1;
        }
        if (status == TLS_WANT_READ) return 0;
        if (status == TLS_WANT_WRITE) { set_out_interest(c, 1); return 0; }
        ERROR("conn %d: %s", c->id, status == TLS_EOF ? "server closed the connection" : why);
        fail_conn(c);
        return -1;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        if (n <= 0) {
            ERROR("conn %d: %s", c->id, n == 0 ? "server closed the connection" : strerror(errno));
            fail_conn(c);
            return -1;
        }
        c->rlen += (size_t)n;
        return 1;
    }
}

static void read_lines(conn_t *c) {
    for (;;) {
        if (recv_more(c) <= 0) return;
        char *p = c->rbuf, *nl;
        size_t left = c->rlen;
        int stop = 0;
        while (!stop && (nl = memchr(p, '\n', left)) != NULL) {
            size_t len = (size_t)(nl - p) + 1;
            on_line(c, p, len, &stop);
            p += len;
            left -= len;
        }
        if (stop) { fail_conn(c); return; }
        memmove(c->rbuf, p, left);
        c->rlen = left;
        if (c->rlen == c->rcap) {
            MISMATCH("conn %d: %zu bytes without a newline", c->id, c->rlen);
            fail_conn(c);
            return;
        }
        if (c->rcvd == c->sent) {
            if (c->rlen) {
                MISMATCH("conn %d: %zu unexpected trailing bytes", c->id, c->rlen);
                fail_conn(c);
                return;
            }
            if (opt.mode != M_PIPELINED) record_latency(now() - c->t_start);
            if (opt.mode == M_PERCONN) {
                if (c->ssl) tls_close_notify(c->ssl);
                drop_conn(c, 0);
                open_conn(c);
            } else {
                start_batch(c);
            }
            return;
        }
    }
}

/* Length of the response head through its blank line, or 0 while it is incomplete. */
static size_t http_head_len(const char *p, size_t n) {
    const char *blank = memmem(p, n, "\r\n\r\n", 4);
    return blank ? (size_t)(blank - p) + 4 : 0;
}

/* The value of header `name` (lower case, with its colon) in a complete head,
 * trimmed of blanks; NULL when the head has no such header. */
static const char *http_header(const char *head, size_t len, const char *name, size_t *value_len) {
    const size_t name_len = strlen(name);
    const char *end = head + len;
    const char *line = memchr(head, '\n', len); /* past the status line */
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) break;
        if ((size_t)(eol - line) >= name_len && strncasecmp(line, name, name_len) == 0) {
            const char *v = line + name_len, *v_end = eol;
            while (v < v_end && (*v == ' ' || *v == '\t')) v++;
            while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t' || v_end[-1] == '\r')) v_end--;
            *value_len = (size_t)(v_end - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

/* The Content-Length of a complete head, or -1 when it has none or a malformed one. */
static long http_content_length(const char *head, size_t len) {
    size_t vlen;
    const char *v = http_header(head, len, "content-length:", &vlen);
    if (!v || vlen == 0 || vlen > 6) return -1;
    long n = 0;
    for (size_t i = 0; i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* Whether the server announced it closes the connection after this response. */
static int http_closes(const char *head, size_t len) {
    size_t vlen;
    const char *v = http_header(head, len, "connection:", &vlen);
    return v && vlen == 5 && strncasecmp(v, "close", 5) == 0;
}

/* One request is in flight per connection: read its whole response (head up
 * to the blank line, then Content-Length bytes), check it, send the next on
 * the same connection, or on a new one when the response said
 * "Connection: close" (werkzeug's dev server always does). */
static void read_http(conn_t *c) {
    for (;;) {
        if (recv_more(c) <= 0) return;
        c->rbuf[c->rlen] = 0; /* so a mismatch report never reads past what arrived */
        size_t head = http_head_len(c->rbuf, c->rlen);
        if (!head) {
            if (c->rlen == c->rcap) {
                MISMATCH("conn %d: no end of the response head in %zu bytes", c->id, c->rlen);
                fail_conn(c);
                return;
            }
            continue;
        }
        if (c->rcvd >= c->sent) {
            MISMATCH("conn %d: response with no request outstanding: %.40s", c->id, c->rbuf);
            fail_conn(c);
            return;
        }
        if (!opt.any_reply && memcmp(c->rbuf, HTTP_STATUS, head < HTTP_STATUS_LEN ? head : HTTP_STATUS_LEN) != 0) {
            MISMATCH("conn %d seq %llu: status line '%.40s'", c->id, (unsigned long long)c->rcvd, c->rbuf);
            fail_conn(c);
            return;
        }
        long body = http_content_length(c->rbuf, head);
        if (body < 0 || head + (size_t)body > c->rcap) {
            MISMATCH("conn %d seq %llu: no usable Content-Length in '%.60s'", c->id, (unsigned long long)c->rcvd,
                     c->rbuf);
            fail_conn(c);
            return;
        }
        size_t total = head + (size_t)body;
        if (c->rlen < total) continue;
        if (!opt.any_reply && ((size_t)body != HTTP_BODY_LEN || memcmp(c->rbuf + head, HTTP_BODY, HTTP_BODY_LEN) != 0)) {
            MISMATCH("conn %d seq %llu: body of %ld bytes '%.40s'", c->id, (unsigned long long)c->rcvd, body,
                     c->rbuf + head);
            fail_conn(c);
            return;
        }
        if (c->rlen > total) {
            MISMATCH("conn %d: %zu unexpected bytes after the response", c->id, c->rlen - total);
            fail_conn(c);
            return;
        }
        int closes = http_closes(c->rbuf, head);
        c->rcvd++;
        c->rlen = 0;
        if (measuring) { st.count++; st.bytes += total; }
        record_latency(now() - c->t_start);
        if (closes) {
            if (measuring) st.closed_by_server++;
            drop_conn(c, 0);
            open_conn(c);
        } else {
            start_batch(c);
        }
        return;
    }
}

static void read_bulk(conn_t *c) {
    char buf[opt.chunk];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) {
            ERROR("conn %d: %s", c->id, n == 0 ? "server closed the connection" : strerror(errno));
            fail_conn(c);
            return;
        }
        if (c->rcvd + (uint64_t)n > c->sent) {
            MISMATCH("conn %d: %zd bytes more than sent", c->id, n - (ssize_t)(c->sent - c->rcvd));
            fail_conn(c);
            return;
        }
        if (!opt.any_reply && memcmp(buf, bulk_at(c, c->rcvd), (size_t)n) != 0) {
            MISMATCH("conn %d: corrupt echo at stream offset %llu", c->id, (unsigned long long)c->rcvd);
            fail_conn(c);
            return;
        }
        c->rcvd += (uint64_t)n;
        if (measuring) { st.count += (uint64_t)n; st.bytes += (uint64_t)n; }
    }
    pump_bulk(c);
}

/* A silent connection only notices the server closing it, and reopens. */
static void on_silent_event(conn_t *c) {
    char scratch[4096];
    for (;;) {
        ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
        if (r > 0) continue; /* e.g. a TLS alert before the close */
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) return;
        st.silent_closed++;
        drop_conn(c, 0.01);
        return;
    }
}

static void read_replies(conn_t *c) {
    if (opt.mode == M_BULK) read_bulk(c);
    else if (opt.mode == M_HTTP) read_http(c);
    else read_lines(c);
}

static void on_stream_event(conn_t *c, uint32_t events) {
    if (c->state == S_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        on_connected(c);
        return; /* open (load started), handshaking, or dropped */
    }
    if (c->silent) {
        if (c->state == S_OPEN) on_silent_event(c);
        return;
    }
    if (c->state == S_HANDSHAKE) {
        continue_handshake(c);
        return;
    }
    if (c->state != S_OPEN) return;
    if (c->ssl) {
        /* A TLS read or write can wait for either direction: retry both. */
        if (c->woff < c->wlen) flush_lines(c);
        else if (events & EPOLLOUT) set_out_interest(c, 0);
        if (c->state == S_OPEN) read_replies(c);
        return;
    }
    if (events & EPOLLOUT) {
        if (opt.mode == M_BULK) pump_bulk(c);
        else flush_lines(c);
        if (c->state != S_OPEN) return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_replies(c);
}

/*
 * Closing a socket with unread replies makes the kernel send a RST, and the
 * server's handler would die with ECONNRESET: noise that hides real errors.
 * So half-close instead, let the handlers answer what is in flight and see
 * EOF, and read until the server closes (bounded in time).
 */
static void drain(conn_t *conns, int total) {
    int open = 0;
    for (int i = 0; i < total; i++) {
        conn_t *c = &conns[i];
        if (c->fd < 0) continue;
        if (c->ssl && c->state == S_OPEN) tls_close_notify(c->ssl);
        /* A silent connection has nothing in flight: it just goes. */
        if (c->silent || c->state != S_OPEN || shutdown(c->fd, SHUT_WR) < 0) {
            drop_conn(c, 0);
            continue;
        }
        set_out_interest(c, 0);
        open++;
    }
    struct epoll_event evs[MAX_EVENTS];
    char scratch[65536];
    double deadline = now() + 2.0;
    while (open > 0 && now() < deadline) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            for (;;) {
                ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
                if (r > 0) continue;
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                drop_conn(c, 0); /* EOF, or an error we no longer care about */
                open--;
                break;
            }
        }
    }
    for (int i = 0; i < total; i++)
        if (conns[i].fd >= 0) drop_conn(&conns[i], 0);
}

static void reopen_idle(conn_t *conns, int from, int to) {
    for (int i = from; i < to; i++)
        if (conns[i].state == S_IDLE && conns[i].fd < 0 && now_s >= conns[i].retry_at) open_conn(&conns[i]);
}

/* The silent connections go first, so that a server accepting in order
 * meets them before any measured client (bounded: a server whose backlog
 * is full leaves some unconnected, and the result says how many were up). */
static void connect_silent(conn_t *conns, int total) {
    struct epoll_event evs[MAX_EVENTS];
    double deadline = now() + 5.0;
    for (;;) {
        now_s = now();
        int up = 0;
        for (int i = opt.conns; i < total; i++) up += conns[i].state == S_OPEN;
        if (up == opt.silent || now_s >= deadline) {
            st.silent_open_at_start = up;
            if (up < opt.silent) fprintf(stderr, "loadgen: only %d of %d silent connections up\n", up, opt.silent);
            return;
        }
        reopen_idle(conns, opt.conns, total);
        int n = epoll_wait(epfd, evs, MAX_EVENTS, 10);
        now_s = now();
        for (int i = 0; i < n; i++) on_stream_event(evs[i].data.ptr, evs[i].events);
    }
}

static int run_stream(void) {
    int total = opt.conns + opt.silent;
    conn_t *conns = calloc((size_t)total, sizeof *conns);
    size_t line_bytes = (size_t)(opt.mode == M_PIPELINED ? opt.depth : 1) * opt.size;
    if (opt.mode == M_HTTP) line_bytes = HTTP_REQUEST_LEN;
    for (int i = 0; i < total; i++) {
        conns[i].fd = -1;
        conns[i].id = i;
        conns[i].silent = i >= opt.conns;
        conns[i].wbuf = malloc(line_bytes);
        conns[i].rcap = opt.mode == M_HTTP ? HTTP_MAX_RESPONSE : line_bytes * 2 + 4096;
        conns[i].rbuf = malloc(conns[i].rcap + 1);
    }
    connect_silent(conns, total);
    struct epoll_event evs[MAX_EVENTS];
    double start = now(), warm_end = start + opt.warmup, end = warm_end + opt.duration;
    now_s = start;
    measure_start = warm_end;
    while (now_s = now(), !run_over(end)) {
        measuring = now_s >= warm_end;
        reopen_idle(conns, 0, total);
        int n = epoll_wait(epfd, evs, MAX_EVENTS, 2);
        if (n < 0 && errno != EINTR) { ERROR("epoll_wait: %s", strerror(errno)); break; }
        now_s = now();
        measuring = now_s >= warm_end && now_s < end;
        for (int i = 0; i < n; i++) on_stream_event(evs[i].data.ptr, evs[i].events);
    }
    measure_end = now_s;
    drain(conns, total);
    return 0;
}

/* UDP: every slot has its own payload buffer, so that the datagrams queued
 * while one batch of replies is read go out in one sendmmsg(), and the
 * replies are read with recvmmsg(): one syscall per batch keeps the client
 * well above what a server on the other core can answer. */
#define UDP_BATCH 64
#define UDP_RBUF 65536 /* any datagram whole, so an oversized reply is seen as one */

typedef struct udp_queue {
    int ids[UDP_BATCH];
    int n;
} udp_queue_t;

static void udp_flush(int fd, udp_slot_t *slots, udp_queue_t *q, char *outs) {
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < q->n; i++) {
        iov[i].iov_base = outs + (size_t)q->ids[i] * (size_t)opt.size;
        iov[i].iov_len = (size_t)opt.size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int done = 0;
    while (done < q->n) {
        int k = sendmmsg(fd, msgs + done, (unsigned)(q->n - done), 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k < 0 && errno != EAGAIN && errno != ENOBUFS) ERROR("udp send: %s", strerror(errno));
            break;
        }
        for (int i = done; i < done + k; i++) {
            udp_slot_t *s = &slots[q->ids[i]];
            s->pending = 1;
            s->need_send = 0;
            s->t_sent = now_s;
        }
        done += k;
    }
    /* Not sent (full buffers): retried on the next turn of the loop. */
    for (int i = done; i < q->n; i++) {
        slots[q->ids[i]].pending = 0;
        slots[q->ids[i]].need_send = 1;
    }
    q->n = 0;
}

/* Queue slot id's next datagram; the queue never holds a slot twice, as a
 * slot is queued only when it has nothing pending. */
static void udp_queue(int fd, udp_slot_t *slots, udp_queue_t *q, char *outs, int id) {
    udp_slot_t *s = &slots[id];
    s->seq++;
    s->pending = 0;
    s->need_send = 0;
    fill_line(outs + (size_t)id * (size_t)opt.size, (uint32_t)id, s->seq, opt.size);
    q->ids[q->n++] = id;
    if (q->n == UDP_BATCH) udp_flush(fd, slots, q, outs);
}

/* The slot a reply answers, or NULL (a late or unrecognised reply). */
static udp_slot_t *udp_match(udp_slot_t *slots, const char *in, ssize_t r, int truncated, int *id_out) {
    uint64_t id = 0, seq = 0;
    udp_slot_t *s = NULL;
    if (opt.any_reply) {
        /* Without an echo the reply cannot name its request: credit the oldest one. */
        for (int i = 0; i < opt.depth; i++)
            if (slots[i].pending && (!s || slots[i].t_sent < s->t_sent)) { s = &slots[i]; id = (uint64_t)i; }
        if (!s && measuring) st.late++;
        *id_out = (int)id;
        return s;
    }
    if (r < HEADER_LEN || parse_hex(in, 8, &id) < 0 || parse_hex(in + 9, 16, &seq) < 0 ||
        id >= (uint64_t)opt.depth) {
        MISMATCH("udp: unrecognised datagram of %zd bytes '%.40s'", r, in);
        return NULL;
    }
    s = &slots[id];
    if (seq < s->seq || (seq == s->seq && !s->pending)) {
        if (measuring) st.late++;
        return NULL;
    }
    char expect[opt.size];
    fill_line(expect, (uint32_t)id, s->seq, opt.size);
    if (truncated || seq != s->seq || r != opt.size || memcmp(in, expect, (size_t)r) != 0) {
        MISMATCH("udp slot %llu seq %llu: got %zd bytes '%.40s'", (unsigned long long)id,
                 (unsigned long long)s->seq, r, in);
        return NULL;
    }
    *id_out = (int)id;
    return s;
}

static int run_udp(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&server_addr, server_addr_len) < 0) {
        fprintf(stderr, "loadgen: udp socket/connect: %s\n", strerror(errno));
        return 2;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    udp_slot_t *slots = calloc((size_t)opt.depth, sizeof *slots);
    char *outs = malloc((size_t)opt.depth * (size_t)opt.size);
    char *ins = malloc((size_t)UDP_BATCH * UDP_RBUF);
    struct mmsghdr rmsgs[UDP_BATCH];
    struct iovec riov[UDP_BATCH];
    udp_queue_t q = {.n = 0};
    if (!slots || !outs || !ins) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 2;
    }
    double timeout = opt.udp_timeout_ms / 1000.0;
    double start = now(), warm_end = start + opt.warmup, end = warm_end + opt.duration;
    now_s = start;
    measure_start = warm_end;
    for (int i = 0; i < opt.depth; i++) udp_queue(fd, slots, &q, outs, i);
    udp_flush(fd, slots, &q, outs);
    struct epoll_event evs[4];
    while (now_s = now(), !run_over(end)) {
        measuring = now_s >= warm_end;
        for (int i = 0; i < opt.depth; i++) {
            udp_slot_t *s = &slots[i];
            if (s->pending && now_s - s->t_sent > timeout) {
                if (measuring) st.lost++;
                udp_queue(fd, slots, &q, outs, i);
            } else if (s->need_send) {
                udp_queue(fd, slots, &q, outs, i);
            }
        }
        udp_flush(fd, slots, &q, outs);
        int n = epoll_wait(epfd, evs, 4, 2);
        if (n < 0 && errno != EINTR) { ERROR("epoll_wait: %s", strerror(errno)); break; }
        if (n <= 0) continue;
        for (;;) {
            memset(rmsgs, 0, sizeof rmsgs);
            for (int i = 0; i < UDP_BATCH; i++) {
                riov[i].iov_base = ins + (size_t)i * UDP_RBUF;
                riov[i].iov_len = UDP_RBUF;
                rmsgs[i].msg_hdr.msg_iov = &riov[i];
                rmsgs[i].msg_hdr.msg_iovlen = 1;
            }
            int got = recvmmsg(fd, rmsgs, UDP_BATCH, MSG_DONTWAIT, NULL);
            if (got < 0 && errno == EINTR) continue;
            if (got < 0 && errno == EAGAIN) break;
            if (got < 0) { ERROR("udp recv: %s", strerror(errno)); break; }
            now_s = now();
            measuring = now_s >= warm_end && now_s < end;
            for (int i = 0; i < got; i++) {
                const char *in = ins + (size_t)i * UDP_RBUF;
                ssize_t r = (ssize_t)rmsgs[i].msg_len;
                int id;
                udp_slot_t *s = udp_match(slots, in, r, rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC, &id);
                if (!s) continue;
                record_latency(now_s - s->t_sent);
                if (measuring) { st.count++; st.bytes += (uint64_t)r; }
                udp_queue(fd, slots, &q, outs, id);
            }
            udp_flush(fd, slots, &q, outs);
        }
    }
    measure_end = now_s;
    /* Collect the answers still in flight, so the server is idle by the time
     * it is told to stop (a handler thread replying on a socket that is being
     * closed would print a traceback that is the harness's fault). */
    double deadline = now() + 0.5;
    char in[UDP_RBUF];
    for (;;) {
        int pending = 0;
        for (int i = 0; i < opt.depth; i++) pending += slots[i].pending;
        if (!pending || now() >= deadline) break;
        if (epoll_wait(epfd, evs, 4, 10) <= 0) continue;
        ssize_t r;
        while ((r = recv(fd, in, sizeof in, 0)) >= 0 || errno == EINTR) {
            uint64_t id;
            if (r >= HEADER_LEN && parse_hex(in, 8, &id) == 0 && id < (uint64_t)opt.depth) slots[id].pending = 0;
            else if (opt.any_reply) for (int i = 0; i < opt.depth; i++) if (slots[i].pending) { slots[i].pending = 0; break; }
        }
    }
    close(fd);
    free(ins);
    free(outs);
    free(slots);
    return 0;
}

static int resolve(void) {
    memset(&server_addr, 0, sizeof server_addr);
    if (opt.mode == M_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&server_addr;
        if (!opt.path || strlen(opt.path) >= sizeof un->sun_path) {
            fprintf(stderr, "loadgen: unix mode needs --path (shorter than %zu bytes)\n", sizeof un->sun_path);
            return -1;
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, opt.path);
        server_addr_len = sizeof *un;
        return 0;
    }
    struct sockaddr_in *in = (struct sockaddr_in *)&server_addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &in->sin_addr) != 1 || opt.port <= 0 || opt.port > 65535) {
        fprintf(stderr, "loadgen: need an IPv4 --host and a --port\n");
        return -1;
    }
    /* Load is only ever aimed at this machine. */
    if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: refusing non-loopback target %s\n", opt.host);
        return -1;
    }
    server_addr_len = sizeof *in;
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode pingpong|pipelined|perconn|udp|unix|bulk|http [--host 127.0.0.1 --port N | --path SOCK]\n"
            "               [--conns N] [--depth K] [--size BYTES] [--chunk BYTES] [--window BYTES]\n"
            "               [--duration S] [--warmup S] [--udp-timeout-ms MS] [--any-reply] [--cpu N]\n"
            "               [--tls] [--silent N]   (--tls: pingpong, pipelined, perconn, unix, http)\n"
            "               [--requests N]   (end once N are answered, bulk: N bytes; --duration caps it)\n");
}

static void print_result(double measured) {
    int latency = opt.mode != M_PIPELINED && opt.mode != M_BULK;
    char p50[32] = "null", p99[32] = "null", pmax[32] = "null";
    if (latency && hist_n) {
        snprintf(p50, sizeof p50, "%.0f", percentile(0.50));
        snprintf(p99, sizeof p99, "%.0f", percentile(0.99));
        snprintf(pmax, sizeof pmax, "%llu", (unsigned long long)hist_max);
    }
    double rate = measured > 0 ? st.count / measured : 0;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"depth\": %d, \"size\": %d, \"chunk\": %d, "
           "\"duration\": %.3f, \"warmup\": %.3f, \"count\": %llu, \"rate\": %.1f, \"unit\": \"%s\", "
           "\"bytes\": %llu, \"errors\": %llu, \"mismatches\": %llu, \"lost\": %llu, \"late\": %llu, "
           "\"connects\": %llu, \"closed_by_server\": %llu, \"p50_us\": %s, \"p99_us\": %s, \"max_us\": %s, \"verified\": %s, "
           "\"valid\": %s, \"first_error\": \"%s\", \"first_mismatch\": \"%s\", ",
           mode_names[opt.mode], opt.conns, opt.depth, opt.size, opt.chunk, measured, opt.warmup,
           (unsigned long long)st.count, rate, opt.mode == M_BULK ? "bytes/s" : "req/s",
           (unsigned long long)st.bytes, (unsigned long long)st.errors, (unsigned long long)st.mismatches,
           (unsigned long long)st.lost, (unsigned long long)st.late, (unsigned long long)st.connects,
           (unsigned long long)st.closed_by_server, p50, p99,
           pmax, opt.any_reply ? "false" : "true", st.mismatches ? "false" : "true", st.first_error,
           st.first_mismatch);
    printf("\"tls\": %s, \"tls_version\": \"%s\", \"tls_cipher\": \"%s\", \"silent\": %d, "
           "\"silent_open_at_start\": %d, \"silent_closed\": %llu}\n",
           opt.tls ? "true" : "false", st.tls_version, st.tls_cipher, opt.silent, st.silent_open_at_start,
           (unsigned long long)st.silent_closed);
    fflush(stdout);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"mode", 1, 0, 'm'},    {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},     {"path", 1, 0, 'P'},
        {"conns", 1, 0, 'c'},   {"depth", 1, 0, 'k'},    {"size", 1, 0, 's'},     {"chunk", 1, 0, 'C'},
        {"window", 1, 0, 'w'},  {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'W'},   {"udp-timeout-ms", 1, 0, 't'},
        {"any-reply", 0, 0, 'a'}, {"cpu", 1, 0, 'u'},    {"tls", 0, 0, 'T'},      {"silent", 1, 0, 'S'},
        {"requests", 1, 0, 'R'}, {"help", 0, 0, '?'},    {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm': {
            int found = 0;
            for (int i = 0; i < N_MODES; i++)
                if (strcmp(optarg, mode_names[i]) == 0) { opt.mode = (enum mode)i; found = 1; }
            if (!found) { usage(); return 2; }
            break;
        }
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'P': opt.path = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'k': opt.depth = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'C': opt.chunk = atoi(optarg); break;
        case 'w': opt.window = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'W': opt.warmup = atof(optarg); break;
        case 't': opt.udp_timeout_ms = atoi(optarg); break;
        case 'a': opt.any_reply = 1; break;
        case 'u': opt.cpu = atoi(optarg); break;
        case 'T': opt.tls = 1; break;
        case 'S': opt.silent = atoi(optarg); break;
        case 'R': opt.requests = atoll(optarg); break;
        default: usage(); return 2;
        }
    }
    if (opt.conns <= 0) opt.conns = opt.mode == M_PERCONN ? 16 : opt.mode == M_BULK ? 4 : 100;
    if (opt.depth <= 0) opt.depth = opt.mode == M_UDP ? 64 : opt.mode == M_PIPELINED ? 16 : 1;
    if (opt.window <= 0) opt.window = 4 * opt.chunk;
    if (opt.size < HEADER_LEN + 2 || opt.size > 8192 || opt.chunk < 1 || opt.chunk > (1 << 22) ||
        opt.window < opt.chunk || opt.duration <= 0 || opt.duration > 3600 || opt.warmup < 0 ||
        opt.warmup > 600 || opt.conns > 10000 || opt.depth > 100000 || opt.silent < 0 || opt.silent > 10000 || opt.requests < 0 ||
        ((opt.tls || opt.silent) && (opt.mode == M_UDP || opt.mode == M_BULK))) {
        usage();
        return 2;
    }
    if (opt.tls) {
        char why[200];
        if (tls_client_init(why, sizeof why) < 0) {
            fprintf(stderr, "loadgen: TLS: %s\n", why);
            return 2;
        }
    }
    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) fprintf(stderr, "loadgen: cannot pin to cpu %d\n", opt.cpu);
    }
    signal(SIGPIPE, SIG_IGN);
    if (resolve() < 0) return 2;
    if (opt.mode == M_BULK) {
        pattern = malloc(PATTERN_LEN + (size_t)opt.chunk);
        uint32_t x = 2463534242u;
        for (size_t i = 0; i < PATTERN_LEN; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            pattern[i] = (char)(x >> 24);
        }
        /* Periodic extension, so any chunk-sized read at any index needs no wrap-around.
         * Byte by byte: the chunk can be longer than the period, so the ranges overlap. */
        for (size_t i = PATTERN_LEN; i < PATTERN_LEN + (size_t)opt.chunk; i++) pattern[i] = pattern[i - PATTERN_LEN];
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int rc = opt.mode == M_UDP ? run_udp() : run_stream();
    print_result(measure_end > measure_start ? measure_end - measure_start : 0);
    return rc;
}
