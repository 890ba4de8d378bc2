/*
 * The C servers the Python ones are compared against.
 *
 * c-reference, the ceiling: a single-threaded, non-blocking epoll echo
 * server.  Stream sockets (TCP or AF_UNIX) echo bytes as they arrive, which is
 * exactly what a line echo does to a stream; UDP echoes each datagram to its
 * sender, in recvmmsg()/sendmmsg() batches.  With --http, a TCP connection
 * gets one fixed HTTP/1.1 response (the bench's 64-byte body) for every
 * request head it sends, in one send().
 *
 * c-threaded (--threaded lines|chunks, stream sockets only): the model of
 * ThreadingTCPServer without an interpreter, to show what that model itself
 * costs.  The main thread accepts; each connection gets a detached thread
 * doing blocking recv()/send() until EOF.  "lines" sends the way LineEcho's
 * `for line in rfile: wfile.write(line)` does: recv() up to 8192 bytes (the
 * size of rfile's buffer), then one send() per complete line.  "chunks" sends
 * whatever each recv() returned in one send(), as BulkEcho and
 * CoalescingLineEcho do.  It answers SIGUSR1 with "USAGE <voluntary>
 * <involuntary>" (getrusage) as the Python servers do: its threads end with
 * their connections, and /proc forgets them.
 *
 * Either binds the first free port in [--port-lo, --port-hi] and prints
 * "READY c-reference <address>" (or "READY c-threaded ...") once it is
 * listening; SIGTERM/SIGINT stop it cleanly.  --cpu pins the whole process,
 * every thread included.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE 65536

typedef struct conn {
    int fd;
    size_t len, off; /* unsent bytes are buf[off, len) */
    int matched;     /* --http: how much of the "\r\n\r\n" ending a request head was read last */
    char buf[BUF_SIZE];
} conn_t;

/* Must be byte for byte HTTP_BODY in bench/handlers.py and loadgen.c. */
#define HTTP_BODY "fastserver http-keepalive bench reply: 64 bytes of body, done!!\n"
static const char HTTP_RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" HTTP_BODY;
_Static_assert(sizeof HTTP_BODY - 1 == 64, "Content-Length above must match HTTP_BODY");
#define HTTP_RESPONSE_LEN (sizeof HTTP_RESPONSE - 1)
/* Each 4 bytes read can end one request head: reads this small can never need
 * more than BUF_SIZE of responses. */
#define HTTP_READ 1024
_Static_assert(HTTP_READ / 4 * HTTP_RESPONSE_LEN <= BUF_SIZE, "HTTP_READ too large for BUF_SIZE");

static volatile sig_atomic_t stopping;
static int listen_fd, epfd, http_mode;
static conn_t listener_tag;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void close_conn(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static void set_events(conn_t *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Returns 0 when everything pending was written, 1 if the socket is full, -1 on error. */
static int flush_conn(conn_t *c) {
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n > 0) { c->off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 1;
        return -1;
    }
    c->off = c->len = 0;
    return 0;
}

/* Queues one response per request head completed by in[0, n); the bench's GETs have no body. */
static size_t answer_http(conn_t *c, const char *in, size_t n) {
    static const char blank[] = "\r\n\r\n";
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        c->matched = in[i] == blank[c->matched] ? c->matched + 1 : in[i] == '\r' ? 1 : 0;
        if (c->matched == 4) {
            memcpy(c->buf + out, HTTP_RESPONSE, HTTP_RESPONSE_LEN);
            out += HTTP_RESPONSE_LEN;
            c->matched = 0;
        }
    }
    return out;
}

