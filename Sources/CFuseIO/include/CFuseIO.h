// libfuse's custom I/O hooks for snapfs: FUSE passthrough, which libfuse 3.14 does not know.
//
// The kernel (6.9 and later, CONFIG_FUSE_PASSTHROUGH) can do the reads and writes of an open
// FUSE file on a "backing" file itself, with no request to the daemon. libfuse 3.14 neither
// asks for it at INIT nor says so in its OPEN and CREATE replies, so snapfs gives the
// session these hooks for reading requests and writing replies: they see the kernel's INIT
// (does it offer passthrough?), add the passthrough flag and stack depth to the INIT reply
// when snapfs wants it, and add FOPEN_PASSTHROUGH and the backing id to an open reply that
// the calling thread armed. Nothing else is changed on the way.
#ifndef SNAPFS_CFUSEIO_H
#define SNAPFS_CFUSEIO_H
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/// One session's state for the hooks. The session's userdata (fuse_session_new's last
/// argument) points at it, so the hooks get it as their `userdata`; `owner` is the file
/// system the session's operations serve (the ops find it through fuse_req_userdata).
struct fuseio_session {
  void *owner;
  int offered;            // the kernel's INIT offered FUSE_PASSTHROUGH (written once)
  int offered_uring;      // ... and FUSE_OVER_IO_URING
  int init_seen;          // INIT was read
  int want;               // 1: the init callback asked for flags2 bits; 2: the INIT reply carries them
  uint32_t flags2;        // the bits the INIT reply adds to flags2
  uint32_t stack_depth;
  struct fuseio_uring *uring;  // FUSE over io_uring, when set up
};

ssize_t fuseio_read(int fd, void *buf, size_t len, void *userdata);
ssize_t fuseio_writev(int fd, struct iovec *iov, int count, void *userdata);
ssize_t fuseio_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags, void *userdata);

/// Whether the kernel's INIT request offered FUSE_PASSTHROUGH (valid once INIT was read).
int fuseio_kernel_offers_passthrough(const struct fuseio_session *session);
/// Asks for passthrough in the INIT reply, with backing files at most `max_stack_depth - 1`
/// file systems deep. Call from the init callback; the kernel refuses it with the writeback
/// cache.
void fuseio_want_passthrough(struct fuseio_session *session, uint32_t max_stack_depth);

/// FUSE over io_uring (uring.c). Whether the kernel's INIT offered it (the fuse module's
/// enable_uring was on at mount time).
int fuseio_uring_kernel_offers(const struct fuseio_session *session);
struct fuse_session;
/// From the init callback: makes one ring per possible CPU with `depth` entries of
/// `payload` bytes (at least the connection's max_write) and their threads, and asks for
/// io_uring in the INIT reply, after which the threads register their entries and serve.
/// 0, or -errno with nothing left behind (the session then stays on /dev/fuse).
int fuseio_uring_setup(struct fuseio_session *session, struct fuse_session *se, unsigned depth, size_t payload);
/// After the unmount: waits (two seconds at most) for the queue threads to end and frees
/// the rings. Answers 0 if a thread did not end (then nothing is freed).
int fuseio_uring_stop(struct fuseio_session *session);
/// Internal to CFuseIO: the INIT reply is out (register now); the reply being written,
/// diverted into the ring entry of the request this thread serves (-1 when there is none).
void fuseio_uring_go(struct fuseio_session *session);
void fuseio_want_uring(struct fuseio_session *session);
ssize_t fuseio_uring_take_reply(struct iovec *iov, int count);

/// The next reply this thread sends (an OPEN or CREATE reply) hands the kernel the backing
/// file `backing_id`. Disarm after the reply call in every case. (Per thread, not per
/// session: it marks the reply the calling thread is about to send.)
void fuseio_arm_open(int32_t backing_id);
void fuseio_disarm(void);

/// Registers `fd` as a backing file on the FUSE device `devfd`: its id (> 0), or -errno.
int32_t fuseio_backing_open(int devfd, int fd);
/// Drops the registration; files already open on it keep it.
int fuseio_backing_close(int devfd, int32_t backing_id);
#endif
