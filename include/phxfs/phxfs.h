/* SPDX-License-Identifier: MIT */
/*
 * phxfs.h - LibPhoenix, the public C API of Phoenix.
 *
 * Phoenix moves file data between storage and device (GPU) memory. Where the
 * phxfs kernel module serves a device, reads and writes are O_DIRECT I/O on a
 * user mapping of the device memory itself: the NVMe controller DMAs straight
 * into device memory. Everywhere else (no module, a VM, a file system without
 * O_DIRECT) the library moves the data through pinned host memory with a
 * parallel pipeline (the "compat" path) and counts which path ran.
 *
 * Conventions: every call returns 0 (or a byte count) on success and -1 with
 * errno set on failure; phxfs_last_error() then holds a message for humans.
 * The library never prints. All calls are thread safe.
 *
 * Device ids: when CUDA GPUs are present, device id N is CUDA device N.
 * Otherwise ids count the /dev/phxfsN nodes of the kernel module; a machine
 * with neither has one device, 0, whose memory is host memory.
 * PHXFS_HOST_DEVICES=N (read once, at the first call) adds N devices of host
 * memory after all others.
 *
 * Several devices: each open device has its own staging memory (allocated
 * on its PCI device's NUMA node where sysfs names one), copy streams,
 * workers and futures executor, so I/O on one never waits for another's;
 * a batch's requests on several devices run on them at once.
 *
 * The cross-device rule: memory of one GPU is used only with that GPU's
 * device id. Given another device's id (another GPU's, or a host-memory
 * device's), a call fails with EXDEV, and its message names the device id
 * the memory belongs to; it is never routed to the owner. Host memory may
 * be used with any device id, managed memory with any GPU's.
 */
#ifndef PHXFS_H
#define PHXFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PHXFS_VERSION_MAJOR 0
#define PHXFS_VERSION_MINOR 2
#define PHXFS_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Driver management (the seed's signatures)                                 */
/* ------------------------------------------------------------------------ */

/**
 * phxfs_open() - open a device and set up its metadata.
 * Opens /dev/phxfsN where the kernel module serves the device. Opening an
 * already open device is allowed and counted; each open needs a close.
 * Errors: ENODEV no such device; EPROTO module speaks another ABI version;
 * EACCES the device node cannot be opened (see phxfs_last_error()).
 */
int phxfs_open(int deviceID);

/**
 * phxfs_close() - undo one phxfs_open(). The last close deregisters every
 * region still registered on the device and releases its resources.
 * Errors: ENODEV no such device; EBADF the device is not open.
 */
int phxfs_close(int deviceID);

/* ------------------------------------------------------------------------ */
/* Buffer management (the seed's signatures)                                 */
/* ------------------------------------------------------------------------ */

/**
 * phxfs_regmem() - register [addr, addr + len) of device memory.
 * @addr: a CUDA device pointer (CUDA devices), an offset into the BAR cast to
 *        a pointer (pcibar devices of the kernel module), or host memory.
 * @target_addr: receives the host-mapped address of addr: one contiguous
 *        mapping of the whole range, whatever its size. Where the direct path
 *        cannot serve the device, *target_addr is set to addr itself.
 * The range may start and end anywhere; the library widens it to the
 * device's page size internally and keeps the caller's offsets exact.
 * Errors: ENODEV, EBADF (device not open), EINVAL (NULL target_addr, zero
 * length, range overflows), EEXIST (overlaps a registered range), EXDEV
 * (memory of another GPU: the cross-device rule above), EFAULT (not memory
 * this device can use), ENOMEM. Registrations are per device: the same host
 * range may be registered on two devices.
 */
int phxfs_regmem(int device_id, const void *addr, size_t len,
		 void **target_addr);

/**
 * phxfs_deregmem() - deregister a range registered with phxfs_regmem().
 * addr and len must be exactly those given to phxfs_regmem().
 * Errors: ENODEV, EBADF, EINVAL (no registration with that addr and len).
 */
int phxfs_deregmem(int device_id, const void *addr, size_t len);

/* ------------------------------------------------------------------------ */
/* File I/O                                                                  */
/* ------------------------------------------------------------------------ */

/* A file as Phoenix sees it: any open fd, and the device whose memory it
 * moves data to and from. */
