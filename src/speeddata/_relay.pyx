# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled relay engine: recvmmsg -> validate -> multicast (sendmmsg) -> cache (map).

One ``Engine`` serves any number of channel sockets (plus the optional shared
single-object port) from one thread. ``run()`` releases the GIL for its whole batch loop
and takes it back only to apply queued control changes (add, remove, rotate), to send the
announces once per ``announce_interval``, and to return. Everything the loop needs is
allocated at construction and freed in ``__dealloc__``; the loop builds no Python object,
prints nothing and counts everything (docs/relay-internals.md, "Counters").

Per batch (one ``recvmmsg`` on one ready socket):

1. every datagram is checked by ``speeddata._validate.validate_records`` (record count,
   smallest and largest time-field value); a bad one is counted as rejected and goes
   nowhere (optionally appended to ``rejected/<channel>.rej``);
2. the accepted ones are multicast, each as two iovecs, the 32-byte header (docs/wire.md)
   and the payload where it lies in the receive slab: one ``sendmmsg`` on a socket
   connected to the full-rate group, one on a socket connected to the decimated group
   (every Nth datagram); a run of one channel's datagrams of one size (the last may be
   shorter) goes out as one UDP GSO message (docs/performance.md);
3. they are appended to the channel's segment as one block: ``.recv`` entries and the
   ``.idx`` entry first (pwrite), then the block, copied from the receive slab into the
   segment's shared map, which the engine's populate thread keeps writable ahead of the
   write position, or gathered with one ``pwritev`` where it is not (docs/cache.md,
   "Write order"; docs/relay-internals.md, "Segment writes"). No fsync: the page cache
   survives ``kill -9``.

``speeddata.relay_ref.PyEngine`` is the pure-Python reference with the same behaviour.
"""

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset, strlen

from speeddata._avro cimport (
    N_REJECT_REASONS,
    OP_DOUBLE,
    OP_FIXED,
    OP_FLOAT,
    OP_NULL,
    REJECT_EMPTY,
    REJECT_FINGERPRINT,
    REJECT_FRAMING,
    REJECT_MIXED,
    REJECT_NONE,
    REJECT_OVERSIZE,
    REJECT_TRAILING,
    REJECT_TRUNCATED,
    skip_record,
    varint_size,
    write_varint,
)
from speeddata._validate cimport validate_records, validation
from speeddata.includes.system cimport (
    AF_INET,
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    EAGAIN,
    EEXIST,
    EINTR,
    EINVAL,
    EIO,
    EMSGSIZE,
    ENOBUFS,
    ENOENT,
    EOPNOTSUPP,
    EPOLL_CLOEXEC,
    EPOLL_CTL_ADD,
    EPOLL_CTL_DEL,
    EPOLLIN,
    MADV_HUGEPAGE,
    MADV_POPULATE_WRITE,
    MAP_FAILED,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    EFD_CLOEXEC,
    EFD_NONBLOCK,
    MSG_DONTWAIT,
    MSG_TRUNC,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_EXCL,
    O_RDWR,
    O_WRONLY,
    POLLIN,
    POLLOUT,
    SCM_TIMESTAMPNS,
    SK_MEMINFO_DROPS,
    SK_MEMINFO_VARS,
    SO_MEMINFO,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    SOL_SOCKET,
    socklen_t,
    SOL_UDP,
    UDP_SEGMENT,
    clock_gettime,
    close,
    cmsghdr,
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_LEN,
    CMSG_NXTHDR,
    CMSG_SPACE,
    epoll_create1,
    epoll_ctl,
    epoll_event,
    epoll_wait,
    errno,
    eventfd,
    fstatfs,
    ftruncate,
    getsockopt,
    madvise,
    mmap,
    munmap,
    lseek,
    SEEK_END,
    getrandom,
    gmtime_r,
    inet_pton,
    htons,
    iovec,
    mkdir,
    nanosleep,
    mmsghdr,
    msghdr,
    off_t,
    open,
    poll,
    pollfd,
    posix_fallocate,
    pthread_cond_broadcast,
    pthread_cond_destroy,
    pthread_cond_init,
    pthread_cond_signal,
    pthread_cond_wait,
    pthread_mutex_destroy,
    pthread_mutex_init,
    pthread_mutex_lock,
    pthread_mutex_unlock,
    pwritev,
    read,
    sd_load_acquire,
    sd_store_release,
    recvmmsg,
    sendmmsg,
    sendmsg,
    snprintf,
    ssize_t,
    statfs,
    strftime,
    time_t,
    timespec,
    tm,
    unlink,
    write,
    writev,
    PRIO_PROCESS,
    SYS_gettid,
    setpriority,
    syscall,
)

import ipaddress
import os
import socket
import sys
import threading
import time
from pathlib import Path

from speeddata.cache import ocf_header
from speeddata.validate import REJECT_REASONS
from speeddata.wire import announce_datagram

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("speeddata._relay writes little-endian structs: little-endian hosts only")

__all__ = ["Engine", "bare_drain", "blast"]

cdef enum:
    SLOT = 65536            # receive bytes per datagram: more than any UDP/IPv4 payload
    CMSG_BUF = 64           # receive cmsg room: SCM_TIMESTAMPNS (32) + SO_RXQ_OVFL (24)
    SCMSG_BUF = 32          # send cmsg room: UDP_SEGMENT (u16 -> 24)
    HEADER_SIZE = 32        # docs/wire.md
    SYNC_SIZE = 16
    IDX_ENTRY = 40
    RECV_ENTRY = 16
    REJ_HEADER = 12
    MAX_BATCH = 1024        # UIO_MAXIOV
    GSO_MAX_SEGMENTS = 64   # UDP_MAX_SEGMENTS on every kernel with UDP GSO
    GSO_MAX_BYTES = 65000   # one GSO send is one UDP datagram to the stack (< 65507)
    MAX_PATH = 4096
    MAX_EVENTS = 64
    REJECTED_FILE_LIMIT = 64 << 20  # stop keeping rejected datagrams past this, per file

cdef enum:
    LOOP_STOP = 0
    LOOP_CONTROL = 1
    LOOP_ANNOUNCE = 2
    LOOP_ERROR = 3

cdef enum:
    KIND_FULL = 0
    KIND_DECIMATED = 1

cdef enum:
    POP_AHEAD = 4 << 20     # keep this much of the segment map populated past the end
    POP_STEP = 2 << 20      # populate this much per madvise call: one 2 MiB folio

# File systems whose pre-allocated blocks a store into a shared mapping can never fail on
# (statfs(2) magic numbers): anywhere else a full disk would be a SIGBUS, so blocks are
# written with pwritev only.
cdef long EXT4_MAGIC = 0xEF53
cdef long XFS_MAGIC = 0x58465342
cdef long TMPFS_MAGIC = 0x01021994

cdef int64_t NS = 1_000_000_000
# A source time more than this ahead of its receive time counts as time_future (the same
# as relay_ref.FUTURE_NS; docs/relay-internals.md, "Source clocks").
cdef int64_t FUTURE_NS = 600 * NS
# short passes in a row after which a loop raised to relay.nice while behind goes back
cdef int BOOST_HOLD = 16
cdef uint32_t WIRE_MAGIC = 0x61447053  # b"SpDa" read as a little-endian u32


cdef packed struct wire_header_t:
    uint32_t magic          # "SpDa"
    uint8_t version         # 1
    uint8_t kind            # 0 data, 1 announce
    uint16_t header_len     # 32
    uint32_t channel_id     # the channel's id
    uint32_t n_records      # records in the payload
    uint64_t seq            # per channel sequence number
    int64_t recv_ns         # kernel receive time


cdef packed struct idx_entry_t:
    uint64_t offset         # block start in the segment
    uint32_t size           # block bytes, sync marker included
    uint32_t n_records      # records in the block
    uint32_t n_datagrams    # datagrams in the block
    uint32_t seq_first      # seq (low 32 bits) of its first datagram
    int64_t t_min           # smallest source time, ns
    int64_t t_max           # largest source time, ns


cdef packed struct recv_entry_t:
    int64_t recv_ns         # kernel receive time of the datagram
    uint32_t n_records      # records in it
    uint32_t seq            # its seq (low 32 bits)


# ---------------------------------------------------------------- small C helpers

cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * NS + ts.tv_nsec


cdef inline int64_t real_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * NS + ts.tv_nsec


cdef int pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t offset) noexcept nogil:
    """Write all ``n`` bytes at ``offset``; 0 or the errno (``pwritev_all`` of one buffer)."""
    cdef iovec one
    if n == 0:
        return 0
    one.iov_base = <void*>p
    one.iov_len = n
    return pwritev_all(fd, &one, 1, offset)


cdef int pwritev_all(int fd, iovec* iov, Py_ssize_t n, uint64_t offset) noexcept nogil:
    """Write the ``n`` buffers at ``offset``; 0 or the errno. EINTR and short writes
    retried (``iov`` is consumed: its entries are advanced in place)."""
    cdef ssize_t r
    cdef size_t got
    while n > 0:
        r = pwritev(fd, iov, <int>(n if n < MAX_BATCH else MAX_BATCH), <off_t>offset)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        if r == 0:
            return EIO
        offset += <uint64_t>r
        got = <size_t>r
        while n > 0 and got >= iov[0].iov_len:
            got -= iov[0].iov_len
            iov += 1
            n -= 1
        if n > 0:
            iov[0].iov_base = <uint8_t*>iov[0].iov_base + got
            iov[0].iov_len -= got
    return 0


cdef inline void set_udp_segment(msghdr* msg, uint8_t* control, uint16_t size) noexcept nogil:
    """Make ``msg`` a UDP GSO message cut every ``size`` bytes (udp(7), UDP_SEGMENT); its
    control buffer ``control`` holds SCMSG_BUF bytes."""
    cdef cmsghdr* cm
    msg.msg_control = control
    msg.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
    cm = CMSG_FIRSTHDR(msg)
    cm.cmsg_level = SOL_UDP
    cm.cmsg_type = UDP_SEGMENT
    cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
    memcpy(CMSG_DATA(cm), &size, sizeof(uint16_t))


cdef int set_addr(sockaddr_in* addr, object host, object port) except -1:
    """``addr`` = IPv4 ``host``:``port``; ValueError when host is not an IPv4 address."""
    memset(addr, 0, sizeof(sockaddr_in))
    addr.sin_family = AF_INET
    addr.sin_port = htons(<uint16_t>int(port))
    if inet_pton(AF_INET, str(host).encode(), &addr.sin_addr) != 1:
        raise ValueError(f"{host!r} is not an IPv4 address")
    return 0


cdef void make_stem(char* out, int64_t t_ns) noexcept nogil:
    """``%Y%m%dT%H%M%S.<9 digits>Z`` (UTC), as ``speeddata.cache.segment_stem``."""
    cdef time_t sec = <time_t>(t_ns // NS)
    cdef long frac = <long>(t_ns % NS)
    cdef tm t
    gmtime_r(&sec, &t)
    strftime(out, 20, "%Y%m%dT%H%M%S", &t)
    snprintf(out + 15, 17, ".%09ldZ", frac)


cdef void segment_path(char* out, const chan_t* ch, const char* suffix) noexcept nogil:
    snprintf(out, MAX_PATH, "%s/%s%s", ch.dir_p, ch.seg.stem, suffix)


cdef void close_segment(chan_t* ch) noexcept nogil:
    """Trim the segment to its last complete block and close its files (docs/cache.md).

    A segment that got no block at all (its first write failed) is removed.
    """
    cdef segment_t* seg = &ch.seg
    cdef char path[MAX_PATH]
    if seg.fd < 0:
        return
    unmap_segment(ch)
    if seg.n_blocks == 0:
        segment_path(path, ch, b".avro")
        unlink(path)
        segment_path(path, ch, b".idx")
        unlink(path)
        segment_path(path, ch, b".recv")
        unlink(path)
    else:
        ftruncate(seg.fd, <off_t>seg.end)
    close(seg.fd)
    close(seg.idx_fd)
    close(seg.recv_fd)
    seg.fd = seg.idx_fd = seg.recv_fd = -1
    seg.n_blocks = 0


cdef void unmap_segment(chan_t* ch) noexcept nogil:
    """Take the segment's map away from the populate thread (waiting out a madvise in
    progress, at most one POP_STEP) and have it unmapped (by that thread when it runs);
    the segment's file can be trimmed and closed at once: nothing touches the map any
    more."""
    cdef segment_t* seg = &ch.seg
    cdef pop_t* pop = ch.pop
    cdef uint8_t* addr = seg.map
    cdef Py_ssize_t i, k = 0
    if addr == NULL:
        return
    pthread_mutex_lock(&pop.lock)
    for i in range(pop.n_queue):
        if pop.queue[i] != ch:
            pop.queue[k] = pop.queue[i]
            k += 1
    pop.n_queue = k
    seg.pop_queued = False
    while seg.pop_busy:
        pthread_cond_wait(&pop.idle, &pop.lock)
    seg.map = NULL  # the populate thread skips it from now on; _map_segment resets the rest
    if pop.running and pop.n_dead < POP_QUEUE:
        # unmapping 64 MiB of pages takes ~2 ms: the populate thread does it
        pop.dead_addr[pop.n_dead] = addr
        pop.dead_len[pop.n_dead] = seg.capacity
        pop.n_dead += 1
        pthread_cond_signal(&pop.work)
        addr = NULL
    pthread_mutex_unlock(&pop.lock)
    if addr != NULL:
        munmap(addr, seg.capacity)


cdef void request_populate(chan_t* ch, size_t target) noexcept nogil:
    """Ask the populate thread to make the map writable up to ``target``."""
    cdef segment_t* seg = &ch.seg
    cdef pop_t* pop = ch.pop
    target = (target + POP_STEP - 1) & ~(<size_t>POP_STEP - 1)  # madvise: page-aligned starts
    if target > seg.capacity:
        target = seg.capacity
    seg.pop_asked = target
    pthread_mutex_lock(&pop.lock)
    if seg.pop_failed:
        pthread_mutex_unlock(&pop.lock)
        return
    if target > seg.pop_target:
        seg.pop_target = target
    if enqueue(pop, ch):
        pthread_cond_signal(&pop.work)
    pthread_mutex_unlock(&pop.lock)


cdef inline bint enqueue(pop_t* pop, chan_t* ch) noexcept nogil:
    """Queue ``ch`` for populating unless it is queued already (``pop.lock`` held);
    whether it was added."""
    if ch.seg.pop_queued or pop.n_queue >= POP_QUEUE:
        return False
    pop.queue[pop.n_queue] = ch
    pop.n_queue += 1
    ch.seg.pop_queued = True
    return True


cdef void populate_loop(pop_t* pop) noexcept nogil:
    """The populate thread: ``madvise(MADV_POPULATE_WRITE)`` the queued segment maps a
    POP_STEP at a time, so the relay's stores into them never fault (the page-cache
    allocation, ext4's zero-fill of the pre-allocated extent and the write fault all
    happen here, on another core). It also unmaps closed segments' maps (64 MiB: ~2 ms).
    Returns when ``pop.stop`` is set and no map is left to unmap."""
    cdef chan_t* ch
    cdef segment_t* seg
    cdef uint8_t* addr
    cdef size_t start, stop
    cdef Py_ssize_t i
    cdef int r
    cdef void* dead
    cdef size_t dead_len
    pthread_mutex_lock(&pop.lock)
    pop.running = True
    while True:
        if pop.n_dead > 0:
            pop.n_dead -= 1
            dead = pop.dead_addr[pop.n_dead]
            dead_len = pop.dead_len[pop.n_dead]
            pthread_mutex_unlock(&pop.lock)
            munmap(dead, dead_len)
            pthread_mutex_lock(&pop.lock)
            continue
        if pop.stop:
            break
        if pop.n_queue == 0:
            pthread_cond_wait(&pop.work, &pop.lock)
            continue
        ch = pop.queue[0]
        for i in range(1, pop.n_queue):
            pop.queue[i - 1] = pop.queue[i]
        pop.n_queue -= 1
        seg = &ch.seg
        seg.pop_queued = False
        start = seg.pop_done
        if seg.map == NULL or start >= seg.pop_target:
            continue
        stop = seg.pop_target
        if stop - start > POP_STEP:
            stop = start + POP_STEP
        addr = seg.map
        seg.pop_busy = True
        pthread_mutex_unlock(&pop.lock)
        r = madvise(addr + start, stop - start, MADV_POPULATE_WRITE)
        pthread_mutex_lock(&pop.lock)
        seg.pop_busy = False
        pthread_cond_broadcast(&pop.idle)
        if r != 0:
            seg.pop_failed = True  # refused (old kernel, no memory): pwritev from here on
            continue
        sd_store_release(&seg.pop_done, stop)
        if stop < seg.pop_target:
            enqueue(pop, ch)
    pop.running = False
    pthread_mutex_unlock(&pop.lock)


cdef inline const uint8_t* walk_record(
    const uint8_t* p, const uint8_t* end, const int32_t* program, Py_ssize_t n_ops, int* why
) noexcept nogil:
    """Step over exactly one valid record (as validate_records does); NULL if invalid,
    and ``why`` says why (REJECT_*)."""
    cdef int64_t unused
    return skip_record(p, end, program, n_ops, -1, &unused, why)


cdef void read_drops(chan_t* ch) noexcept nogil:
    """Count the drops the kernel reports for the channel's socket now (SO_MEMINFO,
    SK_MEMINFO_DROPS: sk_drops, the count SO_RXQ_OVFL hands out only with the next
    datagram). Called with the engine's lock held; the loop never touches these fields."""
    cdef uint32_t mem[SK_MEMINFO_VARS]
    cdef socklen_t size = sizeof(mem)
    if ch.fd < 0:
        return
    if getsockopt(ch.fd, SOL_SOCKET, SO_MEMINFO, mem, &size) != 0:
        return  # kernels before 4.6: SO_RXQ_OVFL's count only
    if size < sizeof(uint32_t) * (SK_MEMINFO_DROPS + 1):
        return
    ch.drops_seen += <uint32_t>(mem[SK_MEMINFO_DROPS] - ch.mem_drops)  # u32 wraps
    ch.mem_drops = mem[SK_MEMINFO_DROPS]


