#define _GNU_SOURCE
#include "CFuseIO.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <string.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

// Protocol 7.40 names that Debian 12's <linux/fuse.h> (7.38) lacks.
#define SNAPFS_FUSE_PASSTHROUGH_FLAGS2 (1u << (37 - 32))
#define SNAPFS_FOPEN_PASSTHROUGH (1u << 7)
struct snapfs_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define SNAPFS_IOC_BACKING_OPEN _IOW(229, 1, struct snapfs_backing_map)
#define SNAPFS_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

// fuse_init_out as of 7.40: max_stack_depth took the first unused word after flags2.
#define INIT_OUT_FLAGS 12
#define INIT_OUT_FLAGS2 32
#define INIT_OUT_MAX_STACK_DEPTH 36

static __thread int32_t armed = 0;
static __thread uint32_t failed_replies = 0;

uint32_t fuseio_failed_replies(void) { return failed_replies; }

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// Busy polling: before it sleeps, a thread that served a request looks for the next one for
// up to busy_poll_ns (poll with no timeout: no sleep, no wait-queue entry). A request found
// so is taken without waking a thread, which is most of a round trip's cost. A poll that
// finds nothing backs off: the next 1, 2, 4 ... 64 threads to finish a request go straight to
// sleep, and a poll that finds one ends the back-off. So a sparse stream of requests costs
// one poll per 64 requests, and a dense one is polled throughout.
static int found_by_polling(int fd, int64_t limit) {
  int64_t start = now_ns();
  do {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 0) return 1;
  } while (now_ns() - start < limit);
  return 0;
}

// Before a worker waits for its next request, however it receives it (read, or splice once
// INIT has turned that on).
static void poll_before_receive(int fd, struct fuseio_session *s) {
  int64_t limit = s->busy_poll_ns;
  if (limit <= 0) return;
  if (__atomic_load_n(&s->poll_skip, __ATOMIC_RELAXED) > 0) {
    __atomic_fetch_sub(&s->poll_skip, 1, __ATOMIC_RELAXED);
  } else if (found_by_polling(fd, limit)) {
    __atomic_store_n(&s->poll_backoff, 0, __ATOMIC_RELAXED);
  } else {
    int32_t b = __atomic_load_n(&s->poll_backoff, __ATOMIC_RELAXED);
    b = b == 0 ? 1 : b >= 64 ? 64 : b * 2;
    __atomic_store_n(&s->poll_backoff, b, __ATOMIC_RELAXED);
    __atomic_store_n(&s->poll_skip, b, __ATOMIC_RELAXED);
  }
}

ssize_t fuseio_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags,
                              void *userdata) {
  poll_before_receive(fdin, userdata);
  return splice(fdin, offin, fdout, offout, len, flags);
}

ssize_t fuseio_read(int fd, void *buf, size_t len, void *userdata) {
  struct fuseio_session *s = userdata;
  poll_before_receive(fd, s);
  ssize_t n = read(fd, buf, len);
  if (!__atomic_load_n(&s->init_seen, __ATOMIC_ACQUIRE) && n >= (ssize_t)(sizeof(struct fuse_in_header) + 24)) {
    struct fuse_in_header h;
    memcpy(&h, buf, sizeof h);
    if (h.opcode == FUSE_INIT) {
      uint32_t flags, flags2;
      memcpy(&flags, (char *)buf + sizeof h + 12, 4);
      memcpy(&flags2, (char *)buf + sizeof h + 16, 4);
      s->offered = (flags & FUSE_INIT_EXT) && (flags2 & SNAPFS_FUSE_PASSTHROUGH_FLAGS2);
      __atomic_store_n(&s->init_seen, 1, __ATOMIC_RELEASE);
    }
  }
  return n;
}

static void patch_u32(void *base, size_t offset, uint32_t set) {
  uint32_t v;
  memcpy(&v, (char *)base + offset, 4);
  v |= set;
  memcpy((char *)base + offset, &v, 4);
}

ssize_t fuseio_writev(int fd, struct iovec *iov, int count, void *userdata) {
  struct fuseio_session *s = userdata;
  if (count == 1 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
    struct fuse_out_header h;
    memcpy(&h, iov[0].iov_base, sizeof h);
    if (h.error != 0 && h.error != -ENOSYS) failed_replies++;
  }
  if (count >= 2) {
    if (armed != 0) {
      // fuse_open_out ends the reply (CREATE: after fuse_entry_out): fh, open_flags, backing_id.
      struct fuse_out_header h;
      memcpy(&h, iov[0].iov_base, sizeof h);
      struct iovec *last = &iov[count - 1];
      if (h.error == 0 && last->iov_len >= 16) {
        char *open_out = (char *)last->iov_base + last->iov_len - 16;
        patch_u32(open_out, 8, SNAPFS_FOPEN_PASSTHROUGH);
        memcpy(open_out + 12, &armed, 4);
      }
      armed = 0;
    } else if (__atomic_load_n(&s->want, __ATOMIC_RELAXED) == 1 && iov[1].iov_len >= INIT_OUT_MAX_STACK_DEPTH + 4) {
      // The INIT reply: the first reply after the init callback, on the same thread.
      __atomic_store_n(&s->want, 2, __ATOMIC_RELAXED);
      patch_u32(iov[1].iov_base, INIT_OUT_FLAGS, FUSE_INIT_EXT);
      patch_u32(iov[1].iov_base, INIT_OUT_FLAGS2, s->flags2);
      memcpy((char *)iov[1].iov_base + INIT_OUT_MAX_STACK_DEPTH, &s->stack_depth, 4);
    }
  }
  return writev(fd, iov, count);
}

ssize_t fuseio_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags, void *userdata) {
  (void)userdata;
  return splice(fdin, offin, fdout, offout, len, flags);
}

int fuseio_kernel_offers_passthrough(const struct fuseio_session *session) { return session->offered; }

void fuseio_want_passthrough(struct fuseio_session *session, uint32_t max_stack_depth) {
  session->stack_depth = max_stack_depth;
  session->flags2 |= SNAPFS_FUSE_PASSTHROUGH_FLAGS2;
  session->want = 1;
}

void fuseio_arm_open(int32_t backing_id) { armed = backing_id; }
void fuseio_disarm(void) { armed = 0; }

int32_t fuseio_backing_open(int devfd, int fd) {
  struct snapfs_backing_map map = {.fd = fd, .flags = 0, .padding = 0};
  int id = ioctl(devfd, SNAPFS_IOC_BACKING_OPEN, &map);
  return id < 0 ? -errno : id;
}

int fuseio_backing_close(int devfd, int32_t backing_id) {
  uint32_t id = (uint32_t)backing_id;
  return ioctl(devfd, SNAPFS_IOC_BACKING_CLOSE, &id) < 0 ? -errno : 0;
}