typedef struct phxfs_fileid {
	int fd;
	int deviceID;
} phxfs_fileid_t;

/**
 * phxfs_read() - read nbyte bytes at file offset f_offset into buf + buf_offset.
 * @buf: device memory (registered or not), or host memory; the kind of memory
 *       is detected from the pointer.
 * Any fd works: opened with or without O_DIRECT, any offset and length, files
 * with holes (read as zeros), more than 2 GiB in one call.
 * Returns the number of bytes read, short only at end of file, or -1.
 * Errors: EBADF (bad fd, fd not open for reading, device not open), ENODEV,
 * EINVAL (negative offsets, overflowing ranges), EXDEV (buf is memory of
 * another GPU than fid.deviceID's: use its own id), EFAULT (buf not usable),
 * EIO, and ENOTSUP in PHXFS_MODE_DIRECT when the direct path cannot serve.
 */
ssize_t phxfs_read(phxfs_fileid_t fid, void *buf, off_t buf_offset,
		   size_t nbyte, off_t f_offset);

/**
 * phxfs_write() - write nbyte bytes from buf + buf_offset at file offset
 * f_offset. Returns nbyte or -1; errors as phxfs_read() (EBADF when fd is not
 * open for writing).
 */
ssize_t phxfs_write(phxfs_fileid_t fid, const void *buf, off_t buf_offset,
		    size_t nbyte, off_t f_offset);

/* ------------------------------------------------------------------------ */
/* File handles (since 0.2)                                                  */
/* ------------------------------------------------------------------------ */

/*
 * A file opened once for Phoenix on one device. The handle keeps what each
 * phxfs_read() on a bare fd works out again: the fd's flags and file type,
 * the file's direct-I/O alignment (statx), and the file reopened with
 * O_DIRECT set or cleared where the I/O paths need it. Every call on
 * handles below is thread safe; requests on one handle may run at once.
 * Handles are keys, never reused: a closed handle's calls fail with EBADF.
 */
typedef struct phxfs_file *phxfs_file_t;

/**
 * phxfs_file_open() - open a handle for fd, moving data to and from memory
 * of device_id. fd stays the caller's: the library never closes or changes
 * it, and it must stay open until phxfs_file_close() returns.
 * Errors: ENODEV, EBADF (fd not open), ESPIPE (pipe or socket), EINVAL
 * (NULL fh), ENOMEM.
 */
int phxfs_file_open(phxfs_file_t *fh, int device_id, int fd);

/**
 * phxfs_file_close() - close a handle. Waits for the requests still using it
 * (futures, batch entries) to complete, so that nothing of the library
 * touches the fd after it returns. Errors: EBADF (not an open handle).
 */
int phxfs_file_close(phxfs_file_t fh);

/* phxfs_read() and phxfs_write() on a handle: same arguments, results and
 * errors (EBADF also for a closed handle). */
ssize_t phxfs_file_read(phxfs_file_t fh, void *buf, off_t buf_offset,
			size_t nbyte, off_t f_offset);
ssize_t phxfs_file_write(phxfs_file_t fh, const void *buf, off_t buf_offset,
			 size_t nbyte, off_t f_offset);

/* ------------------------------------------------------------------------ */
/* Futures (since 0.2)                                                       */
/* ------------------------------------------------------------------------ */

/*
 * A read or write that returns at once and runs in the library's worker
 * threads (as many at once as phxfs_config.threads), taking the same paths
 * as the synchronous call. The buffer must stay valid, and a write's bytes
 * unchanged, until the future completes.
 */
typedef struct phxfs_future *phxfs_future_t;

int phxfs_file_read_async(phxfs_file_t fh, void *buf, off_t buf_offset,
			  size_t nbyte, off_t f_offset,
			  phxfs_future_t *future);
int phxfs_file_write_async(phxfs_file_t fh, const void *buf,
			   off_t buf_offset, size_t nbyte, off_t f_offset,
			   phxfs_future_t *future);

/* 1 when the request has completed, 0 while it runs, -1 (EINVAL) for a
 * NULL future. */
int phxfs_future_poll(phxfs_future_t future);

/**
 * phxfs_future_wait() - wait for a request, at most timeout_ns nanoseconds
 * (negative: for ever). Returns its result: the bytes moved, or -1 with
 * errno and phxfs_last_error() as the synchronous call would have set them.
 * ETIMEDOUT: still running (the future stays valid; wait again or free it).
 * May be called again after completion: the same result.
 */