cdef void note_fingerprint(chan_t* ch, const uint8_t* fp) noexcept nogil:
    """Count a datagram with the unknown fingerprint ``fp`` (the first UNKNOWN_FP_SLOTS
    distinct ones; the rest count only as rejects)."""
    cdef uint32_t i
    for i in range(ch.n_unknown_fp):
        if memcmp(ch.unknown_fp[i], fp, 8) == 0:
            ch.unknown_fp_n[i] += 1
            return
    if ch.n_unknown_fp < UNKNOWN_FP_SLOTS:
        memcpy(ch.unknown_fp[ch.n_unknown_fp], fp, 8)
        ch.unknown_fp_n[ch.n_unknown_fp] = 1
        ch.n_unknown_fp += 1


cdef void release_channel(chan_t* ch) noexcept nogil:
    """Close the channel's segment and files; the struct (counters) stays."""
    close_segment(ch)
    if ch.rej_fd >= 0:
        close(ch.rej_fd)
        ch.rej_fd = -1
    ch.fd = -1


cdef void free_channel(chan_t* ch) noexcept nogil:
    if ch == NULL:
        return
    release_channel(ch)
    free(ch.dir_p)
    free(ch.rej_path_p)
    free(ch.header_p)
    free(ch)


cdef char* c_strdup(bytes value) except NULL:
    cdef Py_ssize_t n = len(value)
    cdef char* p = <char*>malloc(n + 1)
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char*>value, n)
    p[n] = 0
    return p


def _multicast_loop(multicast):
    """IP_MULTICAST_LOOP for the send socket.

    On a loopback interface the lo device itself delivers every datagram to the local
    members, so the extra loop copy (ip(7), IP_MULTICAST_LOOP) is made and then discarded
    by the kernel: about a fifth of the send cost, measured (docs/performance.md). Local
    subscribers get each datagram exactly once either way.
    """
    if ipaddress.ip_address(multicast.interface).is_loopback:
        return 0
    return 1 if multicast.loop else 0


