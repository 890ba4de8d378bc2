/* fastserver platform shims: nothing here knows about Python.
 *
 * Every function has the same contract as the Linux call it stands in for
 * (return value and errno), so the Cython core calls them without #ifdefs.
 * On Linux they are the Linux calls. Elsewhere (macOS, the BSDs), and on
 * Linux when FS_PORTABLE is defined (setup.py's FASTSERVER_PORTABLE=1, the
 * way these fallbacks are built and tested on Linux), they are POSIX:
 *
 *   fs_accept_cloexec(fd, addr, len)     accept4(..., SOCK_CLOEXEC); else
 *                                        accept() + FD_CLOEXEC (a fork race:
 *                                        see the function)
 *   fs_recvmmsg(fd, vec, vlen, flags)    recvmmsg(); else a recvmsg() loop
 *                                        honouring FS_MSG_WAITFORONE
 *   fs_waker_open(int fds[2])            eventfd (fds[0] == fds[1]); else a
 *                                        non-blocking, close-on-exec pipe
 *   fs_waker_signal(fd) / fs_waker_drain(fd)
 *   fs_monotonic_ns()                    CLOCK_MONOTONIC, as time.monotonic()
 *   FS_IS_EAGAIN(e)                      EAGAIN or EWOULDBLOCK
 *   FS_HAVE_ABSTRACT_UNIX                1 where the kernel has the AF_UNIX
 *                                        abstract namespace (Linux): see below
 *
 * Besides these, the core (fastserver/includes/system.pxd) uses POSIX names
 * only, plus one BSD-sockets extension that every target has: MSG_DONTWAIT
 * (Linux, macOS, FreeBSD, NetBSD, OpenBSD, DragonFly, illumos). It never
 * uses MSG_NOSIGNAL (not on macOS): CPython ignores SIGPIPE, and the core
 * sends as socketmodule.c does.
 *
 * Under FS_PORTABLE the Linux-only names are poisoned at the end of this
 * file, so that any use of them in the core, past these shims, fails to
 * compile on Linux as it would on macOS.
 */
#ifndef FASTSERVER_COMPAT_H
#define FASTSERVER_COMPAT_H

/* (Python.h, included first, defines _GNU_SOURCE on Linux anyway: the
 * poisoning below is what hides the Linux names under FS_PORTABLE.) */
#if defined(__linux__) && !defined(FS_PORTABLE) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#if defined(__linux__) && !defined(FS_PORTABLE)
#define FS_HAVE_ACCEPT4 1
#define FS_HAVE_MMSG 1
#define FS_HAVE_EVENTFD 1
#include <sys/eventfd.h>
#else
#define FS_HAVE_ACCEPT4 0
#define FS_HAVE_MMSG 0
#define FS_HAVE_EVENTFD 0
#endif

/* A property of the kernel, not a call with a fallback, so FS_PORTABLE
 * leaves it alone: on Linux a peer address whose sun_path starts with a NUL
 * is an abstract name (socketmodule.c returns it as bytes). Elsewhere an
 * unbound peer comes back as a zero-filled sun_path of non-zero length (the
 * BSDs' "sun_noname"), which socketmodule.c formats as "". */
#if defined(__linux__)
#define FS_HAVE_ABSTRACT_UNIX 1
#else
#define FS_HAVE_ABSTRACT_UNIX 0
#endif

#ifndef MSG_DONTWAIT
#error "fastserver needs MSG_DONTWAIT (a BSD sockets extension every supported system has)"
#endif

#if FS_HAVE_MMSG
#define FS_MSG_WAITFORONE MSG_WAITFORONE
typedef struct mmsghdr fs_mmsghdr;
#else
/* Only ever passed to fs_recvmmsg, which takes it out of the flags before
 * calling recvmsg(); Linux's value, not a flag of any recvmsg() we call. */
#define FS_MSG_WAITFORONE 0x10000
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} fs_mmsghdr;
#endif