ssize_t phxfs_future_wait(phxfs_future_t future, int64_t timeout_ns);

/* Waits for the request to complete, then frees the future. */
void phxfs_future_free(phxfs_future_t future);

/* ------------------------------------------------------------------------ */
/* Batches (since 0.2)                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Many reads and writes in flight at once, submitted and reaped in groups,
 * as with io_uring. A batch has a fixed depth: how many requests may be in
 * it (submitted, not yet reaped) at once; no allocation per request after
 * phxfs_batch_create(). Requests may be of any handles and devices; each
 * completes alone, with its own result: one bad request fails alone.
 * Submitting, reaping and cancelling are thread safe.
 *
 * Requests start in groups, the oldest first: up to 4096 requests or 1 GiB
 * at a time (at least one), which run together (through the compat path:
 * in pieces of a staging buffer on every lane) and complete together. A
 * reap that would wait runs waiting groups on the calling thread.
 */
typedef struct phxfs_batch *phxfs_batch_t;

enum phxfs_op {
	PHXFS_OP_READ = 0,
	PHXFS_OP_WRITE = 1,
};

struct phxfs_io {
	phxfs_file_t fh;
	uint32_t op;		/* enum phxfs_op */
	uint32_t reserved;	/* 0 */
	void *buf;		/* device or host memory; for writes, read only */
	uint64_t buf_offset;
	uint64_t nbyte;
	uint64_t f_offset;
	void *user_data;	/* handed back in the completion */
};

enum phxfs_io_status {
	PHXFS_IO_DONE = 0,	/* result: bytes moved (short only at EOF) */
	PHXFS_IO_FAILED = 1,	/* result: -errno; error: why */
	PHXFS_IO_CANCELED = 2,	/* result: -ECANCELED; never started */
};

struct phxfs_completion {
	void *user_data;
	int64_t result;
	uint32_t status;	/* enum phxfs_io_status */
	uint32_t reserved;
	char error[112];	/* "" unless failed */
};

/* A batch of at most depth requests at once (1..1048576). */
int phxfs_batch_create(phxfs_batch_t *batch, unsigned depth);

/**
 * phxfs_batch_submit() - queue n requests; they start at once. All or
 * nothing: EAGAIN when fewer than n places are free (reap first), EINVAL
 * for a malformed array. A request that cannot run (a closed handle, a bad
 * range, memory of another device) is accepted and completes as failed.
 * Returns n, or -1.
 */
int phxfs_batch_submit(phxfs_batch_t batch, const struct phxfs_io *ios,
		       unsigned n);

/**
 * phxfs_batch_reap() - take completions: waits until at least min_nr are
 * there or timeout_ns has passed (negative: no limit; 0: do not wait), then
 * takes at most max_nr. Returns how many it took (fewer than min_nr only on
 * timeout), or -1 (EINVAL: min_nr > max_nr, or more than can ever come).
 */
int phxfs_batch_reap(phxfs_batch_t batch, struct phxfs_completion *out,
		     unsigned min_nr, unsigned max_nr, int64_t timeout_ns);

/* Cancels the requests not yet started (they complete as canceled);
 * started ones run to the end, and a request submitted together with
 * others may have started in their group. Returns how many it canceled,
 * or -1. */
int phxfs_batch_cancel(phxfs_batch_t batch);

/* Cancels what has not started, waits for the rest, frees the batch and
 * its completions not reaped. */
int phxfs_batch_destroy(phxfs_batch_t batch);

/* ------------------------------------------------------------------------ */
/* Stream-ordered I/O (since 0.2)                                            */
/* ------------------------------------------------------------------------ */