def _send_socket(multicast, group):
    """A non-blocking UDP socket for one multicast group (interface, TTL, loop set)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(multicast.interface)
        )
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, int(multicast.ttl))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, _multicast_loop(multicast))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _connect(sock, group):
    """Connect ``sock`` to its group: the kernel then keeps the route (a multicast route is
    otherwise looked up and allocated for every send, ~10 % of a send, measured). False
    when the route cannot be resolved now; the engine then sends with an address."""
    try:
        sock.connect((group[0], int(group[1])))
    except OSError:
        return False
    return True


def _oserror(int err, str what):
    return OSError(err, f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------- the engine

cdef class Engine:
    """The compiled relay loop over a set of channel sockets (docs/relay-internals.md).

    ``Engine(cache_dir, multicast, segment_size, segment_age, flush_interval, batch,
    rejected_dir)``; then ``add_channel`` per channel, ``run()`` in a thread, ``stop()``,
    ``close()``. Blocks are written once per receive batch, so ``flush_interval`` is met
    by construction (a block never waits for more data).
    """

    def __cinit__(self, *args, **kwargs):
        self.epfd = -1
        self.wakefd = -1
        self.send_fd = -1
        self.dec_fd = -1
        self._gso = True  # UDP GSO for runs of equal-size datagrams; off by itself if refused
        self._fixed_fast = True
        self._use_map = True
        self._huge_map = False
        if (
            pthread_mutex_init(&self.pop.lock, NULL) != 0
            or pthread_cond_init(&self.pop.work, NULL) != 0
            or pthread_cond_init(&self.pop.idle, NULL) != 0
        ):
            raise MemoryError("cannot create the relay engine's populate lock")
        self.pop_init = True

    def __init__(
        self,
        cache_dir,
        multicast,
        segment_size=64 << 20,
        segment_age=3600.0,
        flush_interval=0.2,
        batch=256,
        rejected_dir=None,
        coalesce=0.0,
    ):
        cdef epoll_event ev
        cdef int i
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH} datagrams, not {batch}")
        if not 0 <= coalesce <= 1:
            raise ValueError(f"coalesce must be 0 to 1 seconds, not {coalesce}")
        self.coalesce_ns = <int64_t>(coalesce * 1e9)
        self.gap_ns = NS
        self._boost_nice = None
        if segment_size < 1:
            raise ValueError(f"segment_size must be a positive number of bytes, not {segment_size}")
        if segment_age < 0 or flush_interval < 0:
            raise ValueError("segment_age and flush_interval cannot be negative")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.rejected_dir = Path(rejected_dir) if rejected_dir is not None else None
        self.multicast = multicast
        self.segment_size = segment_size
        self.segment_age_ns = <int64_t>(segment_age * 1e9)
        self.flush_interval = flush_interval
        self.batch = batch
        self.announce_interval_ns = <int64_t>(float(multicast.announce_interval) * 1e9)
        # idle channels' segments are closed at most ~1/10 of segment_age late (<= 1 s)
        self.sweep_interval_ns = NS
        if 0 < self.segment_age_ns < 10 * NS:
            self.sweep_interval_ns = max(self.segment_age_ns // 10, 10_000_000)
        self._lock = threading.Lock()
        self._channels = {}
        self._pending = []
        self._announce_seq = {}

        self.slab_p = <uint8_t*>PyMem_Calloc(batch, SLOT)
        self.rmsgs = <mmsghdr*>PyMem_Calloc(batch, sizeof(mmsghdr))
        self.riov = <iovec*>PyMem_Calloc(batch, sizeof(iovec))
        self.rcmsg_p = <uint8_t*>PyMem_Calloc(batch, CMSG_BUF)
        self.events = <epoll_event*>PyMem_Calloc(MAX_EVENTS, sizeof(epoll_event))
        self.dg_p = <uint8_t**>PyMem_Calloc(batch, sizeof(uint8_t*))
        self.dg_len = <uint32_t*>PyMem_Calloc(batch, sizeof(uint32_t))
        self.dg_recv_ns = <int64_t*>PyMem_Calloc(batch, sizeof(int64_t))
        self.dg_nrec = <uint32_t*>PyMem_Calloc(batch, sizeof(uint32_t))
        self.dg_tmin = <int64_t*>PyMem_Calloc(batch, sizeof(int64_t))
        self.dg_tmax = <int64_t*>PyMem_Calloc(batch, sizeof(int64_t))
        self.dg_seq = <uint64_t*>PyMem_Calloc(batch, sizeof(uint64_t))
        self.dg_chan = <chan_t**>PyMem_Calloc(batch, sizeof(chan_t*))
        self.acc = <Py_ssize_t*>PyMem_Calloc(batch, sizeof(Py_ssize_t))
        self.block_done = <uint8_t*>PyMem_Calloc(batch, 1)
        self.hdr_p = <uint8_t*>PyMem_Calloc(batch, HEADER_SIZE)
        self.siov = <iovec*>PyMem_Calloc(2 * batch, sizeof(iovec))
        self.smsgs = <mmsghdr*>PyMem_Calloc(2 * batch, sizeof(mmsghdr))
        self.s_chan = <chan_t**>PyMem_Calloc(2 * batch, sizeof(chan_t*))
        self.s_count = <uint32_t*>PyMem_Calloc(2 * batch, sizeof(uint32_t))
        self.s_pos = <Py_ssize_t*>PyMem_Calloc(batch, sizeof(Py_ssize_t))
        self.diov = <iovec*>PyMem_Calloc(2 * batch, sizeof(iovec))
        self.d_pos = <Py_ssize_t*>PyMem_Calloc(batch, sizeof(Py_ssize_t))
        self.s_kind = <uint8_t*>PyMem_Calloc(2 * batch, 1)
        self.scmsg_p = <uint8_t*>PyMem_Calloc(2 * batch, SCMSG_BUF)
        self.recv_buf_p = <uint8_t*>PyMem_Calloc(batch, RECV_ENTRY)
        self.blk = <Py_ssize_t*>PyMem_Calloc(batch, sizeof(Py_ssize_t))
        self.wiov = <iovec*>PyMem_Calloc(batch + 2, sizeof(iovec))
        if (
            self.slab_p == NULL or self.rmsgs == NULL or self.riov == NULL
            or self.rcmsg_p == NULL or self.events == NULL or self.dg_p == NULL
            or self.dg_len == NULL or self.dg_recv_ns == NULL or self.dg_nrec == NULL
            or self.dg_tmin == NULL or self.dg_tmax == NULL or self.dg_seq == NULL
            or self.dg_chan == NULL or self.acc == NULL or self.block_done == NULL
            or self.hdr_p == NULL or self.siov == NULL or self.smsgs == NULL
            or self.s_chan == NULL or self.s_count == NULL or self.s_pos == NULL
            or self.diov == NULL or self.d_pos == NULL
            or self.s_kind == NULL or self.scmsg_p == NULL or self.recv_buf_p == NULL
            or self.blk == NULL or self.wiov == NULL
        ):
            raise MemoryError("cannot allocate the relay engine's buffers")
        for i in range(batch):
            self.riov[i].iov_base = self.slab_p + <size_t>i * SLOT
            self.riov[i].iov_len = SLOT
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
            self.rmsgs[i].msg_hdr.msg_control = self.rcmsg_p + <size_t>i * CMSG_BUF

        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _oserror(errno, "epoll_create1")
        self.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wakefd < 0:
            raise _oserror(errno, "eventfd")
        ev.events = EPOLLIN
        ev.data.ptr = NULL
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wakefd, &ev) < 0:
            raise _oserror(errno, "epoll_ctl(eventfd)")

        self._set_addr(&self.full_addr, multicast.full)
        self._set_addr(&self.dec_addr, multicast.decimated)
        # One send socket per group. docs/wire.md; network rule: interface and TTL come
        # from the config (127.0.0.1 and 1 by default).
        self._send_sock = _send_socket(multicast, multicast.full)
        self.send_fd = self._send_sock.fileno()
        self.full_name = NULL if _connect(self._send_sock, multicast.full) else &self.full_addr
        self._dec_sock = _send_socket(multicast, multicast.decimated)
        self.dec_fd = self._dec_sock.fileno()
        self.dec_name = NULL if _connect(self._dec_sock, multicast.decimated) else &self.dec_addr

    cdef int _set_addr(self, sockaddr_in* addr, object host_port) except -1:
        host, port = host_port
        try:
            return set_addr(addr, host, port)
        except ValueError:
            raise ValueError(f"multicast group {host!r} is not an IPv4 address") from None

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.chans != NULL:
            for i in range(self.n_chans):
                free_channel(self.chans[i])
            free(self.chans)
            self.chans = NULL
        free_channel(self.shared)
        self.shared = NULL
        if self.pop_init:
            pthread_mutex_destroy(&self.pop.lock)
            pthread_cond_destroy(&self.pop.work)
            pthread_cond_destroy(&self.pop.idle)
            self.pop_init = False
        if self.epfd >= 0:
            close(self.epfd)
        if self.wakefd >= 0:
            close(self.wakefd)
        PyMem_Free(self.slab_p)
        PyMem_Free(self.rmsgs)
        PyMem_Free(self.riov)
        PyMem_Free(self.rcmsg_p)
        PyMem_Free(self.events)
        PyMem_Free(self.dg_p)
        PyMem_Free(self.dg_len)
        PyMem_Free(self.dg_recv_ns)
        PyMem_Free(self.dg_nrec)
        PyMem_Free(self.dg_tmin)
        PyMem_Free(self.dg_tmax)
        PyMem_Free(self.dg_seq)
        PyMem_Free(self.dg_chan)
        PyMem_Free(self.acc)
        PyMem_Free(self.block_done)
        PyMem_Free(self.hdr_p)
        PyMem_Free(self.siov)
        PyMem_Free(self.smsgs)
        PyMem_Free(self.s_chan)
        PyMem_Free(self.s_count)
        PyMem_Free(self.s_pos)
        PyMem_Free(self.diov)
        PyMem_Free(self.d_pos)
        PyMem_Free(self.s_kind)
        PyMem_Free(self.scmsg_p)
        PyMem_Free(self.recv_buf_p)
        PyMem_Free(self.blk)
        PyMem_Free(self.wiov)

    # ------------------------------------------------------------ private hooks

    @property
    def _sync(self):
        """Test hook: a fixed sync marker for every new segment (None: random)."""
        return bytes(self.sync_override[:16]) if self.use_sync_override else None

    @_sync.setter
    def _sync(self, value):
        if value is None:
            self.use_sync_override = False
            return
        value = bytes(value)
        if len(value) != SYNC_SIZE:
            raise ValueError("a sync marker is 16 bytes")
        memcpy(self.sync_override, <const char*>value, SYNC_SIZE)
        self.use_sync_override = True

    # ------------------------------------------------------------ control plane

    def add_channel(self, channel, sock):
        """Serve ``channel`` (a ``config.ChannelConfig``) on ``sock`` (a bound UDP socket,
        or None for a channel reached only through the shared port).

        Sets SO_TIMESTAMPNS, SO_RXQ_OVFL and non-blocking mode on the socket; the caller
        keeps ownership (and sets SO_RCVBUF). The channel's segment opens lazily.
        """
        cid = int(channel.id)
        if not 1 <= cid <= 0xFFFFFFFF:
            raise ValueError(f"channel {channel.name!r}: id must be 1..4294967295, not {cid}")
        if int(channel.decimation) < 1:
            raise ValueError(f"channel {channel.name!r}: decimation must be >= 1")
        schema = channel.schema
        program = schema.program_ops  # int32 (op, arg) pairs; no numpy in the relay process
        ops = program[0::2].tolist()
        fixed_size = 0
        if schema.time_op < 0 and all(
            op in (OP_NULL, OP_FLOAT, OP_DOUBLE, OP_FIXED) for op in ops
        ):
            # Any bytes of the right size are valid records: count instead of walking.
            fixed_size = schema.fixed_size or 0
        header = ocf_header(schema, bytes(SYNC_SIZE), channel.name, cid)[:-SYNC_SIZE]
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            sock.setblocking(False)
        if self.cache_dir is not None:
            (self.cache_dir / channel.name).mkdir(parents=True, exist_ok=True)
        if self.rejected_dir is not None:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self._control(("add", channel, sock, program, header, fixed_size))

    def set_shared_socket(self, sock):
        """Serve the shared single-object port on ``sock``: datagrams of ``C3 01`` +
        fingerprint + record, routed by fingerprint to a channel of this engine."""
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.setblocking(False)
        if self.rejected_dir is not None:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self._control(("shared", None, sock, None, None, 0))

    def remove_channel(self, channel_id):
        """Stop serving a channel and close (trim) its segment; the caller closes the socket."""
        self._control(("remove", int(channel_id), None, None, None, 0))

    def rotate(self, channel_id=None):
        """Close the current segment of one channel (or all); the next datagram opens a new one."""
        self._control(("rotate", channel_id, None, None, None, 0))

    def _control(self, op):
        cdef uint64_t one = 1
        done = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if not self._running:
                self._apply(op)
                return
            done = [threading.Event(), None]
            self._pending.append((op, done))
            self.control_flag = 1
        write(self.wakefd, &one, 8)
        done[0].wait()
        if done[1] is not None:
            raise done[1]

    def _apply_pending(self):
        with self._lock:
            pending, self._pending = self._pending, []
            self.control_flag = 0
            for op, done in pending:
                try:
                    self._apply(op)
                except BaseException as exc:  # handed to the caller of add/remove/rotate
                    done[1] = exc
                done[0].set()

    cdef chan_t* _find(self, uint32_t cid) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n_chans):
            if self.chans[i].id == cid:
                return self.chans[i]
        return NULL

    def _apply(self, op):
        """Apply one control change; the loop is not running its batch loop now."""
        cdef chan_t* ch
        cdef chan_t** grown
        cdef Py_ssize_t i
        cdef epoll_event ev
        cdef const int32_t[::1] prog
        kind, channel, sock, program, header, fixed_size = op
        if kind == "rotate":
            if channel is not None and self._find(<uint32_t>int(channel)) == NULL:
                raise KeyError(f"no channel with id {channel} in this engine")
            for i in range(self.n_chans):
                if channel is None or self.chans[i].id == <uint32_t>int(channel):
                    close_segment(self.chans[i])
            return
        if kind == "remove":
            ch = self._find(<uint32_t>channel)
            if ch == NULL:
                raise KeyError(f"no channel with id {channel} in this engine")
            if ch.fd >= 0:
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, ch.fd, &ev)  # fails only if already closed
            for i in range(self.n_chans):
                if self.chans[i] == ch:
                    self.chans[i] = self.chans[self.n_chans - 1]
                    self.n_chans -= 1
                    break
            free_channel(ch)
            del self._channels[channel]
            self._announce_seq.pop(channel, None)
            return
        if kind == "shared" and self.shared != NULL:
            # a new shared socket replaces the old one; the counters go on
            ch = self.shared
            if ch.fd >= 0:
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, ch.fd, &ev)
            read_drops(ch)  # what the old socket dropped stays counted
            ch.fd = sock.fileno()
            ch.ovfl = 0
            ch.mem_drops = 0
            ev.events = EPOLLIN
            ev.data.ptr = ch
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, ch.fd, &ev) < 0:
                ch.fd = -1
                raise _oserror(errno, "epoll_ctl(shared socket)")
            self._shared_sock = sock
            return
        if kind == "add" and int(channel.id) in self._channels:
            raise ValueError(f"channel id {channel.id} is already served by this engine")
        ch = <chan_t*>malloc(sizeof(chan_t))
        if ch == NULL:
            raise MemoryError()
        memset(ch, 0, sizeof(chan_t))
        ch.fd = ch.rej_fd = ch.seg.fd = ch.seg.idx_fd = ch.seg.recv_fd = -1
        ch.pop = &self.pop
        try:
            name = "shared" if kind == "shared" else channel.name
            if self.rejected_dir is not None:
                ch.rej_path_p = c_strdup(os.fsencode(self.rejected_dir / f"{name}.rej"))
            if kind == "add":
                ch.id = <uint32_t>int(channel.id)
                ch.decimation = <uint32_t>int(channel.decimation)
                prog = program
                ch.program_p = &prog[0]
                ch.n_ops = len(program) // 2
                ch.time_op = channel.schema.time_op
                ch.time_scale = channel.schema.time_scale
                ch.fixed_size = fixed_size
                fingerprints = channel.schema.fingerprints
                if not 1 <= len(fingerprints) <= FINGERPRINTS:
                    raise ValueError(
                        f"channel {channel.name!r}: {len(fingerprints)} schema fingerprints; "
                        f"1 to {FINGERPRINTS} fit"
                    )
                for i, fingerprint in enumerate(fingerprints):
                    memcpy(ch.fingerprints + 8 * i, <const char*>fingerprint, 8)
                ch.n_fingerprints = len(fingerprints)
                ch.header_len = len(header)
                ch.header_p = <uint8_t*>c_strdup(header)
                if self.cache_dir is not None:
                    ch.dir_p = c_strdup(os.fsencode(self.cache_dir / channel.name))
            if sock is not None:
                ch.fd = sock.fileno()
                ev.events = EPOLLIN
                ev.data.ptr = ch
                if epoll_ctl(self.epfd, EPOLL_CTL_ADD, ch.fd, &ev) < 0:
                    raise _oserror(errno, f"epoll_ctl({name} socket)")
        except BaseException:
            free_channel(ch)
            raise
        if kind == "shared":
            self.shared = ch
            self._shared_sock = sock
            return
        if self.n_chans == self.cap_chans:
            grown = <chan_t**>malloc(sizeof(chan_t*) * (self.cap_chans * 2 + 4))
            if grown == NULL:
                if ch.fd >= 0:
                    epoll_ctl(self.epfd, EPOLL_CTL_DEL, ch.fd, &ev)
                free_channel(ch)
                raise MemoryError()
            if self.chans != NULL:
                memcpy(grown, self.chans, sizeof(chan_t*) * self.n_chans)
                free(self.chans)
            self.chans = grown
            self.cap_chans = self.cap_chans * 2 + 4
        self.chans[self.n_chans] = ch
        self.n_chans += 1
        self._channels[ch.id] = (channel, program, sock)
        self.next_announce_ns = 0  # announce the newcomer right away

    # ------------------------------------------------------------ running

    def run(self):
        """Receive, validate, multicast and store until ``stop()``; call it in a thread."""
        cdef int reason
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._running:
                raise RuntimeError("the engine is already running")
            self._running = True
        self.next_announce_ns = 0
        self.boost_on = self._boost_nice is not None
        self.boosted = False
        self.n_short = 0
        if self.boost_on:
            self.boost_nice = int(self._boost_nice)
            self.loop_tid = syscall(SYS_gettid)
            self.base_nice = os.getpriority(os.PRIO_PROCESS, self.loop_tid)
        if self.cache_dir is not None:
            self.pop.stop = False
            self._pop_thread = threading.Thread(
                target=self._populate, name="speeddata-populate", daemon=True
            )
            self._pop_thread.start()
        try:
            while True:
                if self.control_flag:
                    self._apply_pending()
                if self.announce_interval_ns > 0 and mono_ns() >= self.next_announce_ns:
                    self._announce()
                    self.next_announce_ns = mono_ns() + self.announce_interval_ns
                with nogil:
                    reason = self._loop()
                if reason == LOOP_STOP:
                    break
                if reason == LOOP_ERROR:
                    raise _oserror(self.saved_errno, "relay engine loop")
        finally:
            if self._pop_thread is not None:
                with nogil:
                    pthread_mutex_lock(&self.pop.lock)
                    self.pop.stop = True
                    pthread_cond_broadcast(&self.pop.work)
                    pthread_mutex_unlock(&self.pop.lock)
                self._pop_thread.join()
                self._pop_thread = None
            if self.boosted:
                setpriority(PRIO_PROCESS, <unsigned int>self.loop_tid, self.base_nice)
                self.boosted = False
            with self._lock:
                self._running = False
                self.stop_flag = 0
            self._apply_pending()

    def _populate(self):
        # started by run() before the loop raises itself (priority while behind): it works
        # ahead of the loop at the priority the loop's thread had then
        with nogil:
            populate_loop(&self.pop)

    def stop(self):
        """Make ``run()`` return (from any thread); safe to call before ``run()``."""
        cdef uint64_t one = 1
        self.stop_flag = 1
        if self.wakefd >= 0:
            write(self.wakefd, &one, 8)

    def _announce(self):
        """Send every channel's announce (docs/wire.md) to both groups."""
        cdef chan_t* ch
        now = time.time_ns()
        full = self.multicast.full
        decimated = self.multicast.decimated
        for cid, (channel, _program, _sock) in list(self._channels.items()):
            seq = self._announce_seq.get(cid, 0)
            datagram = announce_datagram(channel, seq, now)
            self._announce_seq[cid] = seq + 1
            for sock, group in ((self._send_sock, full), (self._dec_sock, decimated)):
                try:
                    sock.sendto(datagram, group)
                except OSError:
                    ch = self._find(<uint32_t>cid)
                    if ch != NULL:
                        ch.c.multicast_errors += 1

    cdef int _loop(self) noexcept nogil:
        """The batch loop, without the GIL; returns why it stopped (LOOP_*).

        Coalescing (``relay.coalesce``, docs/relay-internals.md), as a NIC's adaptive
        interrupt moderation: a pass that took fewer datagrams than a batch sleeps the
        coalescing time when datagrams have been coming at least two per that time (a
        moving average of the time between them, over about 8 passes), so that the next
        pass takes the datagrams that came meanwhile in one go: one wake-up, recvmmsg,
        sendmmsg and block write for many datagrams instead of one each. Slower streams
        are never held, and neither is a stray pair of datagrams in a slow stream.
        """
        cdef int n, i, k, timeout_ms, got
        cdef int64_t now, wait_ns, gap
        cdef uint64_t drained
        cdef bint short
        cdef timespec pause
        cdef chan_t* ch
        while True:
            if self.stop_flag:
                return LOOP_STOP
            if self.control_flag:
                return LOOP_CONTROL
            if self._stop_after and self.n_seen >= self._stop_after:
                return LOOP_STOP
            now = mono_ns()
            if self.announce_interval_ns > 0 and now >= self.next_announce_ns:
                return LOOP_ANNOUNCE
            if now >= self.next_sweep_ns:
                self._sweep_ages()
                self.next_sweep_ns = now + self.sweep_interval_ns
            wait_ns = self.next_sweep_ns - now
            if self.announce_interval_ns > 0 and self.next_announce_ns - now < wait_ns:
                wait_ns = self.next_announce_ns - now
            timeout_ms = <int>(wait_ns // 1_000_000) + 1
            n = epoll_wait(self.epfd, self.events, MAX_EVENTS, timeout_ms)
            if n < 0:
                if errno == EINTR:
                    continue
                self.saved_errno = errno
                return LOOP_ERROR
            short = True
            got = 0
            for i in range(n):
                ch = <chan_t*>self.events[i].data.ptr
                if ch == NULL:
                    read(self.wakefd, &drained, 8)  # reset the eventfd; flags say why
                    continue
                k = self._receive(ch)
                got += k
                if k >= self.batch:
                    short = False
            if got == 0:
                continue
            self.wakeups += 1
            if self.boost_on:
                self._boost(short)
            now = mono_ns()
            gap = (now - self.last_pass_ns) // got
            if gap > NS:
                gap = NS  # after a quiet second, as if one per second came before
            self.last_pass_ns = now
            self.gap_ns += (gap - self.gap_ns) // 8
            if short and 2 * self.gap_ns <= self.coalesce_ns and not self.stop_flag:
                self.coalesced += 1
                pause.tv_sec = 0
                pause.tv_nsec = <long>self.coalesce_ns
                nanosleep(&pause, NULL)  # EINTR: a shorter wait, no harm

    cdef void _boost(self, bint short) noexcept nogil:
        """Priority while behind: a pass that took a full batch (datagrams are waiting)
        raises the loop to relay.nice; BOOST_HOLD short passes in a row lower it back
        (docs/relay-internals.md). A refused raise turns it off."""
        if not short:
            self.n_short = 0
            if not self.boosted:
                if setpriority(PRIO_PROCESS, <unsigned int>self.loop_tid, self.boost_nice) == 0:
                    self.boosted = True
                    self.boosts += 1
                else:
                    self.boost_on = False
        elif self.boosted:
            self.n_short += 1
            if self.n_short >= BOOST_HOLD:
                setpriority(PRIO_PROCESS, <unsigned int>self.loop_tid, self.base_nice)
                self.boosted = False
                self.n_short = 0

    cdef void _sweep_ages(self) noexcept nogil:
        """Close segments older than segment_age even when their channel is quiet."""
        cdef Py_ssize_t i
        cdef int64_t now = mono_ns()
        if self.segment_age_ns <= 0:
            return
        for i in range(self.n_chans):
            if (
                self.chans[i].seg.fd >= 0
                and now - self.chans[i].seg.opened_mono_ns >= self.segment_age_ns
            ):
                close_segment(self.chans[i])

    cdef chan_t* _route(self, uint8_t* p, uint32_t* n_io, validation* v) noexcept nogil:
        """Shared port: check ``C3 01`` + fingerprint + record framing, strip it in place.

        Returns the channel, or NULL (nothing changed, ``v.reason`` says why) when the
        datagram is not one fingerprint of a channel of this engine followed by valid
        records only. The records are walked twice: once to check (a rejected datagram is
        kept as it came), once to strip the framing while counting them and their time
        range into ``v``, which the per-channel validation would otherwise walk a third
        time for.
        """
        cdef uint32_t n = n_io[0]
        cdef const uint8_t* end = p + n
        cdef const uint8_t* q = p
        cdef const uint8_t* r
        cdef uint8_t* w = p
        cdef chan_t* ch = NULL
        cdef Py_ssize_t i
        cdef int k
        cdef int64_t t = 0
        cdef int why = REJECT_NONE
        if n == 0:
            v.reason = REJECT_EMPTY
            return NULL
        if n < 10 or p[0] != 0xC3 or p[1] != 0x01:
            v.reason = REJECT_FRAMING
            return NULL
        for i in range(self.n_chans):
            # two channels with one schema share a fingerprint: the lowest id gets the data
            if ch != NULL and self.chans[i].id > ch.id:
                continue
            for k in range(self.chans[i].n_fingerprints):
                if memcmp(self.chans[i].fingerprints + 8 * k, p + 2, 8) == 0:
                    ch = self.chans[i]
                    break
        if ch == NULL:
            v.reason = REJECT_FINGERPRINT
            return NULL
        while q < end:
            if end - q < 10:
                v.reason = REJECT_TRAILING  # after whole objects: q > p here
                return NULL
            if q[0] != 0xC3 or q[1] != 0x01:
                v.reason = REJECT_FRAMING
                return NULL
            if memcmp(q + 2, p + 2, 8) != 0:
                v.reason = REJECT_MIXED
                return NULL
            r = walk_record(q + 10, end, ch.program_p, ch.n_ops, &why)
            if r == NULL:
                v.reason = REJECT_TRAILING if why == REJECT_TRUNCATED and q > p else why
                return NULL
            q = r
        q = p
        v.n_records = 0
        v.bad_offset = -1
        v.reason = REJECT_NONE
        v.t_min = INT64_MAX
        v.t_max = -INT64_MAX - 1
        while q < end:
            r = q + 10
            q = skip_record(r, end, ch.program_p, ch.n_ops, ch.time_op, &t, &why)
            v.n_records += 1
            if ch.time_op >= 0:
                if t < v.t_min:
                    v.t_min = t
                if t > v.t_max:
                    v.t_max = t
            memmove(w, r, q - r)
            w += q - r
        n_io[0] = <uint32_t>(w - p)
        return ch

    cdef void _reject(
        self, chan_t* ch, const uint8_t* p, uint32_t n, int64_t recv_ns, int reason
    ) noexcept nogil:
        """Count a rejected datagram and why (REJECT_*); keep it in rejected/<channel>.rej
        when configured."""
        cdef uint8_t head[REJ_HEADER]
        cdef iovec iov[2]
        ch.c.rejected += 1
        if 0 < reason < N_REJECT_REASONS:
            ch.rejects[reason] += 1
        if ch.rej_path_p == NULL:
            return
        if ch.rej_fd < 0:
            ch.rej_fd = open(ch.rej_path_p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if ch.rej_fd < 0:
                return
            ch.rej_size = <uint64_t>lseek(ch.rej_fd, 0, SEEK_END)
        if ch.rej_size >= REJECTED_FILE_LIMIT:
            return  # keeping rejects is best effort; they are counted either way
        ch.rej_size += REJ_HEADER + n
        memcpy(head, &n, 4)
        memcpy(head + 4, &recv_ns, 8)
        iov[0].iov_base = head
        iov[0].iov_len = REJ_HEADER
        iov[1].iov_base = <void*>p
        iov[1].iov_len = n
        while writev(ch.rej_fd, iov, 2) < 0 and errno == EINTR:
            pass

    cdef int _receive(self, chan_t* sock_ch) noexcept nogil:
        """One recvmmsg batch from one socket: validate, then multicast, then store;
        returns the number of datagrams received."""
        cdef int n = -1
        cdef int i
        cdef Py_ssize_t n_acc = 0
        cdef msghdr* msg
        cdef cmsghdr* cm
        cdef timespec ts
        cdef uint32_t ovfl, length
        cdef int64_t recv_ns, tmin, tmax
        cdef Py_ssize_t count
        cdef uint8_t* p
        cdef chan_t* ch
        cdef validation v
        for i in range(self.batch):
            self.rmsgs[i].msg_hdr.msg_controllen = CMSG_BUF
            self.rmsgs[i].msg_hdr.msg_flags = 0
        while n < 0:
            n = recvmmsg(sock_ch.fd, self.rmsgs, <unsigned int>self.batch, MSG_DONTWAIT, NULL)
            if n < 0 and errno != EINTR:
                return 0  # EAGAIN (another reader, spurious wake-up) or a pending socket error
        self.n_seen += <uint64_t>n
        for i in range(n):
            msg = &self.rmsgs[i].msg_hdr
            p = self.slab_p + <size_t>i * SLOT
            length = self.rmsgs[i].msg_len
            recv_ns = 0
            # socket(7): SCM_TIMESTAMPNS carries a struct timespec; SO_RXQ_OVFL the socket's
            # cumulative drop count (a u32, only present once there was a drop).
            cm = CMSG_FIRSTHDR(msg)
            while cm != NULL:
                if cm.cmsg_level == SOL_SOCKET:
                    if cm.cmsg_type == SCM_TIMESTAMPNS:
                        memcpy(&ts, CMSG_DATA(cm), sizeof(timespec))
                        recv_ns = <int64_t>ts.tv_sec * NS + ts.tv_nsec
                    elif cm.cmsg_type == SO_RXQ_OVFL:
                        memcpy(&ovfl, CMSG_DATA(cm), 4)
                        sock_ch.c.kernel_drops += <uint32_t>(ovfl - sock_ch.ovfl)
                        sock_ch.ovfl = ovfl
                cm = CMSG_NXTHDR(msg, cm)
            if recv_ns == 0:
                recv_ns = real_ns()
            self.dg_chan[i] = NULL
            if msg.msg_flags & MSG_TRUNC:
                self._reject(
                    sock_ch, p, SLOT if length > SLOT else length, recv_ns, REJECT_OVERSIZE
                )
                continue
            if sock_ch.id == 0:
                ch = self._route(p, &length, &v)  # checked, stripped and counted
                if ch == NULL:
                    if v.reason == REJECT_FINGERPRINT:
                        note_fingerprint(sock_ch, p + 2)
                    self._reject(sock_ch, p, length, recv_ns, v.reason)
                    continue
                count = v.n_records
            elif sock_ch.fixed_size > 0 and self._fixed_fast:
                # a fixed layout has no long field, so no time field: v is not needed
                ch = sock_ch
                count = <Py_ssize_t>(length // ch.fixed_size)
                if length == 0 or length % ch.fixed_size != 0:
                    count = -1
                    v.reason = (
                        REJECT_EMPTY if length == 0
                        else REJECT_TRUNCATED if length < ch.fixed_size
                        else REJECT_TRAILING
                    )
            else:
                ch = sock_ch
                count = validate_records(p, length, ch.program_p, ch.n_ops, ch.time_op, &v)
                if v.bad_offset >= 0:
                    count = -1
            if count < 0:
                # shared-port datagrams were checked by _route: this is a per-channel one
                self._reject(ch, p, length, recv_ns, v.reason)
                continue
            if ch.time_op >= 0:  # v came from _route or validate_records
                tmin = v.t_min * ch.time_scale
                tmax = v.t_max * ch.time_scale
                # source clocks: flagged, stored as sent (docs/relay-internals.md)
                if ch.c.datagrams and tmin < ch.t_last:
                    ch.c.time_backwards += 1
                if tmax > recv_ns + FUTURE_NS:
                    ch.c.time_future += 1
                ch.t_last = tmax
            else:
                tmin = tmax = recv_ns
            ch.c.datagrams += 1
            ch.c.records += <uint64_t>count
            ch.c.bytes += length
            if tmax > ch.c.t_newest:
                ch.c.t_newest = tmax
            self.dg_p[i] = p
            self.dg_len[i] = length
            self.dg_recv_ns[i] = recv_ns
            self.dg_nrec[i] = <uint32_t>count
            self.dg_tmin[i] = tmin
            self.dg_tmax[i] = tmax
            self.dg_seq[i] = ch.seq
            ch.seq += 1
            self.dg_chan[i] = ch
            self.acc[n_acc] = i
            n_acc += 1
        if n_acc:
            self._send(n_acc)
            if self.cache_dir is not None:
                self._store(n_acc)
        return n

    cdef void _send(self, Py_ssize_t n_acc) noexcept nogil:
        """The batch's multicast: the full-rate group gets every accepted datagram, the
        decimated group every Nth; runs of one channel go out as UDP GSO messages."""
        cdef Py_ssize_t a, i, n_dec = 0, k, end
        cdef wire_header_t* h
        cdef chan_t* ch
        for a in range(n_acc):
            i = self.acc[a]
            ch = self.dg_chan[i]
            h = <wire_header_t*>(self.hdr_p + a * HEADER_SIZE)
            h.magic = WIRE_MAGIC
            h.version = 1
            h.kind = 0
            h.header_len = HEADER_SIZE
            h.channel_id = ch.id
            h.n_records = self.dg_nrec[i]
            h.seq = self.dg_seq[i]
            h.recv_ns = self.dg_recv_ns[i]
            self.siov[2 * a].iov_base = h
            self.siov[2 * a].iov_len = HEADER_SIZE
            self.siov[2 * a + 1].iov_base = self.dg_p[i]
            self.siov[2 * a + 1].iov_len = self.dg_len[i]
            self.s_pos[a] = a
            if self.dg_seq[i] % ch.decimation == 0:
                # the decimated group's [header, payload] pairs, packed for GSO runs
                self.diov[2 * n_dec] = self.siov[2 * a]
                self.diov[2 * n_dec + 1] = self.siov[2 * a + 1]
                self.d_pos[n_dec] = a
                n_dec += 1
        k = self._messages(self.siov, self.s_pos, n_acc, self.full_name, KIND_FULL, 0)
        self._send_messages(0, k, self.send_fd)
        end = self._messages(self.diov, self.d_pos, n_dec, self.dec_name, KIND_DECIMATED, k)
        self._send_messages(k, end, self.dec_fd)

    cdef Py_ssize_t _messages(
        self, iovec* iov, Py_ssize_t* pos, Py_ssize_t n, sockaddr_in* addr, uint8_t kind,
        Py_ssize_t k,
    ) noexcept nogil:
        """Messages ``smsgs[k:]`` for ``n`` datagrams whose [header, payload] pairs are
        ``iov[0:2n]`` (accepted positions ``pos``); returns the next free message index.

        With GSO a message carries a run of one channel's datagrams of one size, the last
        of which may be shorter (udp(7), UDP_SEGMENT: the kernel cuts the message every
        gso_size bytes, so every datagram leaves whole and in order)."""
        cdef Py_ssize_t a = 0, b
        cdef chan_t* ch
        cdef msghdr* msg
        cdef uint32_t size, nxt
        while a < n:
            ch = self.dg_chan[self.acc[pos[a]]]
            size = HEADER_SIZE + self.dg_len[self.acc[pos[a]]]
            b = a + 1
            if self._gso:
                while (
                    b < n
                    and b - a < GSO_MAX_SEGMENTS
                    and self.dg_chan[self.acc[pos[b]]] == ch
                    and HEADER_SIZE + self.dg_len[self.acc[pos[b]]] == size
                    and (b - a + 1) * size <= GSO_MAX_BYTES
                ):
                    b += 1
                if b < n and b - a < GSO_MAX_SEGMENTS and self.dg_chan[self.acc[pos[b]]] == ch:
                    nxt = HEADER_SIZE + self.dg_len[self.acc[pos[b]]]
                    if nxt < size and (b - a) * size + nxt <= GSO_MAX_BYTES:
                        b += 1  # a shorter datagram ends the run
            msg = &self.smsgs[k].msg_hdr
            msg.msg_name = addr
            msg.msg_namelen = sizeof(sockaddr_in) if addr != NULL else 0
            msg.msg_iov = &iov[2 * a]
            msg.msg_iovlen = <size_t>(2 * (b - a))
            msg.msg_flags = 0
            if b - a > 1:
                set_udp_segment(msg, self.scmsg_p + k * SCMSG_BUF, <uint16_t>size)
            else:
                msg.msg_control = NULL
                msg.msg_controllen = 0
            self.s_chan[k] = ch
            self.s_count[k] = <uint32_t>(b - a)
            self.s_kind[k] = kind
            k += 1
            a = b
        return k

    cdef void _count_sent(self, Py_ssize_t m) noexcept nogil:
        if self.s_kind[m] == KIND_FULL:
            self.s_chan[m].c.multicast_sent += self.s_count[m]
        else:
            self.s_chan[m].c.multicast_decimated += self.s_count[m]

    cdef void _send_messages(self, Py_ssize_t off, Py_ssize_t k, int fd) noexcept nogil:
        """sendmmsg ``smsgs[off:k]`` on ``fd``; failures are counted, never fatal."""
        cdef Py_ssize_t m
        cdef int r, e
        cdef bint waited = False
        cdef pollfd pfd
        while off < k:
            r = sendmmsg(fd, self.smsgs + off, <unsigned int>(k - off), MSG_DONTWAIT)
            if r > 0:
                for m in range(off, off + r):
                    self._count_sent(m)
                off += r
                continue
            e = errno
            if e == EINTR:
                continue
            if (e == EAGAIN or e == ENOBUFS) and not waited:
                # the send buffer is full: wait for room once per batch, at most 2 ms
                waited = True
                pfd.fd = fd
                pfd.events = POLLOUT
                poll(&pfd, 1, 2)
                continue
            if self.s_count[off] > 1 and (
                e == EINVAL or e == EIO or e == EMSGSIZE or e == EOPNOTSUPP
            ):
                # this route cannot do UDP GSO: stop trying, send the run one by one
                self._gso = False
                self._send_one_by_one(off, fd)
            else:
                self.s_chan[off].c.multicast_errors += self.s_count[off]
            off += 1

    cdef void _send_one_by_one(self, Py_ssize_t k, int fd) noexcept nogil:
        """Message ``k`` (a GSO run) as one sendmsg per datagram."""
        cdef msghdr msg
        cdef msghdr* run = &self.smsgs[k].msg_hdr
        cdef Py_ssize_t j
        cdef chan_t* ch = self.s_chan[k]
        cdef ssize_t r
        memset(&msg, 0, sizeof(msghdr))
        msg.msg_name = run.msg_name
        msg.msg_namelen = run.msg_namelen
        msg.msg_iovlen = 2
        for j in range(self.s_count[k]):
            msg.msg_iov = &run.msg_iov[2 * j]
            r = sendmsg(fd, &msg, MSG_DONTWAIT)
            while r < 0 and errno == EINTR:
                r = sendmsg(fd, &msg, MSG_DONTWAIT)
            if r < 0:
                ch.c.multicast_errors += 1
            elif self.s_kind[k] == KIND_FULL:
                ch.c.multicast_sent += 1
            else:
                ch.c.multicast_decimated += 1

    cdef void _store(self, Py_ssize_t n_acc) noexcept nogil:
        """Append the batch: one block per channel (a shared-port batch may hold several)."""
        cdef Py_ssize_t a, b, m
        cdef chan_t* ch = self.dg_chan[self.acc[0]]
        cdef bint one_channel = True
        for a in range(1, n_acc):
            if self.dg_chan[self.acc[a]] != ch:
                one_channel = False
                break
        if one_channel:
            self._store_channel(ch, self.acc, n_acc)
            return
        memset(self.block_done, 0, n_acc)
        for a in range(n_acc):
            if self.block_done[a]:
                continue
            ch = self.dg_chan[self.acc[a]]
            m = 0
            for b in range(a, n_acc):
                if not self.block_done[b] and self.dg_chan[self.acc[b]] == ch:
                    self.blk[m] = self.acc[b]
                    m += 1
                    self.block_done[b] = 1
            self._store_channel(ch, self.blk, m)

    cdef void _store_channel(self, chan_t* ch, Py_ssize_t* idx, Py_ssize_t m) noexcept nogil:
        """Write datagrams ``idx[0:m]`` of the batch as block(s) of ``ch``'s segment,
        rotating when a block would not fit or the segment is too old."""
        cdef Py_ssize_t k = 0, j, i
        cdef size_t n_bytes, size
        cdef uint64_t n_records
        cdef int64_t now = mono_ns()
        while k < m:
            if (
                ch.seg.fd >= 0
                and self.segment_age_ns > 0
                and now - ch.seg.opened_mono_ns >= self.segment_age_ns
            ):
                close_segment(ch)
            if ch.seg.fd < 0:
                i = idx[k]
                if not self._open_segment(ch, 20 + self.dg_len[i] + SYNC_SIZE):
                    ch.c.store_failed += <uint64_t>(m - k)
                    return
            n_bytes = 0
            n_records = 0
            j = k
            while j < m:
                i = idx[j]
                size = (
                    varint_size(<int64_t>(n_records + self.dg_nrec[i]))
                    + varint_size(<int64_t>(n_bytes + self.dg_len[i]))
                    + n_bytes + self.dg_len[i] + SYNC_SIZE
                )
                if ch.seg.end + size > ch.seg.capacity:
                    break
                n_bytes += self.dg_len[i]
                n_records += self.dg_nrec[i]
                j += 1
            if j == k:
                if ch.seg.n_blocks > 0:
                    close_segment(ch)  # full: rotate
                    continue
                ch.c.store_failed += 1  # cannot happen: the segment was sized for it
                k += 1
                continue
            if self._write_block(ch, idx + k, j - k, n_bytes, n_records) != 0:
                ch.c.store_failed += <uint64_t>(j - k)
            k = j

    cdef bint _open_segment(self, chan_t* ch, size_t need) noexcept nogil:
        """Create and pre-allocate a new segment and write its header; False on failure
        (disk full...), after which no attempt is made for a second."""
        cdef segment_t* seg = &ch.seg
        cdef int64_t now = mono_ns()
        cdef int64_t t_ns
        cdef char path[MAX_PATH]
        cdef size_t capacity
        cdef int err = 0, tries
        cdef ssize_t got
        cdef bint mapped
        if now < ch.retry_mono_ns:
            return False
        capacity = self.segment_size
        if capacity < ch.header_len + SYNC_SIZE + 64:
            capacity = ch.header_len + SYNC_SIZE + 64
        if capacity < ch.header_len + SYNC_SIZE + need:
            capacity = ch.header_len + SYNC_SIZE + need
        seg.fd = seg.idx_fd = seg.recv_fd = -1
        seg.n_blocks = 0
        t_ns = real_ns()
        for tries in range(1000):
            make_stem(seg.stem, t_ns)
            segment_path(path, ch, b".avro")
            seg.fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if seg.fd >= 0:
                break
            err = errno
            if err == EEXIST:
                t_ns += 1  # two segments opened in the same nanosecond: next name
                continue
            if err == ENOENT and tries == 0:
                mkdir(ch.dir_p, 0o755)  # the channel folder was removed under us
                continue
            break
        if seg.fd < 0:
            ch.store_errno = err
            ch.retry_mono_ns = now + NS
            return False
        # posix_fallocate(3): the blocks are reserved now, so a full disk shows here and
        # never in the middle of a block later.
        err = posix_fallocate(seg.fd, 0, <off_t>capacity)
        mapped = err == 0
        if err == EOPNOTSUPP or err == EINVAL:
            err = 0 if ftruncate(seg.fd, <off_t>capacity) == 0 else errno
        seg.capacity = capacity
        if err == 0:
            segment_path(path, ch, b".idx")
            seg.idx_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if seg.idx_fd < 0:
                err = errno
        if err == 0:
            segment_path(path, ch, b".recv")
            seg.recv_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if seg.recv_fd < 0:
                err = errno
        if err == 0:
            if self.use_sync_override:
                memcpy(seg.sync, self.sync_override, SYNC_SIZE)
            else:
                got = getrandom(seg.sync, SYNC_SIZE, 0)
                if got != SYNC_SIZE:  # cannot happen after boot; never leave a zero marker
                    t_ns = real_ns() ^ <int64_t>ch
                    memcpy(seg.sync, &t_ns, 8)
                    t_ns = mono_ns() ^ (real_ns() << 7)
                    memcpy(seg.sync + 8, &t_ns, 8)
            err = pwrite_all(seg.fd, ch.header_p, ch.header_len, 0)
        if err == 0:
            err = pwrite_all(seg.fd, seg.sync, SYNC_SIZE, ch.header_len)
        if err != 0:
            ch.store_errno = err
            seg.n_blocks = 0
            close_segment(ch)  # removes the files: the segment has no block
            ch.retry_mono_ns = now + NS
            return False
        seg.header_size = ch.header_len + SYNC_SIZE
        seg.map = NULL
        if mapped and self._use_map:
            self._map_segment(ch)
        seg.end = seg.header_size
        seg.idx_size = 0
        seg.recv_size = 0
        seg.opened_mono_ns = now
        ch.c.segments += 1
        return True

    cdef void _map_segment(self, chan_t* ch) noexcept nogil:
        """Map the new, fully pre-allocated segment for block copies, when its file system
        guarantees such stores cannot fail, and have the populate thread start on it."""
        cdef segment_t* seg = &ch.seg
        cdef statfs fs
        cdef void* addr
        if fstatfs(seg.fd, &fs) != 0 or not (
            fs.f_type == EXT4_MAGIC or fs.f_type == XFS_MAGIC or fs.f_type == TMPFS_MAGIC
        ):
            return
        addr = mmap(NULL, seg.capacity, PROT_READ | PROT_WRITE, MAP_SHARED, seg.fd, 0)
        if addr == MAP_FAILED:
            return
        seg.map = <uint8_t*>addr
        # 4 KiB page-cache pages, not 2 MiB folios (MADV_HUGEPAGE, ``_huge_map``). With
        # memory at hand both are populated far faster than the loop writes (5.5 and 9
        # GB/s here); but a VM whose balloon hands free 2 MiB blocks back to the host at
        # once (free page reporting) makes every new folio fault in the host too (0.5-0.7
        # GB/s, behind the loop: blocks went to pwritev), while 4 KiB pages mostly come
        # from memory it kept (0.7-5.5 GB/s). Same relay rate when memory is at hand
        # (docs/performance.md, "Relay", session 4).
        if self._huge_map:
            madvise(addr, seg.capacity, MADV_HUGEPAGE)
        seg.pop_done = 0
        seg.pop_target = 0
        seg.pop_asked = 0
        seg.pop_failed = False
        seg.pop_busy = False
        seg.pop_queued = False
        request_populate(ch, 2 * POP_AHEAD)

    cdef int _write_block(
        self, chan_t* ch, Py_ssize_t* idx, Py_ssize_t m, size_t n_bytes, uint64_t n_records
    ) noexcept nogil:
        """docs/cache.md write order: .recv entries, the .idx entry, then the block."""
        cdef segment_t* seg = &ch.seg
        cdef Py_ssize_t j, i
        cdef recv_entry_t* rec
        cdef idx_entry_t entry
        cdef int64_t t_min = INT64_MAX
        cdef int64_t t_max = -INT64_MAX - 1
        cdef uint8_t* q
        cdef uint8_t* w
        cdef uint8_t counts[20]
        cdef int err
        cdef size_t size = (
            varint_size(<int64_t>n_records) + varint_size(<int64_t>n_bytes) + n_bytes + SYNC_SIZE
        )
        for j in range(m):
            i = idx[j]
            rec = <recv_entry_t*>(self.recv_buf_p + j * RECV_ENTRY)
            rec.recv_ns = self.dg_recv_ns[i]
            rec.n_records = self.dg_nrec[i]
            rec.seq = <uint32_t>self.dg_seq[i]
            if self.dg_tmin[i] < t_min:
                t_min = self.dg_tmin[i]
            if self.dg_tmax[i] > t_max:
                t_max = self.dg_tmax[i]
        entry.offset = seg.end
        entry.size = <uint32_t>size
        entry.n_records = <uint32_t>n_records
        entry.n_datagrams = <uint32_t>m
        entry.seq_first = <uint32_t>self.dg_seq[idx[0]]
        entry.t_min = t_min
        entry.t_max = t_max
        err = pwrite_all(seg.recv_fd, self.recv_buf_p, <size_t>m * RECV_ENTRY, seg.recv_size)
        if err == 0:
            err = pwrite_all(seg.idx_fd, <uint8_t*>&entry, IDX_ENTRY, seg.idx_size)
        if err != 0:
            # disk full: undo the partial entries, close the segment at its last block
            ch.store_errno = err
            ftruncate(seg.recv_fd, <off_t>seg.recv_size)
            ftruncate(seg.idx_fd, <off_t>seg.idx_size)
            close_segment(ch)
            ch.retry_mono_ns = mono_ns() + NS
            return -1
        seg.recv_size += <uint64_t>m * RECV_ENTRY
        seg.idx_size += IDX_ENTRY
        q = write_varint(counts, <int64_t>n_records)
        q = write_varint(q, <int64_t>n_bytes)
        if seg.map != NULL and sd_load_acquire(&seg.pop_done) >= seg.end + size:
            # the populate thread has made these pages writable: plain copies, no fault
            w = seg.map + seg.end
            memcpy(w, counts, <size_t>(q - counts))
            w += q - counts
            for j in range(m):
                i = idx[j]
                memcpy(w, self.dg_p[i], self.dg_len[i])
                w += self.dg_len[i]
            memcpy(w, seg.sync, SYNC_SIZE)
            self._map_blocks += 1
            self._block_written(ch, size, n_records)
            return 0
        # else the block, gathered from the receive slab: one pwritev
        self.wiov[0].iov_base = counts
        self.wiov[0].iov_len = <size_t>(q - counts)
        for j in range(m):
            i = idx[j]
            self.wiov[1 + j].iov_base = self.dg_p[i]
            self.wiov[1 + j].iov_len = self.dg_len[i]
        self.wiov[1 + m].iov_base = seg.sync
        self.wiov[1 + m].iov_len = SYNC_SIZE
        err = pwritev_all(seg.fd, self.wiov, m + 2, seg.end)
        if err != 0:
            ch.store_errno = err
            # cannot happen in pre-allocated space; keep the segment consistent anyway
            ftruncate(seg.recv_fd, <off_t>(seg.recv_size - <uint64_t>m * RECV_ENTRY))
            ftruncate(seg.idx_fd, <off_t>(seg.idx_size - IDX_ENTRY))
            seg.recv_size -= <uint64_t>m * RECV_ENTRY
            seg.idx_size -= IDX_ENTRY
            close_segment(ch)
            ch.retry_mono_ns = mono_ns() + NS
            return -1
        self._block_written(ch, size, n_records)
        return 0

    cdef void _block_written(self, chan_t* ch, size_t size, uint64_t n_records) noexcept nogil:
        """Count a block written; ask for more of the map populated when due."""
        cdef segment_t* seg = &ch.seg
        seg.end += size
        seg.n_blocks += 1
        ch.c.blocks += 1
        ch.c.stored_records += n_records
        if (
            seg.map != NULL
            and seg.pop_asked < seg.capacity
            and seg.pop_asked < seg.end + POP_AHEAD
        ):
            request_populate(ch, seg.end + 2 * POP_AHEAD)

    # ------------------------------------------------------------ reporting, closing

    def stats(self):
        """``{channel_id: {counter: int}}`` (docs/relay-internals.md); any thread.

        With a shared socket, the pseudo channel 0 counts the shared port's rejects and
        kernel drops.
        """
        cdef Py_ssize_t i
        with self._lock:
            out = {}
            for i in range(self.n_chans):
                read_drops(self.chans[i])
                out[self.chans[i].id] = _counters(self.chans[i])
            if self.shared != NULL:
                read_drops(self.shared)
                out[0] = _counters(self.shared)
            return out

    def rejects(self):
        """``{channel_id: {reason: n}}``: rejected datagrams by reason (the names of
        ``speeddata.validate.REJECT_REASONS``; reasons with none left out). The shared
        port's pseudo channel is 0; any thread."""
        cdef Py_ssize_t i
        with self._lock:
            out = {}
            for i in range(self.n_chans):
                out[self.chans[i].id] = _reasons(self.chans[i])
            if self.shared != NULL:
                out[0] = _reasons(self.shared)
            return out

    def unknown_fingerprints(self):
        """``{fingerprint hex: datagrams}`` that came to the shared port with a fingerprint
        no channel of this engine has (the first 16 distinct ones); any thread."""
        cdef uint32_t i
        with self._lock:
            if self.shared == NULL:
                return {}
            return {
                bytes(self.shared.unknown_fp[i][:8]).hex(): self.shared.unknown_fp_n[i]
                for i in range(self.shared.n_unknown_fp)
            }

    def open_segments(self):
        """Paths of the ``.avro`` segments being written."""
        cdef Py_ssize_t i
        cdef chan_t* ch
        with self._lock:
            out = set()
            if self.cache_dir is None:
                return out
            for i in range(self.n_chans):
                ch = self.chans[i]
                if ch.seg.fd >= 0:
                    name = (<bytes>ch.seg.stem[:strlen(ch.seg.stem)]).decode()
                    channel = self._channels[ch.id][0]
                    out.add(self.cache_dir / channel.name / f"{name}.avro")
            return out

    def close(self):
        """Trim and close every segment and release the sockets' registrations.

        Call after ``run()`` returned; idempotent. The caller closes the channel sockets.
        """
        cdef Py_ssize_t i
        with self._lock:
            if self._running:
                raise RuntimeError("stop() the engine and let run() return before close()")
            if self._closed:
                return
            self._closed = True
            # the channel structs stay (stats() still answers); __dealloc__ frees them
            for i in range(self.n_chans):
                read_drops(self.chans[i])  # the sockets' last word, before letting go
                release_channel(self.chans[i])
            if self.shared != NULL:
                read_drops(self.shared)
                release_channel(self.shared)
            if self.epfd >= 0:
                close(self.epfd)
                self.epfd = -1
            if self.wakefd >= 0:
                close(self.wakefd)
                self.wakefd = -1
            self._send_sock.close()
            self._dec_sock.close()
            self.send_fd = self.dec_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef dict _reasons(chan_t* ch):
    cdef int r
    return {REJECT_REASONS[r]: ch.rejects[r] for r in range(1, N_REJECT_REASONS) if ch.rejects[r]}


cdef dict _counters(chan_t* ch):
    cdef counters_t* c = &ch.c
    return {
        "datagrams": c.datagrams,
        "records": c.records,
        "bytes": c.bytes,
        "rejected": c.rejected,
        # the larger of SO_RXQ_OVFL's count (with each datagram) and SO_MEMINFO's (now)
        "kernel_drops": c.kernel_drops if c.kernel_drops > ch.drops_seen else ch.drops_seen,
        "multicast_sent": c.multicast_sent,
        "multicast_decimated": c.multicast_decimated,
        "multicast_errors": c.multicast_errors,
        "stored_records": c.stored_records,
        "store_failed": c.store_failed,
        "blocks": c.blocks,
        "segments": c.segments,
        "t_newest": c.t_newest,
        "time_backwards": c.time_backwards,
        "time_future": c.time_future,
        "store_errno": ch.store_errno,
    }


# ---------------------------------------------------------------- benchmark baseline

def bare_drain(sock, int batch=64, double idle_timeout=0.0, bint timestamps=False):
    """Benchmark baseline: recvmmsg ``sock`` until it is empty, only counting.

    Returns ``(datagrams, bytes)``. With ``idle_timeout`` > 0 it waits that long for more
    before calling the socket empty. Same buffers and batch as the engine; no cmsgs, or
    with ``timestamps`` the engine's (SO_TIMESTAMPNS and SO_RXQ_OVFL, read per datagram).
    """
    cdef int fd = sock.fileno()
    cdef uint8_t* slab_p = <uint8_t*>PyMem_Calloc(batch, SLOT)
    cdef mmsghdr* msgs = <mmsghdr*>PyMem_Calloc(batch, sizeof(mmsghdr))
    cdef iovec* iov = <iovec*>PyMem_Calloc(batch, sizeof(iovec))
    cdef uint8_t* control_p = <uint8_t*>PyMem_Calloc(batch, CMSG_BUF)
    cdef uint64_t count = 0, n_bytes = 0
    cdef volatile int64_t t_sum = 0   # the timestamps are read, as the engine does
    cdef cmsghdr* cm
    cdef timespec ts
    cdef int i, n
    cdef int timeout_ms = <int>(idle_timeout * 1000)
    cdef pollfd pfd
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}")
    try:
        if slab_p == NULL or msgs == NULL or iov == NULL or control_p == NULL:
            raise MemoryError()
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        for i in range(batch):
            iov[i].iov_base = slab_p + <size_t>i * SLOT
            iov[i].iov_len = SLOT
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
        pfd.fd = fd
        pfd.events = POLLIN
        with nogil:
            while True:
                if timestamps:
                    for i in range(batch):
                        msgs[i].msg_hdr.msg_control = control_p + <size_t>i * CMSG_BUF
                        msgs[i].msg_hdr.msg_controllen = CMSG_BUF
                n = recvmmsg(fd, msgs, <unsigned int>batch, MSG_DONTWAIT, NULL)
                if n < 0:
                    if errno == EINTR:
                        continue
                    if errno == EAGAIN and timeout_ms > 0 and poll(&pfd, 1, timeout_ms) > 0:
                        continue
                    break
                count += <uint64_t>n
                for i in range(n):
                    n_bytes += msgs[i].msg_len
                    if timestamps:
                        cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr)
                        while cm != NULL:
                            if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
                                memcpy(&ts, CMSG_DATA(cm), sizeof(timespec))
                                t_sum += ts.tv_nsec
                            cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)
    finally:
        PyMem_Free(slab_p)
        PyMem_Free(msgs)
        PyMem_Free(iov)
        PyMem_Free(control_p)
    return count, n_bytes