static void on_stream(conn_t *c, unsigned events) {
    if (c->len) { /* waiting for room to write: reading more would only grow the backlog */
        int r = flush_conn(c);
        if (r < 0) { close_conn(c); return; }
        if (r > 0) return;
        set_events(c, EPOLLIN);
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char in[HTTP_READ];
    for (;;) {
        ssize_t n = http_mode ? recv(c->fd, in, sizeof in, 0) : recv(c->fd, c->buf, BUF_SIZE, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { close_conn(c); return; }
        c->len = http_mode ? answer_http(c, in, (size_t)n) : (size_t)n;
        c->off = 0;
        int r = flush_conn(c);
        if (r < 0) { close_conn(c); return; }
        if (r > 0) { set_events(c, EPOLLOUT); return; }
    }
}

static void on_accept(int is_tcp) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or EMFILE: the client will see the failure */
        }
        if (is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        conn_t *c = malloc(sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        c->len = c->off = 0;
        c->matched = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

/* UDP: read every queued datagram in recvmmsg() batches and echo each batch
 * with one sendmmsg(), the cheapest way a C server has to answer datagrams
 * one by one; anything less would not be a ceiling. */
#define UDP_BATCH 64
static void on_datagrams(void) {
    static char bufs[UDP_BATCH][BUF_SIZE];
    static struct sockaddr_storage peers[UDP_BATCH];
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    for (;;) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < UDP_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = BUF_SIZE;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(listen_fd, msgs, UDP_BATCH, 0, NULL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
        /* A full send buffer drops the rest of the batch; the client counts
         * those as lost. */
        for (int done = 0; done < n;) {
            int k = sendmmsg(listen_fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            done += k;
        }
    }
}

/* --threaded: one thread per connection, blocking I/O. */
enum { THREADED_OFF, THREADED_LINES, THREADED_CHUNKS };
static int threaded;
static volatile sig_atomic_t usage_wanted;
/* io.BufferedReader's default buffer: the most a Python rfile asks recv() for. */
#define LINE_BUF 8192

static void on_usage(int sig) { (void)sig; usage_wanted = 1; }

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* LineEcho: readline() from a buffer filled by recv(), and a write() (one
 * send()) per line.  A buffer full of one unended line goes out as is: the
 * bytes echoed are the same, and the bench never sends such a line. */
static void serve_lines(int fd) {
    char buf[LINE_BUF];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return;
        if (n == 0) { /* the last line may lack its '\n': iterating rfile still yields it */
            send_all(fd, buf, len);
            return;
        }
        len += (size_t)n;
        char *start = buf, *end = buf + len, *nl;
        while ((nl = memchr(start, '\n', (size_t)(end - start))) != NULL) {
            if (send_all(fd, start, (size_t)(nl + 1 - start)) < 0) return;
            start = nl + 1;
        }
        if (start == buf && len == sizeof buf) {
            if (send_all(fd, buf, len) < 0) return;
            start = end;
        }
        len = (size_t)(end - start);
        memmove(buf, start, len);
    }
}

/* BulkEcho and CoalescingLineEcho: what one recv() returned, in one write. */
static void serve_chunks(int fd) {
    char buf[BUF_SIZE];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || send_all(fd, buf, (size_t)n) < 0) return;
    }
}

static void *serve_connection(void *arg) {
    int fd = (int)(intptr_t)arg;
    if (threaded == THREADED_LINES) serve_lines(fd);
    else serve_chunks(fd);
    close(fd);
    return NULL;
}

static void report_usage(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* every thread, the ended ones included */
    printf("USAGE %ld %ld\n", ru.ru_nvcsw, ru.ru_nivcsw);
    fflush(stdout);
}

/* The accept loop.  SIGTERM, SIGINT and SIGUSR1 stay blocked everywhere but
 * in ppoll() (threads inherit the mask), so none is lost between the checks
 * and the wait, and none interrupts a connection's thread. */
static void serve_threaded(int is_tcp) {
    sigset_t handled, open_mask;
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &handled, &open_mask);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    struct pollfd listener = {.fd = listen_fd, .events = POLLIN};
    for (;;) {
        if (usage_wanted) { usage_wanted = 0; report_usage(); }
        if (stopping) break;
        if (ppoll(&listener, 1, NULL, &open_mask) <= 0) continue; /* EINTR: a signal to look at */
        for (;;) { /* the listener is non-blocking: take every pending connection */
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC); /* no SOCK_NONBLOCK: blocking I/O */
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                break; /* EAGAIN, or EMFILE: the client will see the failure */
            }
            if (is_tcp) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            pthread_t thread;
            if (pthread_create(&thread, &attr, serve_connection, (void *)(intptr_t)fd) != 0) close(fd);
        }
    }
    pthread_attr_destroy(&attr);
}