/**
 * phxfs_file_read_stream() - read in the order of a CUDA stream: after the
 * work queued on stream before it, before the work queued after it, without
 * blocking the caller. The shape of cuFile's cuFileReadAsync.
 * @stream: a CUstream (NULL: the legacy default stream of the calling
 *        thread's current context; CU_STREAM_PER_THREAD too).
 * @buf: memory the stream's GPU can write: device memory, managed memory,
 *        or mapped pinned host memory.
 * @size_p: *size_p when called is the request's most bytes (it reserves
 *        staging for that; GPU work still queued must not lower it later);
 *        *size_p when the stream gets to the request is the size, which must
 *        not be larger (else -EINVAL in *bytes_read_p).
 * @f_offset_p, @buf_offset_p (NULL: 0): read when the stream gets there.
 * @bytes_read_p: the bytes read (short only at end of file) or -errno,
 *        stored before the stream goes on past the request.
 * The four pointers are host memory (pinned and mapped if GPU work of the
 * stream writes them) and, with buf, must stay valid until the stream has
 * passed the request. A file I/O error fails the request alone (-errno in
 * *bytes_read_p); the stream goes on.
 *
 * Returns 0 once queued, or -1: EBADF (handle not open, or not open for
 * reading), EINVAL (a NULL pointer, a bad stream, *size_p beyond 256 GiB),
 * EAGAIN (4096 requests pending, or their staging, 64 MiB by default,
 * PHXFS_STREAM_STAGING, is in use: synchronise a stream and try again; it
 * never blocks for it), ENOTSUP (no CUDA driver, a driver or GPU without
 * stream memory operations, a library built without nvcc). A CUDA error
 * part way through queuing fails with EIO and may leave part of the
 * request queued, harmless (it moves no data, writes no result).
 *
 * How: the data goes through pinned host staging. When the stream gets to
 * the request it stores a word that a thread of the library watches (a
 * spinning and napping poller, no host callback); that thread reads the
 * file into the staging and stores a word the stream waits for
 * (cuStreamWaitValue32); a copy kernel on the stream then moves the bytes
 * into buf (a request over 16 KiB: from a mirror of the staging in GPU
 * memory, filled by one copy first; 64 MiB of GPU memory per CUDA context
 * by default, PHXFS_STREAM_STAGING, made at the context's first such
 * request and kept for the life of the process). The library runs no GPU work of its own while requests are
 * pending, so nothing it does waits for the stream. Requests over 4 MiB go
 * in rounds of 4 MiB through the same staging, one after another. The
 * handle's device counts each request once, when it completes, on the
 * compat path (phxfs_get_stats), or as an error.
 */
int phxfs_file_read_stream(phxfs_file_t fh, void *buf, const size_t *size_p,
			   const off_t *f_offset_p, const off_t *buf_offset_p,
			   ssize_t *bytes_read_p, void *stream);

/* The same for a write of buf + *buf_offset_p, whose bytes are those the
 * stream's earlier work left there. *bytes_written_p is *size_p, or -errno.
 * EBADF also for a handle not open for writing, EINVAL for an O_APPEND fd. */
int phxfs_file_write_stream(phxfs_file_t fh, const void *buf,
			    const size_t *size_p, const off_t *f_offset_p,
			    const off_t *buf_offset_p, ssize_t *bytes_written_p,
			    void *stream);

/**
 * phxfs_stream_register() - prepares stream for stream-ordered I/O now:
 * loads the copy kernel into its context and allocates the context's
 * mirror of the staging in GPU memory and, the first time in the process,
 * the staging. The first request on a context does this
 * itself; registering first moves that cost (and the one moment the library
 * loads a module) to a time when no request of this context is pending.
 * Nothing is held per stream, so there is nothing to deregister. flags must
 * be 0. Errors: EINVAL, ENOTSUP as above.
 */
int phxfs_stream_register(void *stream, unsigned flags);

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */
/* ------------------------------------------------------------------------ */

enum phxfs_mode {
	PHXFS_MODE_AUTO = 0,   /* direct where the module serves, else compat */
	PHXFS_MODE_DIRECT = 1, /* direct only: fail with ENOTSUP otherwise */
	PHXFS_MODE_COMPAT = 2, /* always through pinned host memory */
};

/*
 * Tunables. Defaults come from the environment (PHXFS_MODE=auto|direct|compat,
 * PHXFS_THREADS, PHXFS_CHUNK_KB, PHXFS_STAGING_MB, PHXFS_TRACE) and else from
 * built-in values; phxfs_set_config() overrides both.
 *
 * The path trace (trace = 1, or PHXFS_TRACE=1|stderr|<file>) writes one line
 * per read and write: which path moved how many bytes, why the direct path
 * did not serve the rest, and errors. Off by default: the library then
 * prints nothing. Set size = sizeof(struct) before
 * phxfs_get_config()/phxfs_set_config().
 */