def blast(
    sock, address, datagrams, Py_ssize_t count, double rate=0.0, double duration=0.0,
    bint gso=True, bint smooth=False,
):
    """Benchmark sender: ``count`` datagrams (cycling through ``datagrams``) to ``address``
    with sendmmsg, 64 per call, without the GIL.

    ``rate`` > 0 paces the sends to that many datagrams per second; ``duration`` > 0
    stops after that many seconds. With ``gso`` and datagrams all of one size, each run
    of up to 64 goes out in one UDP GSO send (the sender then keeps up with the relay).
    ``smooth`` paces like a steady source: each datagram is sent alone at its due time
    (sleeping until then, no GSO); only datagrams already late go out together. Without
    it the sender sleeps only when 50 us ahead and sends what is due in one call, so
    datagrams arrive in bursts. Returns the number sent (EAGAIN/ENOBUFS are retried after
    a short wait).
    """
    cdef int fd = sock.fileno()
    cdef Py_ssize_t n_kinds = len(datagrams)
    cdef Py_ssize_t i, k, sent = 0, todo
    cdef int r
    cdef sockaddr_in addr
    cdef mmsghdr* msgs = NULL
    cdef iovec* iov = NULL
    cdef int64_t t0, now, due, stop_at
    cdef timespec pause
    cdef pollfd pfd
    cdef list keep = [bytes(d) for d in datagrams]
    cdef msghdr gmsg
    cdef uint8_t gcontrol[SCMSG_BUF]
    cdef uint16_t seg_size = 0
    cdef Py_ssize_t max_run = 64
    cdef int64_t lead = 50_000
    if n_kinds == 0:
        raise ValueError("no datagrams to send")
    host, port = address
    if not host.startswith("127."):
        raise ValueError("the benchmark sender sends to 127.0.0.0/8 only")
    set_addr(&addr, host, port)
    msgs = <mmsghdr*>PyMem_Calloc(n_kinds, sizeof(mmsghdr))
    iov = <iovec*>PyMem_Calloc(n_kinds, sizeof(iovec))
    try:
        if msgs == NULL or iov == NULL:
            raise MemoryError()
        for i in range(n_kinds):
            iov[i].iov_base = <char*>(<bytes>keep[i])
            iov[i].iov_len = len(keep[i])
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
            msgs[i].msg_hdr.msg_name = &addr
            msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        pfd.fd = fd
        pfd.events = POLLOUT
        if smooth:
            gso = False
            lead = 0
        if gso and len({len(d) for d in keep}) == 1 and len(keep[0]) <= GSO_MAX_BYTES // 2:
            seg_size = <uint16_t>len(keep[0])
            max_run = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg_size)
            memset(&gmsg, 0, sizeof(msghdr))
            gmsg.msg_name = &addr
            gmsg.msg_namelen = sizeof(sockaddr_in)
            set_udp_segment(&gmsg, gcontrol, seg_size)
        with nogil:
            t0 = mono_ns()
            stop_at = t0 + <int64_t>(duration * 1e9) if duration > 0 else INT64_MAX
            while sent < count:
                now = mono_ns()
                if now >= stop_at:
                    break
                if rate > 0:
                    due = t0 + <int64_t>(sent / rate * 1e9)
                    if due > now + lead:
                        pause.tv_sec = 0
                        pause.tv_nsec = <long>(due - now)
                        nanosleep(&pause, NULL)
                        continue
                k = sent % n_kinds
                todo = n_kinds - k
                if todo > max_run:
                    todo = max_run
                if todo > count - sent:
                    todo = count - sent
                if smooth and rate > 0:
                    late = <Py_ssize_t>((now - t0) * rate / 1e9) + 1 - sent
                    if todo > late:
                        todo = late if late > 1 else 1
                if seg_size > 0 and todo > 1:
                    gmsg.msg_iov = &iov[k]
                    gmsg.msg_iovlen = <size_t>todo
                    r = -1 if sendmsg(fd, &gmsg, 0) < 0 else <int>todo
                    if r < 0 and (errno == EINVAL or errno == EIO):
                        seg_size = 0  # no GSO on this route: one datagram per message
                        max_run = 64
                        continue
                else:
                    r = sendmmsg(fd, msgs + k, <unsigned int>todo, 0)
                if r > 0:
                    sent += r
                elif errno == EAGAIN or errno == ENOBUFS:
                    poll(&pfd, 1, 1)
                elif errno != EINTR:
                    break
    finally:
        PyMem_Free(msgs)
        PyMem_Free(iov)
    return sent


