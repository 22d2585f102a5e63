# cython: language_level=3
"""C declarations for the relay: sockets, cmsg, epoll, eventfd, mmap, files, time.

Declarations only (no logic), reviewed once and cimported by ``speeddata._relay``.
Linux only. Python.h (pyconfig.h) defines ``_GNU_SOURCE`` before these headers are
included, which ``recvmmsg``/``sendmmsg``/``fallocate`` need.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN
        EWOULDBLOCK
        ENOBUFS
        ENOSPC
        EDQUOT
        EIO
        EEXIST
        ENOENT
        EINVAL
        EOPNOTSUPP
        EMSGSIZE


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t
    ctypedef long off_t
    ctypedef unsigned int mode_t
    ctypedef long time_t


cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    struct tm:
        int tm_sec
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC
    int clock_gettime(clockid_t clk_id, timespec* tp)
    int nanosleep(const timespec* req, timespec* rem)
    tm* gmtime_r(const time_t* timep, tm* result)
    size_t strftime(char* s, size_t maxsize, const char* fmt, const tm* t)


cdef extern from "<stdio.h>" nogil:
    int snprintf(char* s, size_t n, const char* fmt, ...)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base      # start of the buffer
        size_t iov_len      # its length in bytes
    ssize_t writev(int fd, const iovec* iov, int iovcnt)
    ssize_t pwritev(int fd, const iovec* iov, int iovcnt, off_t offset)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct msghdr:
        void* msg_name          # destination (send) or source (receive) address
        socklen_t msg_namelen   # its size
        iovec* msg_iov          # scatter/gather buffers
        size_t msg_iovlen       # how many
        void* msg_control       # ancillary data (cmsgs)
        size_t msg_controllen   # its size; the kernel sets the used size on receive
        int msg_flags           # MSG_TRUNC / MSG_CTRUNC on receive

    struct cmsghdr:
        size_t cmsg_len         # CMSG_LEN(data size)
        int cmsg_level          # SOL_SOCKET, SOL_UDP, ...
        int cmsg_type           # SCM_TIMESTAMPNS, SO_RXQ_OVFL, UDP_SEGMENT, ...

    struct mmsghdr:
        msghdr msg_hdr          # one message
        unsigned int msg_len    # bytes received or sent for it

    cmsghdr* CMSG_FIRSTHDR(msghdr* msgh)
    cmsghdr* CMSG_NXTHDR(msghdr* msgh, cmsghdr* cmsg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)

    enum:
        AF_INET
        SOL_SOCKET
        SO_RCVBUF
        SO_SNDBUF
        SO_TIMESTAMPNS
        SCM_TIMESTAMPNS
        SO_RXQ_OVFL
        SO_MEMINFO              # u32[SK_MEMINFO_VARS] of the socket's memory (socket(7))
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_CTRUNC

    int recvmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags, timespec* tmo)
    int sendmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)
    int getsockopt(int fd, int level, int optname, void* optval, socklen_t* optlen)


cdef extern from "<linux/sock_diag.h>" nogil:
    enum:
        SK_MEMINFO_DROPS        # index of the socket's drop count (sk_drops) in SO_MEMINFO
        SK_MEMINFO_VARS         # entries of SO_MEMINFO


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    enum:
        IPPROTO_UDP
    uint16_t htons(uint16_t hostshort)


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)


cdef extern from "<netinet/udp.h>" nogil:
    enum:
        SOL_UDP
        UDP_SEGMENT         # UDP GSO: segment size of one send (Linux >= 4.18)


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
        POLLOUT
    int poll(pollfd* fds, unsigned long nfds, int timeout)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MADV_HUGEPAGE
    void* MAP_FAILED
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void* addr, size_t length)
    int msync(void* addr, size_t length, int flags)
    int madvise(void* addr, size_t length, int advice)


cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23  /* Linux 5.14; older kernels refuse it with EINVAL */
    #endif
    """
    enum:
        MADV_POPULATE_WRITE


cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
    int fstatfs(int fd, statfs* buf)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const pthread_condattr_t* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_signal(pthread_cond_t* cond)
    int pthread_cond_broadcast(pthread_cond_t* cond)


cdef extern from *:
    """
    static inline size_t sd_load_acquire(const size_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void sd_store_release(size_t* p, size_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    """
    size_t sd_load_acquire(const size_t* p) nogil
    void sd_store_release(size_t* p, size_t v) nogil


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDWR
        O_WRONLY
        O_CREAT
        O_EXCL
        O_APPEND
        O_CLOEXEC
    int open(const char* pathname, int flags, mode_t mode)
    int posix_fallocate(int fd, off_t offset, off_t length)


cdef extern from "<sys/stat.h>" nogil:
    int mkdir(const char* pathname, mode_t mode)


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void* buf, size_t count)
    ssize_t write(int fd, const void* buf, size_t count)
    ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset)
    int ftruncate(int fd, off_t length)
    off_t lseek(int fd, off_t offset, int whence)
    enum:
        SEEK_END
    int unlink(const char* pathname)
    long syscall(long number, ...)


cdef extern from "<sys/syscall.h>" nogil:
    enum:
        SYS_gettid


cdef extern from "<sys/resource.h>" nogil:
    enum:
        PRIO_PROCESS
    int setpriority(int which, unsigned int who, int prio)


cdef extern from "<sys/random.h>" nogil:
    ssize_t getrandom(void* buf, size_t buflen, unsigned int flags)
