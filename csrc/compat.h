/* fastserver platform shims: nothing here knows about Python.
 *
 * Every function has the same contract as the Linux syscall it stands in for
 * (return value and errno), so the Cython core calls them without #ifdefs:
 *
 *   fs_accept4(fd, addr, len, cloexec)   accept4(..., SOCK_CLOEXEC) or
 *                                        accept() + FD_CLOEXEC
 *   fs_recvmmsg(fd, vec, vlen, flags)    recvmmsg(); elsewhere a recvmsg()
 *                                        loop honouring FS_MSG_WAITFORONE
 *   fs_sendmmsg(fd, vec, vlen, flags)    sendmmsg(); elsewhere a sendmsg() loop
 *   fs_waker_open(int fds[2])            eventfd (fds[0] == fds[1]) or a
 *                                        non-blocking, close-on-exec pipe
 *   fs_waker_signal(fd) / fs_waker_drain(fd)
 *   fs_monotonic_ns()                    CLOCK_MONOTONIC, as time.monotonic()
 *   FS_IS_EAGAIN(e)                      EAGAIN or EWOULDBLOCK
 */
#ifndef FASTSERVER_COMPAT_H
#define FASTSERVER_COMPAT_H

#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#if defined(__linux__)
#define FS_HAVE_ACCEPT4 1
#define FS_HAVE_MMSG 1
#define FS_HAVE_EVENTFD 1
#include <sys/eventfd.h>
#else
#define FS_HAVE_ACCEPT4 0
#define FS_HAVE_MMSG 0
#define FS_HAVE_EVENTFD 0
#endif

#if FS_HAVE_MMSG
#define FS_MSG_WAITFORONE MSG_WAITFORONE
typedef struct mmsghdr fs_mmsghdr;
#else
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

/* accept() whose new descriptor is close-on-exec (non-inheritable). */
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

static inline int fs_recvmmsg(int fd, fs_mmsghdr *vec, unsigned int vlen, int flags)
{
#if FS_HAVE_MMSG
    return recvmmsg(fd, vec, vlen, flags, NULL);
#else
    unsigned int i;
    int waitforone = flags & FS_MSG_WAITFORONE;
    flags &= ~FS_MSG_WAITFORONE;
    for (i = 0; i < vlen; i++) {
        ssize_t n = recvmsg(fd, &vec[i].msg_hdr, flags);
        if (n < 0) {
            if (i > 0)
                return (int)i;      /* errno is reported by the next call */
            return -1;
        }
        vec[i].msg_len = (unsigned int)n;
        if (waitforone)
            flags |= MSG_DONTWAIT;
    }
    return (int)vlen;
#endif
}

static inline int fs_sendmmsg(int fd, fs_mmsghdr *vec, unsigned int vlen, int flags)
{
#if FS_HAVE_MMSG
    return sendmmsg(fd, vec, vlen, flags);
#else
    unsigned int i;
    for (i = 0; i < vlen; i++) {
        ssize_t n = sendmsg(fd, &vec[i].msg_hdr, flags);
        if (n < 0)
            return i > 0 ? (int)i : -1;
        vec[i].msg_len = (unsigned int)n;
    }
    return (int)vlen;
#endif
}

/* A wake-up descriptor pair: fds[0] is polled for POLLIN, fds[1] signalled.
 * Both are non-blocking and close-on-exec; with eventfd they are equal. */
static inline int fs_waker_open(int fds[2])
{
#if FS_HAVE_EVENTFD
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd >= 0) {
        fds[0] = fds[1] = efd;
        return 0;
    }
#endif
    if (pipe(fds) < 0)
        return -1;
    if (fs_set_nonblock(fds[0]) < 0 || fs_set_nonblock(fds[1]) < 0 ||
            fs_set_cloexec(fds[0]) < 0 || fs_set_cloexec(fds[1]) < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    return 0;
}

/* Never blocks; EAGAIN means a wake-up is already pending. */
static inline int fs_waker_signal(int fd)
{
    uint64_t one = 1;   /* eventfd needs 8 bytes; a pipe takes them too */
    ssize_t n = write(fd, &one, sizeof(one));
    return n < 0 ? -1 : 0;
}

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

#endif /* FASTSERVER_COMPAT_H */