/* EAGAIN and EWOULDBLOCK are equal on Linux, distinct on some systems. */
#define FS_IS_EAGAIN(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

static inline int fs_set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    return fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

static inline int fs_set_nonblock(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* accept() whose new descriptor is close-on-exec (non-inheritable).
 *
 * The fallback (accept(), then FD_CLOEXEC) leaves a window between the two
 * calls: if another thread forks and execs in it, the child inherits the
 * connection. CPython's own socket.accept() has the same window where it has
 * no accept4() (macOS). The fallback also keeps what the system's accept()
 * does with file status flags: on macOS and the BSDs the new descriptor
 * inherits O_NONBLOCK from the listening one (Linux's never does); the
 * caller handles that as socket.accept() does. */
static inline int fs_accept_cloexec(int fd, struct sockaddr *addr, socklen_t *len)
{
    int cfd;
#if FS_HAVE_ACCEPT4
    cfd = accept4(fd, addr, len, SOCK_CLOEXEC);
    if (cfd >= 0 || (errno != ENOSYS && errno != EINVAL))
        return cfd;
#endif
    cfd = accept(fd, addr, len);
    if (cfd >= 0 && fs_set_cloexec(cfd) < 0) {
        int saved = errno;
        close(cfd);
        errno = saved;
        return -1;
    }
    return cfd;
}

#if !FS_HAVE_MMSG
/* The error that fs_recvmmsg's fallback took off a socket after it had
 * already received datagrams, kept for the next fs_recvmmsg() on that
 * descriptor: fd << 32 | errno, 0 when there is none. One slot for the
 * module: a second deferral, on another descriptor, before the first is
 * collected replaces it; and a descriptor closed and reused in between
 * inherits it. Both need an error mid-batch, which is rare already. */
static uint64_t fs_recvmmsg_deferred;

static inline uint64_t fs_deferred_pack(int fd, int err)
{
    return ((uint64_t)(uint32_t)fd << 32) | (uint32_t)err;
}
#endif

/* recvmmsg(fd, vec, vlen, flags, NULL).
 *
 * The fallback receives one datagram per recvmsg(). With FS_MSG_WAITFORONE
 * only the first one may block (the others are taken with MSG_DONTWAIT), as
 * on Linux. An error after the first datagram ends the batch, which is
 * returned; the error itself is reported by the next call on the same
 * descriptor, as Linux does (it puts the error back on the socket). The
 * fallback cannot put it back: recvmsg() has consumed it (on macOS and the
 * BSDs a pending ICMP error on a connected socket is reported once the
 * queue is empty, i.e. exactly where a batch ends), so it keeps it in
 * fs_recvmmsg_deferred. EAGAIN is the normal end of a batch and EINTR a
 * retry, not errors to report. Unlike Linux, SO_ERROR does not see a
 * deferred error. */
static inline int fs_recvmmsg(int fd, fs_mmsghdr *vec, unsigned int vlen, int flags)
{
#if FS_HAVE_MMSG
    return recvmmsg(fd, vec, vlen, flags, NULL);
#else
    unsigned int i;
    int waitforone = flags & FS_MSG_WAITFORONE;
    uint64_t deferred = __atomic_load_n(&fs_recvmmsg_deferred, __ATOMIC_ACQUIRE);
    if (deferred != 0 && (int)(deferred >> 32) == fd &&
            __atomic_compare_exchange_n(&fs_recvmmsg_deferred, &deferred, 0, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        errno = (int)(uint32_t)deferred;
        return -1;
    }
    flags &= ~FS_MSG_WAITFORONE;
    for (i = 0; i < vlen; i++) {
        ssize_t n = recvmsg(fd, &vec[i].msg_hdr, flags);
        if (n < 0) {
            int err = errno;
            if (i == 0)
                return -1;
            if (!FS_IS_EAGAIN(err) && err != EINTR)
                __atomic_store_n(&fs_recvmmsg_deferred,
                                 fs_deferred_pack(fd, err), __ATOMIC_RELEASE);
            return (int)i;
        }
        vec[i].msg_len = (unsigned int)n;
        if (waitforone)
            flags |= MSG_DONTWAIT;
    }
    return (int)vlen;
#endif
}

/* A wake-up descriptor pair: fds[0] is polled for POLLIN, fds[1] signalled.
 * Both are non-blocking and close-on-exec; with eventfd they are equal.
 *
 * The pipe fallback sets FD_CLOEXEC after pipe() (macOS has no pipe2()),
 * with the same fork window as fs_accept_cloexec. On failure errno is
 * pipe()'s or fcntl()'s, no descriptor is left open, and both fds are -1. */
static inline int fs_waker_open(int fds[2])
{
    int p[2];
#if FS_HAVE_EVENTFD
    int efd;
#endif
    fds[0] = fds[1] = -1;
#if FS_HAVE_EVENTFD
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd >= 0) {
        fds[0] = fds[1] = efd;
        return 0;
    }
#endif
    if (pipe(p) < 0)
        return -1;
    if (fs_set_cloexec(p[0]) < 0 || fs_set_cloexec(p[1]) < 0 ||
            fs_set_nonblock(p[0]) < 0 || fs_set_nonblock(p[1]) < 0) {
        int saved = errno;
        close(p[0]);
        close(p[1]);
        errno = saved;
        return -1;
    }
    fds[0] = p[0];
    fds[1] = p[1];
    return 0;
}

/* Never blocks; EAGAIN means a wake-up is already pending (a full pipe, or
 * an eventfd counter at its maximum). Eight bytes: an eventfd takes no
 * fewer, and a pipe writes them atomically (PIPE_BUF >= 512). */
static inline int fs_waker_signal(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof(one));
    return n < 0 ? -1 : 0;
}

/* Takes every pending wake-up: an eventfd in one read, a pipe until EAGAIN. */
static inline void fs_waker_drain(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

static inline int64_t fs_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#if defined(FS_PORTABLE)
/* Hide what macOS or the BSDs lack, now that the shims above are defined
 * and the headers that declare these names are in: a later use of any of
 * them is a compile error. The #undef first: poisoning a defined macro only
 * warns. (A macro that other headers define in terms of one of these, and
 * that was defined before this point, would still expand; none does.) */
#undef SOCK_CLOEXEC
#undef SOCK_NONBLOCK
#undef MSG_WAITFORONE
#undef MSG_NOSIGNAL
#undef MSG_MORE
#undef MSG_CONFIRM
#undef MSG_FASTOPEN
#undef MSG_ZEROCOPY
#undef MSG_CMSG_CLOEXEC
#undef MSG_ERRQUEUE
#undef POLLRDHUP
#undef AF_NETLINK
#undef AF_PACKET
#undef SO_PEERCRED
#undef TCP_CORK
#undef TCP_QUICKACK
#undef TCP_DEFER_ACCEPT
#undef TCP_USER_TIMEOUT
#pragma GCC poison accept4 recvmmsg sendmmsg mmsghdr pipe2 dup3
#pragma GCC poison eventfd eventfd_read eventfd_write
#pragma GCC poison epoll_create epoll_create1 epoll_ctl epoll_wait
#pragma GCC poison SOCK_CLOEXEC SOCK_NONBLOCK MSG_WAITFORONE MSG_NOSIGNAL
#pragma GCC poison MSG_MORE MSG_CONFIRM MSG_FASTOPEN MSG_ZEROCOPY
#pragma GCC poison MSG_CMSG_CLOEXEC MSG_ERRQUEUE POLLRDHUP
#pragma GCC poison AF_NETLINK AF_PACKET SO_PEERCRED
#pragma GCC poison TCP_CORK TCP_QUICKACK TCP_DEFER_ACCEPT TCP_USER_TIMEOUT
#endif

#endif /* FASTSERVER_COMPAT_H */
