# cython: language_level=3
"""Structures of the compiled relay engine (speeddata._relay); see docs/relay-internals.md."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from speeddata._avro cimport N_REJECT_REASONS
from speeddata._validate cimport validation
from speeddata.includes.system cimport (
    epoll_event,
    iovec,
    mmsghdr,
    pthread_cond_t,
    pthread_mutex_t,
    sockaddr_in,
)


# Per-channel counters, as reported by Engine.stats() (docs/relay-internals.md).
ctypedef struct counters_t:
    uint64_t datagrams              # datagrams accepted (valid)
    uint64_t records                # records in accepted datagrams
    uint64_t bytes                  # payload bytes of accepted datagrams
    uint64_t rejected               # datagrams refused by the validator or the framing
    uint64_t kernel_drops           # datagrams the kernel dropped on the socket (SO_RXQ_OVFL)
    uint64_t multicast_sent         # datagrams sent to the full-rate group
    uint64_t multicast_decimated    # datagrams sent to the decimated group
    uint64_t multicast_errors       # sends that failed
    uint64_t stored_records         # records appended to the cache
    uint64_t store_failed           # datagrams not stored (disk full, write error)
    uint64_t blocks                 # blocks written
    uint64_t segments               # segments opened
    int64_t t_newest                # newest source time seen, ns (0 if none)
    uint64_t time_backwards         # datagrams with a source time before the previous one's
    uint64_t time_future            # datagrams with a source time > FUTURE_NS after receipt


# The segment being written (docs/cache.md); fd < 0 when none is open.
ctypedef struct segment_t:
    int fd                          # the .avro file, pre-allocated to capacity
    int idx_fd                      # the .idx file
    int recv_fd                     # the .recv file
    size_t capacity                 # bytes pre-allocated
    size_t end                      # end of the last complete block
    size_t header_size              # bytes of the header, sync marker included
    uint64_t idx_size               # bytes written to .idx
    uint64_t recv_size              # bytes written to .recv
    uint64_t n_blocks               # blocks written
    int64_t opened_mono_ns          # CLOCK_MONOTONIC when opened (age rotation)
    uint8_t sync[16]                # this segment's sync marker
    char stem[32]                   # file stem, 20261125T103100.123456789Z
    # The segment's shared mapping, kept writable ahead of ``end`` by the engine's
    # populate thread (docs/relay-internals.md, "Segment writes"); NULL: pwritev only.
    uint8_t* map
    size_t pop_done                 # [0, pop_done) populated (atomic; populate thread)
    size_t pop_target               # populate up to here (under pop_t.lock)
    size_t pop_asked                # the last target asked (relay thread only)
    bint pop_failed                 # madvise refused: no more populating (under the lock)
    bint pop_busy                   # the populate thread is in madvise on this map
    bint pop_queued                 # in the populate queue


cdef enum:
    FINGERPRINTS = 4                # fingerprints per channel at most (Schema.fingerprints)
    POP_QUEUE = 256                 # populate requests waiting at most (one per channel)
    UNKNOWN_FP_SLOTS = 16           # distinct unknown fingerprints counted (shared port)


cdef struct pop_s


# One channel of the engine; index 0 of nothing: the shared-port pseudo channel is a chan_t
# too (id 0, no program), so counters and drop tracking are uniform.
ctypedef struct chan_t:
    uint32_t id                     # channel id (0: the shared-port pseudo channel)
    int fd                          # its UDP socket, or -1
    uint32_t decimation             # every Nth datagram also goes to the decimated group
    uint64_t seq                    # sequence number of the next accepted datagram
    int64_t t_last                  # largest source time of the previous accepted datagram
    uint32_t ovfl                   # last cumulative SO_RXQ_OVFL value of the socket
    const int32_t* program_p        # validator program (pairs), owned by a numpy array
    Py_ssize_t n_ops                # pairs in the program
    Py_ssize_t time_op              # pair index of the time field, or -1
    int64_t time_scale              # ns per unit of the time field
    Py_ssize_t fixed_size           # record size if any bytes of it are valid, else 0
    uint8_t fingerprints[FINGERPRINTS * 8]  # CRC-64-AVRO fingerprints (shared-port routing)
    int n_fingerprints              # of them in use (Schema.fingerprints)
    char* dir_p                     # the channel's cache folder, or NULL (cache off)
    char* rej_path_p                # rejected/<name>.rej path, or NULL
    int rej_fd                      # that file once opened, else -1
    uint64_t rej_size               # its size (kept below REJECTED_FILE_LIMIT)
    uint8_t* header_p               # segment header without its sync marker
    size_t header_len               # its length
    int64_t retry_mono_ns           # no segment open attempt before this (disk full)
    segment_t seg                   # the segment being written
    counters_t c                    # counters
    pop_s* pop                      # the engine's populate state
    uint64_t rejects[N_REJECT_REASONS]  # rejected datagrams by reason (_avro REJECT_*)
    int store_errno                 # errno of the last failed store (0: none yet)
    # SO_MEMINFO's drop count, read by stats() (with the GIL, under Engine._lock): the
    # kernel's count of now, where SO_RXQ_OVFL tells only with the next datagram
    uint32_t mem_drops              # SK_MEMINFO_DROPS at the last read
    uint64_t drops_seen             # drops counted from those reads
    # shared port: the unknown fingerprints seen, and how many datagrams carried each
    uint32_t n_unknown_fp
    uint8_t unknown_fp[UNKNOWN_FP_SLOTS][8]
    uint64_t unknown_fp_n[UNKNOWN_FP_SLOTS]


# The populate thread's shared state (one per engine).
cdef struct pop_s:
    pthread_mutex_t lock
    pthread_cond_t work             # a request was queued, or stop
    pthread_cond_t idle             # a madvise returned (close_segment waits for it)
    bint stop
    bint running                    # the populate thread is in its loop
    Py_ssize_t n_queue
    chan_t* queue[POP_QUEUE]        # channels whose segment wants populating
    Py_ssize_t n_dead
    void* dead_addr[POP_QUEUE]      # maps of closed segments, for the thread to unmap
    size_t dead_len[POP_QUEUE]


ctypedef pop_s pop_t


cdef class Engine:
    # configuration
    cdef readonly object cache_dir
    cdef readonly object multicast
    cdef readonly object rejected_dir
    cdef size_t segment_size
    cdef int64_t segment_age_ns
    cdef readonly double flush_interval
    cdef readonly int batch
    cdef int64_t announce_interval_ns
    cdef readonly int64_t coalesce_ns   # relay.coalesce: wait after a short batch
    cdef bint use_sync_override
    cdef uint8_t sync_override[16]
    cdef public bint _gso               # coalesce equal-size runs with UDP_SEGMENT
    cdef public bint _fixed_fast        # count fixed-layout records without walking them
    cdef public uint64_t _stop_after    # benchmark hook: return after this many datagrams

    # Python-side state (only touched with the GIL)
    cdef object _lock
    cdef dict _channels                 # id -> (ChannelConfig, program array, socket)
    cdef list _pending                  # queued control changes
    cdef object _send_sock              # full-rate group (connected to it when possible)
    cdef object _dec_sock               # decimated group (likewise)
    cdef object _shared_sock
    cdef dict _announce_seq
    cdef bint _running
    cdef bint _closed

    # C state
    cdef int epfd
    cdef int wakefd
    cdef int send_fd
    cdef int dec_fd
    cdef volatile int stop_flag
    cdef volatile int control_flag
    cdef int64_t next_announce_ns
    cdef int64_t next_sweep_ns          # next check of idle segments' age
    cdef int64_t sweep_interval_ns
    cdef uint64_t n_seen                # datagrams received (accepted or rejected)
    cdef readonly uint64_t wakeups      # loop passes that received datagrams
    cdef readonly uint64_t coalesced    # of which ended in a coalescing wait
    cdef int64_t last_pass_ns           # when the last pass that received datagrams ended
    cdef int64_t gap_ns                 # moving average of the time between datagrams
    # priority while behind (relay.nice, docs/relay-internals.md "Priority while behind")
    cdef public object _boost_nice      # None: the loop keeps the priority it runs at
    cdef bint boost_on                  # a boost is configured
    cdef int boost_nice                 # the priority while behind
    cdef int base_nice                  # the priority otherwise (the thread's at run())
    cdef long loop_tid                  # the receive loop's thread id
    cdef bint boosted                   # now at boost_nice
    cdef int n_short                    # short passes in a row while boosted
    cdef readonly uint64_t boosts       # times the loop took boost_nice
    cdef sockaddr_in full_addr
    cdef sockaddr_in dec_addr
    cdef sockaddr_in* full_name         # NULL when the socket is connected, else &full_addr
    cdef sockaddr_in* dec_name
    cdef chan_t** chans                 # the channels (not the shared one)
    cdef Py_ssize_t n_chans
    cdef Py_ssize_t cap_chans
    cdef chan_t* shared                 # the shared-port pseudo channel, or NULL
    cdef int saved_errno

    # receive side, batch entries each
    cdef uint8_t* slab_p                # batch x 65536 bytes
    cdef mmsghdr* rmsgs
    cdef iovec* riov
    cdef uint8_t* rcmsg_p               # batch x CMSG_BUF bytes
    cdef epoll_event* events
    # per datagram of a batch
    cdef uint8_t** dg_p                 # payload start
    cdef uint32_t* dg_len               # payload length (after shared-port framing)
    cdef int64_t* dg_recv_ns
    cdef uint32_t* dg_nrec
    cdef int64_t* dg_tmin
    cdef int64_t* dg_tmax
    cdef uint64_t* dg_seq
    cdef chan_t** dg_chan               # channel it was accepted for, or NULL
    cdef Py_ssize_t* acc                # indexes of accepted datagrams, in order
    cdef uint8_t* block_done            # shared port: datagram already in a block
    # send side
    cdef uint8_t* hdr_p                 # batch x 32-byte headers
    cdef iovec* siov                    # 2 per accepted datagram: header, payload
    cdef mmsghdr* smsgs                 # up to 2 x batch messages
    cdef chan_t** s_chan                # channel of each message
    cdef uint32_t* s_count              # datagrams in each message (GSO: several)
    cdef Py_ssize_t* s_pos              # 0..n-1: accepted positions of the full-rate pairs
    cdef iovec* diov                    # 2 per decimated datagram: header, payload
    cdef Py_ssize_t* d_pos              # accepted position of each decimated datagram
    cdef uint8_t* s_kind                # 0 full-rate, 1 decimated
    cdef uint8_t* scmsg_p               # 2 x batch x SCMSG_BUF bytes of UDP_SEGMENT cmsgs
    # cache side
    cdef uint8_t* recv_buf_p            # batch x 16-byte .recv entries of one block
    cdef Py_ssize_t* blk                # datagram indexes of the block being written
    cdef iovec* wiov                    # batch + 2 iovecs: one block for pwritev
    # segment writes through the shared mapping (docs/relay-internals.md)
    cdef pop_t pop
    cdef bint pop_init
    cdef object _pop_thread
    cdef public bint _use_map           # write blocks through the populated mapping
    cdef public bint _huge_map          # segment maps on 2 MiB folios (MADV_HUGEPAGE)
    cdef readonly uint64_t _map_blocks  # blocks copied into the mapping (the rest: pwritev)

    cdef int _set_addr(self, sockaddr_in* addr, object host_port) except -1
    cdef chan_t* _find(self, uint32_t cid) noexcept
    cdef int _loop(self) noexcept nogil
    cdef chan_t* _route(self, uint8_t* p, uint32_t* n_io, validation* v) noexcept nogil
    cdef void _send_one_by_one(self, Py_ssize_t k, int fd) noexcept nogil
    cdef Py_ssize_t _messages(
        self, iovec* iov, Py_ssize_t* pos, Py_ssize_t n, sockaddr_in* addr, uint8_t kind,
        Py_ssize_t k,
    ) noexcept nogil
    cdef void _count_sent(self, Py_ssize_t m) noexcept nogil
    cdef void _send_messages(self, Py_ssize_t off, Py_ssize_t k, int fd) noexcept nogil
    cdef int _receive(self, chan_t* sock_ch) noexcept nogil
    cdef void _send(self, Py_ssize_t n_acc) noexcept nogil
    cdef void _store(self, Py_ssize_t n_acc) noexcept nogil
    cdef void _store_channel(self, chan_t* ch, Py_ssize_t* idx, Py_ssize_t m) noexcept nogil
    cdef bint _open_segment(self, chan_t* ch, size_t need) noexcept nogil
    cdef void _map_segment(self, chan_t* ch) noexcept nogil
    cdef void _block_written(self, chan_t* ch, size_t size, uint64_t n_records) noexcept nogil
    cdef int _write_block(
        self, chan_t* ch, Py_ssize_t* idx, Py_ssize_t m, size_t n_bytes, uint64_t n_records
    ) noexcept nogil
    cdef void _sweep_ages(self) noexcept nogil
    cdef void _boost(self, bint short) noexcept nogil
    cdef void _reject(
        self, chan_t* ch, const uint8_t* p, uint32_t n, int64_t recv_ns, int reason
    ) noexcept nogil