struct phxfs_config {
	uint32_t size;
	uint32_t mode;		/* enum phxfs_mode */
	uint32_t threads;	/* compat workers (1..256) */
	uint32_t trace;		/* 1: log each call's path and why (PHXFS_TRACE) */
	uint64_t chunk_bytes;	/* compat pipeline chunk, 4 KiB multiple */
	uint64_t staging_bytes;	/* pinned staging memory in all, per device */
};

int phxfs_get_config(struct phxfs_config *cfg);
int phxfs_set_config(const struct phxfs_config *cfg);

/* ------------------------------------------------------------------------ */
/* Devices, counters and errors                                              */
/* ------------------------------------------------------------------------ */

enum phxfs_device_kind {
	PHXFS_DEVICE_HOST = 0,	 /* host memory stands in for a device */
	PHXFS_DEVICE_CUDA = 1,	 /* a CUDA GPU */
	PHXFS_DEVICE_PCIBAR = 2, /* a BAR served by phxfs.ko's pcibar provider */
};

/* The struct pages the direct path gives the device's memory. */
enum phxfs_page_type {
	PHXFS_PAGES_NONE = 0,	 /* no direct path (or not known) */
	PHXFS_PAGES_GENERIC = 1, /* phxfs.ko's MEMORY_DEVICE_GENERIC pages */
	PHXFS_PAGES_P2PDMA = 2,	 /* the kernel's P2PDMA pages (CONFIG_PCI_P2PDMA):
				  * the kernel checks the P2P distance to each
				  * disk and pins them for O_DIRECT only */
};

struct phxfs_device_info {
	uint32_t size;		/* in: sizeof(struct phxfs_device_info) */
	uint32_t kind;		/* enum phxfs_device_kind */
	int32_t direct;		/* 1: the direct path can serve this device */
	int32_t kmod_index;	/* N of /dev/phxfsN, -1 when none */
	char name[64];		/* "NVIDIA H200", "pcibar 0000:00:03.0", "host" */
	char pci_bus_id[16];	/* "0000:3b:00.0", empty for host */
	char why_not_direct[128]; /* empty when direct == 1 */
	/* Since 0.2 (a smaller size gets the fields above only): */
	uint32_t page_type;	/* enum phxfs_page_type */
	/* Since 0.3 (was reserved, 0): the NUMA node the device's PCI device
	 * hangs off, where its staging memory is allocated; -1 when sysfs does
	 * not say (one node) and for host memory. */
	int32_t numa_node;
};

/* Number of devices, or -1. */
int phxfs_device_count(void);
int phxfs_device_get_info(int device_id, struct phxfs_device_info *info);

enum phxfs_path {
	PHXFS_PATH_DIRECT = 0, /* O_DIRECT on the mapped device memory */
	PHXFS_PATH_COMPAT = 1, /* through pinned host staging memory */
	PHXFS_PATH_COUNT = 2,
};

struct phxfs_path_stats {
	uint64_t read_bytes;
	uint64_t read_calls;
	uint64_t read_ns;
	uint64_t write_bytes;
	uint64_t write_calls;
	uint64_t write_ns;
};

struct phxfs_stats {
	uint32_t size;		/* in: sizeof(struct phxfs_stats) */
	uint32_t reserved;
	struct phxfs_path_stats path[PHXFS_PATH_COUNT];
	uint64_t errors;
	uint64_t registrations;	/* registrations now active */
	uint64_t fallbacks;	/* requests (or parts) auto mode sent to compat */
	/* Since 0.2 (a smaller size gets the fields above only): */
	uint64_t staging_bytes;	/* staging memory the device holds now */
};

/* Counters of one device since load or the last reset (staging_bytes is a
 * level, not a counter: lowering staging_bytes with phxfs_set_config() gives
 * idle staging memory back at once and busy memory when its request ends). */
int phxfs_get_stats(int device_id, struct phxfs_stats *stats);
int phxfs_reset_stats(int device_id);

/* The message of the last failed call on this thread ("" if none). */
const char *phxfs_last_error(void);

/* Human name of a path or mode, for reports. */
const char *phxfs_path_name(enum phxfs_path path);
const char *phxfs_mode_name(enum phxfs_mode mode);

#ifdef __cplusplus
}
#endif

#endif /* PHXFS_H */