static int bind_inet(int type, const char *host, int lo, int hi, int *port_out) {
    for (int port = lo; port <= hi; port++) {
        int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (type == SOCK_STREAM) {
            /* Never on UDP: there SO_REUSEADDR would let us share a port another process uses. */
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        }
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { close(fd); return -1; }
        if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0) { *port_out = port; return fd; }
        close(fd);
        if (errno != EADDRINUSE && errno != EACCES) return -1;
    }
    errno = EADDRINUSE;
    return -1;
}

int main(int argc, char **argv) {
    static struct option longopts[] = {{"tcp", 1, 0, 't'},     {"udp", 1, 0, 'u'},     {"unix", 1, 0, 'x'},
                                       {"port-lo", 1, 0, 'l'}, {"port-hi", 1, 0, 'h'}, {"cpu", 1, 0, 'c'},
                                       {"http", 0, 0, 'H'},    {"threaded", 1, 0, 'T'}, {0, 0, 0, 0}};
    const char *tcp = NULL, *udp = NULL, *unix_path = NULL;
    int lo = 20000, hi = 30000, cpu = -1, ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 't': tcp = optarg; break;
        case 'u': udp = optarg; break;
        case 'x': unix_path = optarg; break;
        case 'l': lo = atoi(optarg); break;
        case 'h': hi = atoi(optarg); break;
        case 'c': cpu = atoi(optarg); break;
        case 'H': http_mode = 1; break;
        case 'T':
            threaded = !strcmp(optarg, "lines") ? THREADED_LINES : !strcmp(optarg, "chunks") ? THREADED_CHUNKS : -1;
            if (threaded > 0) break;
            fprintf(stderr, "echo_ref: --threaded takes lines or chunks, not %s\n", optarg);
            return 2;
        default:
            fprintf(stderr, "usage: echo_ref (--tcp HOST [--http | --threaded lines|chunks] | --udp HOST"
                            " | --unix PATH [--threaded lines|chunks]) [--port-lo N --port-hi N] [--cpu N]\n");
            return 2;
        }
    }
    if (!!tcp + !!udp + !!unix_path != 1) {
        fprintf(stderr, "echo_ref: give exactly one of --tcp, --udp, --unix\n");
        return 2;
    }
    if (http_mode && !tcp) {
        fprintf(stderr, "echo_ref: --http goes with --tcp\n");
        return 2;
    }
    if (threaded && (udp || http_mode)) {
        fprintf(stderr, "echo_ref: --threaded serves stream sockets (--tcp or --unix) with echo only: no --udp, no --http\n");
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct sigaction usage_sa = {.sa_handler = on_usage};
    if (threaded) sigaction(SIGUSR1, &usage_sa, NULL);

    char where[200];
    int port = 0;
    if (unix_path) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof a.sun_path) { fprintf(stderr, "echo_ref: path too long\n"); return 2; }
        strcpy(a.sun_path, unix_path);
        unlink(unix_path);
        listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("echo_ref: bind");
            return 1;
        }
        snprintf(where, sizeof where, "unix %s", unix_path);
    } else {
        const char *host = tcp ? tcp : udp;
        listen_fd = bind_inet(tcp ? SOCK_STREAM : SOCK_DGRAM, host, lo, hi, &port);
        if (listen_fd < 0) { perror("echo_ref: bind"); return 1; }
        snprintf(where, sizeof where, "%s %s %d", tcp ? "tcp" : "udp", host, port);
    }
    if (!udp && listen(listen_fd, 1024) < 0) { perror("echo_ref: listen"); return 1; }
    if (threaded) {
        printf("READY c-threaded %s\n", where);
        fflush(stdout);
        serve_threaded(tcp != NULL);
        if (unix_path) unlink(unix_path);
        return 0;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    printf("READY c-reference %s\n", where);
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(epfd, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == &listener_tag) {
                if (udp) on_datagrams();
                else on_accept(tcp != NULL);
            } else {
                on_stream(c, evs[i].events);
            }
        }
    }
    if (unix_path) unlink(unix_path);
    return 0;
}