def bare_forward(sock, out, group, int batch=64, double idle_timeout=1.0, bint gso=False):
    """Benchmark baseline: the bare forwarder of ``bench_relay`` (docs/performance.md).

    poll, recvmmsg ``sock``, and sendmmsg every datagram to ``group`` on ``out``, behind a
    constant 32-byte header as the relay's: no cache, no validation, no timestamps. With
    ``gso``, runs of equal-size datagrams go out as one UDP GSO message each, as the
    relay sends them. Returns the number forwarded once ``sock`` has had nothing for
    ``idle_timeout`` seconds (counting from the call).
    """
    cdef int fd = sock.fileno()
    cdef int out_fd = out.fileno()
    cdef uint8_t* slab_p = <uint8_t*>PyMem_Calloc(batch, SLOT)
    cdef mmsghdr* msgs = <mmsghdr*>PyMem_Calloc(batch, sizeof(mmsghdr))
    cdef mmsghdr* smsgs = <mmsghdr*>PyMem_Calloc(batch, sizeof(mmsghdr))
    cdef iovec* iov = <iovec*>PyMem_Calloc(batch, sizeof(iovec))
    cdef iovec* siov = <iovec*>PyMem_Calloc(2 * batch, sizeof(iovec))
    cdef uint8_t* scmsg_p = <uint8_t*>PyMem_Calloc(batch, SCMSG_BUF)
    cdef uint8_t header[HEADER_SIZE]
    cdef sockaddr_in addr
    cdef uint64_t count = 0
    cdef int i, j, n, r, off, k
    cdef int timeout_ms = <int>(idle_timeout * 1000)
    cdef msghdr* msg
    cdef pollfd pfd
    cdef pollfd opfd
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}")
    set_addr(&addr, group[0], group[1])
    memset(header, 0, HEADER_SIZE)
    try:
        if (
            slab_p == NULL or msgs == NULL or smsgs == NULL or iov == NULL or siov == NULL
            or scmsg_p == NULL
        ):
            raise MemoryError()
        for i in range(batch):
            iov[i].iov_base = slab_p + <size_t>i * SLOT
            iov[i].iov_len = SLOT
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
            siov[2 * i].iov_base = header
            siov[2 * i].iov_len = HEADER_SIZE
            siov[2 * i + 1].iov_base = iov[i].iov_base
            smsgs[i].msg_hdr.msg_name = &addr
            smsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        pfd.fd = fd
        pfd.events = POLLIN
        opfd.fd = out_fd
        opfd.events = POLLOUT
        with nogil:
            while True:
                n = recvmmsg(fd, msgs, <unsigned int>batch, MSG_DONTWAIT, NULL)
                if n < 0:
                    if errno == EINTR:
                        continue
                    if errno == EAGAIN and poll(&pfd, 1, timeout_ms) > 0:
                        continue
                    break
                for i in range(n):
                    siov[2 * i + 1].iov_len = msgs[i].msg_len
                k = 0  # messages: one per datagram, or one per equal-size run with gso
                i = 0
                while i < n:
                    j = i + 1
                    if gso:
                        while (
                            j < n and j - i < GSO_MAX_SEGMENTS
                            and msgs[j].msg_len == msgs[i].msg_len
                            and (j - i + 1) * (HEADER_SIZE + msgs[i].msg_len) <= GSO_MAX_BYTES
                        ):
                            j += 1
                    msg = &smsgs[k].msg_hdr
                    msg.msg_iov = &siov[2 * i]
                    msg.msg_iovlen = <size_t>(2 * (j - i))
                    if j - i > 1:
                        set_udp_segment(
                            msg, scmsg_p + k * SCMSG_BUF,
                            <uint16_t>(HEADER_SIZE + msgs[i].msg_len),
                        )
                    else:
                        msg.msg_control = NULL
                        msg.msg_controllen = 0
                    k += 1
                    i = j
                off = 0
                while off < k:
                    r = sendmmsg(out_fd, smsgs + off, <unsigned int>(k - off), 0)
                    if r > 0:
                        off += r
                    elif errno == EAGAIN or errno == ENOBUFS:
                        poll(&opfd, 1, 2)
                    elif errno != EINTR:
                        break
                count += <uint64_t>n
    finally:
        PyMem_Free(slab_p)
        PyMem_Free(msgs)
        PyMem_Free(smsgs)
        PyMem_Free(iov)
        PyMem_Free(siov)
        PyMem_Free(scmsg_p)
    return count
