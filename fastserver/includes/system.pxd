# Every POSIX declaration the Cython core uses, grouped by header.
#
# Only the struct fields the core reads or writes are listed. Platform
# differences live in csrc/compat.h, never here: every name below is POSIX,
# except MSG_DONTWAIT (a BSD sockets extension that Linux, macOS and the BSDs
# all have). A Linux-only call or constant (accept4, recvmmsg, eventfd,
# SOCK_CLOEXEC, MSG_NOSIGNAL, POLLRDHUP, ...) goes through compat.h, with a
# fallback; a build with FASTSERVER_PORTABLE=1 poisons those names, so a use
# of one here or in _cy/*.pxi fails to compile.
#
# Types and field types are declared close enough for Cython, which emits the
# C names: the C headers decide (sa_family_t is 8 bits on the BSDs, where
# sockaddr also has an sa_len first; msg_iovlen is an int there; nfds_t an
# unsigned int on macOS).

from libc.stdint cimport int64_t, uint16_t, uint32_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN


cdef extern from "<string.h>" nogil:
    void *memchr(const void *s, int c, size_t n)
    void *memcpy(void *dest, const void *src, size_t n)
    void *memset(void *s, int c, size_t n)
    size_t strlen(const char *s)
    size_t strnlen(const char *s, size_t maxlen)


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum:
        POLLIN
        POLLPRI
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        size_t msg_controllen
        int msg_flags
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags,
                     sockaddr *addr, socklen_t *addrlen)
    ssize_t c_sendto "sendto"(int fd, const void *buf, size_t n, int flags,
                             const sockaddr *addr, socklen_t addrlen)
    int setsockopt(int fd, int level, int name, const void *value,
                   socklen_t length)
    enum:
        AF_UNIX
        AF_INET
        AF_INET6
        MSG_DONTWAIT


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)
    uint16_t htons(uint16_t v)
    uint32_t ntohl(uint32_t v)
    uint32_t htonl(uint32_t v)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)


cdef extern from "<sys/un.h>" nogil:
    struct sockaddr_un:
        sa_family_t sun_family
        char sun_path[108]      # 104 on macOS and the BSDs: only ever read
                                # through a pointer, within the address length


cdef extern from "compat.h" nogil:
    ctypedef struct fs_mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    enum:
        FS_MSG_WAITFORONE
        FS_HAVE_ABSTRACT_UNIX   # the kernel has AF_UNIX abstract names (Linux)
    bint FS_IS_EAGAIN(int err)
    int fs_accept_cloexec(int fd, sockaddr *addr, socklen_t *len)
    int fs_recvmmsg(int fd, fs_mmsghdr *vec, unsigned int vlen, int flags)
    int fs_waker_open(int fds[2])
    int fs_waker_signal(int fd)
    void fs_waker_drain(int fd)
    int64_t fs_monotonic_ns()
