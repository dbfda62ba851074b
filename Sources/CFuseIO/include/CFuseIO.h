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
  int init_seen;          // INIT was read
  int want;               // 1: the init callback asked for flags2 bits; 2: the INIT reply carries them
  uint32_t flags2;        // the bits the INIT reply adds to flags2
  uint32_t stack_depth;
  int64_t busy_poll_ns;   // how long a thread looks for the next request before it sleeps (0: never)
  int32_t poll_skip;      // how many threads go on to sleep without polling (see fuseio_read)
  int32_t poll_backoff;   // what poll_skip becomes after the next poll that finds nothing
};

ssize_t fuseio_read(int fd, void *buf, size_t len, void *userdata);
ssize_t fuseio_writev(int fd, struct iovec *iov, int count, void *userdata);
ssize_t fuseio_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags, void *userdata);
/// Receiving a request by splice from /dev/fuse (`fdin`): busy polling first, as fuseio_read.
ssize_t fuseio_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags,
                              void *userdata);

/// Whether the kernel's INIT request offered FUSE_PASSTHROUGH (valid once INIT was read).
int fuseio_kernel_offers_passthrough(const struct fuseio_session *session);
/// Asks for passthrough in the INIT reply, with backing files at most `max_stack_depth - 1`
/// file systems deep. Call from the init callback; the kernel refuses it with the writeback
/// cache.
void fuseio_want_passthrough(struct fuseio_session *session, uint32_t max_stack_depth);

/// The next reply this thread sends (an OPEN or CREATE reply) hands the kernel the backing
/// file `backing_id`. Disarm after the reply call in every case. (Per thread, not per
/// session: it marks the reply the calling thread is about to send.)
void fuseio_arm_open(int32_t backing_id);
void fuseio_disarm(void);

/// How many error replies (other than ENOSYS, the protocol's "not implemented") this
/// thread has sent: compared before and after an operation, whether it failed.
uint32_t fuseio_failed_replies(void);

/// Registers `fd` as a backing file on the FUSE device `devfd`: its id (> 0), or -errno.
int32_t fuseio_backing_open(int devfd, int fd);
/// Drops the registration; files already open on it keep it.
int fuseio_backing_close(int devfd, int32_t backing_id);
#endif
