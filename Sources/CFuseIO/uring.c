// FUSE over io_uring (Linux 6.14 and later, CONFIG_FUSE_IO_URING, the fuse module's
// enable_uring parameter), for libfuse 3.14, which predates it.
//
// One queue per possible CPU (the kernel sends a request to the queue of the CPU its caller
// runs on, and uses the rings only once every queue has an entry), each with its own ring
// (SQE128, for the 80-byte command) and thread. The threads are not pinned to their CPUs as
// libfuse pins them: on the 2-core test machine a pinned queue thread made the scheduler move
// the calling process to the other CPU on almost every request (56,000 migrations in 60,000
// round trips, against 50 unpinned), and round trips took 22.3 us against 20.3 us unpinned. Each entry is a header
// buffer (struct fuse_uring_req_header) and a payload buffer, registered with
// FUSE_IO_URING_CMD_REGISTER; its completion brings a request, and
// FUSE_IO_URING_CMD_COMMIT_AND_FETCH sends the reply and waits for the next one.
//
// A request arrives split: fuse_in_header in in_out, the op's own struct in op_in, the rest
// (names, data) in the payload. libfuse 3.14 takes a request as one buffer, so the header
// and op struct are copied in front of the payload (the entry keeps room for them there) and
// the whole is handed to fuse_session_process_buf. Its reply comes back through the
// session's writev hook (fuseio_writev) on the same thread, which fuseio_uring_take_reply
// diverts into the entry: the out header into in_out, the reply's arguments into the payload.
// FORGET, INTERRUPT and notifications stay on /dev/fuse, served by libfuse's own loop.
#define _GNU_SOURCE
#include "CFuseIO.h"
#include <errno.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define FUSE_USE_VERSION 314
#include <fuse3/fuse_lowlevel.h>

// Protocol 7.42 names that Debian 12's <linux/fuse.h> (7.38) lacks.
#define URING_IN_OUT_HEADER_SZ 128
#define URING_OP_IN_OUT_SZ 128
struct uring_ent_in_out {
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct uring_req_header {
  char in_out[URING_IN_OUT_HEADER_SZ];
  char op_in[URING_OP_IN_OUT_SZ];
  struct uring_ent_in_out ring_ent_in_out;
};
enum { URING_CMD_REGISTER = 1, URING_CMD_COMMIT_AND_FETCH = 2 };
struct uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};

// Room in front of the payload for the request's header and op struct.
#define FRONT (sizeof(struct fuse_in_header) + URING_OP_IN_OUT_SZ)

struct entry {
  struct uring_req_header header;
  struct iovec iov[2];
  char *front;      // FRONT bytes, then the payload (iov[1])
  int alive;        // the kernel still holds or may hand back this entry
  int replied;      // the request being served got its reply
};

struct queue {
  struct fuseio_uring *owner;
  struct io_uring ring;
  pthread_t thread;
  int started;      // 2: the thread runs
  int ring_rc;      // 1 until the thread made its ring; then 0, or -errno
  unsigned qid;
  struct entry *entries;
};

struct fuseio_uring {
  struct fuse_session *se;
  int devfd;
  unsigned depth;
  size_t payload;
  unsigned nqueues;
  struct queue *queues;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int go;           // 1: the INIT reply is out, register; -1: stop before registering
  int finished;     // queue threads that ended
};

// The entry whose request this thread is serving: its reply goes there, not to /dev/fuse.
static __thread struct entry *serving = NULL;

static void prep_cmd(struct queue *q, struct entry *e, uint32_t op) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);  // one SQE per entry: never NULL
  memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = q->owner->devfd;
  sqe->cmd_op = op;
  if (op == URING_CMD_REGISTER) {
    sqe->addr = (uint64_t)(uintptr_t)e->iov;
    sqe->len = 2;
  }
  struct uring_cmd_req *cmd = (struct uring_cmd_req *)sqe->cmd;
  cmd->qid = (uint16_t)q->qid;
  cmd->commit_id = op == URING_CMD_REGISTER ? 0 : e->header.ring_ent_in_out.commit_id;
  io_uring_sqe_set_data(sqe, e);
}

// Serves the request entry `e` holds, leaving the reply in it.
static void serve(struct queue *q, struct entry *e) {
  struct fuse_in_header in;
  memcpy(&in, e->header.in_out, sizeof in);
  uint32_t payload = e->header.ring_ent_in_out.payload_sz;
  if (in.len < sizeof in + payload || in.len - sizeof in - payload > URING_OP_IN_OUT_SZ || payload > q->owner->payload) {
    // Not a request this transport understands: fail it rather than guess.
    struct fuse_out_header out = {.len = sizeof out, .error = -EIO, .unique = in.unique};
    memcpy(e->header.in_out, &out, sizeof out);
    e->header.ring_ent_in_out.payload_sz = 0;
    return;
  }
  size_t op = in.len - sizeof in - payload;
  char *start = e->front + FRONT - sizeof in - op;
  memcpy(start, &in, sizeof in);
  memcpy(start + sizeof in, e->header.op_in, op);
  struct fuse_buf buf = {.size = in.len, .flags = 0, .mem = start, .fd = -1, .pos = 0};
  e->replied = 0;
  serving = e;
  fuse_session_process_buf(q->owner->se, &buf);
  serving = NULL;
  if (!e->replied) {  // no reply (libfuse's fuse_reply_none): the entry must still come back
    struct fuse_out_header out = {.len = sizeof out, .error = 0, .unique = in.unique};
    memcpy(e->header.in_out, &out, sizeof out);
    e->header.ring_ent_in_out.payload_sz = 0;
  }
}

static void *queue_main(void *arg) {
  struct queue *q = arg;
  struct fuseio_uring *u = q->owner;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);  // signals are the session's main thread's
  // Task work (a request's copy into an entry) runs when this thread waits for completions,
  // not by interrupting it; this thread is the ring's only submitter.
  struct io_uring_params params = {.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  int ring_rc = io_uring_queue_init_params(u->depth * 2, &q->ring, &params);
  pthread_mutex_lock(&u->lock);
  q->ring_rc = ring_rc < 0 ? ring_rc : 0;
  pthread_cond_broadcast(&u->cond);
  while (u->go == 0 && ring_rc >= 0) pthread_cond_wait(&u->cond, &u->lock);
  int go = ring_rc < 0 ? -1 : u->go;
  pthread_mutex_unlock(&u->lock);
  unsigned alive = 0;
  if (go > 0) {
    for (unsigned i = 0; i < u->depth; i++) {
      prep_cmd(q, &q->entries[i], URING_CMD_REGISTER);
      q->entries[i].alive = 1;
      alive++;
    }
  }
  while (alive > 0) {
    // One system call per request: the last reply's commit goes in, the next request comes out.
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait(&q->ring, 1);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    if (io_uring_peek_cqe(&q->ring, &cqe) != 0) continue;
    struct entry *e = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&q->ring, cqe);
    if (res == -EAGAIN || res == -EINTR) {
      // REGISTER before the kernel took the INIT reply: again, a little later.
      usleep(1000);
      prep_cmd(q, e, URING_CMD_REGISTER);
    } else if (res < 0) {
      // -ENOTCONN: unmounted (or the connection was aborted); the entry is the kernel's no more.
      e->alive = 0;
      alive--;
      continue;
    } else {
      serve(q, e);
      prep_cmd(q, e, URING_CMD_COMMIT_AND_FETCH);
    }
  }
  if (ring_rc >= 0) io_uring_queue_exit(&q->ring);
  pthread_mutex_lock(&u->lock);
  u->finished++;
  pthread_cond_broadcast(&u->cond);
  pthread_mutex_unlock(&u->lock);
  return NULL;
}

int fuseio_uring_kernel_offers(const struct fuseio_session *session) { return session->offered_uring; }

int fuseio_uring_setup(struct fuseio_session *session, struct fuse_session *se, unsigned depth, size_t payload) {
  struct fuseio_uring *u = calloc(1, sizeof *u);
  if (u == NULL) return -ENOMEM;
  u->se = se;
  u->devfd = fuse_session_fd(se);
  u->depth = depth;
  u->payload = payload;
  u->nqueues = (unsigned)get_nprocs_conf();  // the kernel's num_possible_cpus()
  pthread_mutex_init(&u->lock, NULL);
  pthread_cond_init(&u->cond, NULL);
  u->queues = calloc(u->nqueues, sizeof *u->queues);
  if (u->queues == NULL) {
    free(u);
    return -ENOMEM;
  }
  session->uring = u;
  for (unsigned i = 0; i < u->nqueues; i++) {
    struct queue *q = &u->queues[i];
    q->owner = u;
    q->qid = i;
    q->ring_rc = 1;
    q->entries = calloc(depth, sizeof *q->entries);
    if (q->entries == NULL) {
      fuseio_uring_stop(session);
      return -ENOMEM;
    }
    for (unsigned j = 0; j < depth; j++) {
      struct entry *e = &q->entries[j];
      e->front = malloc(FRONT + payload);
      if (e->front == NULL) {
        fuseio_uring_stop(session);
        return -ENOMEM;
      }
      e->iov[0] = (struct iovec){.iov_base = &e->header, .iov_len = sizeof e->header};
      e->iov[1] = (struct iovec){.iov_base = e->front + FRONT, .iov_len = payload};
    }
    int rc = pthread_create(&q->thread, NULL, queue_main, q);
    if (rc != 0) {
      fuseio_uring_stop(session);
      return -rc;
    }
    q->started = 2;  // thread running
    // The thread makes its ring (its only submitter, as DEFER_TASKRUN needs): wait for it.
    pthread_mutex_lock(&u->lock);
    while (q->ring_rc > 0) pthread_cond_wait(&u->cond, &u->lock);
    rc = q->ring_rc;
    pthread_mutex_unlock(&u->lock);
    if (rc < 0) {
      fuseio_uring_stop(session);
      return rc;
    }
  }
  fuseio_want_uring(session);
  return 0;
}

void fuseio_uring_go(struct fuseio_session *session) {
  struct fuseio_uring *u = session->uring;
  if (u == NULL) return;
  pthread_mutex_lock(&u->lock);
  if (u->go == 0) u->go = 1;
  pthread_cond_broadcast(&u->cond);
  pthread_mutex_unlock(&u->lock);
}

int fuseio_uring_stop(struct fuseio_session *session) {
  struct fuseio_uring *u = session->uring;
  if (u == NULL) return 1;
  unsigned threads = 0;
  for (unsigned i = 0; i < u->nqueues; i++) threads += u->queues[i].started == 2;
  pthread_mutex_lock(&u->lock);
  if (u->go == 0) u->go = -1;  // never registered: the threads just end
  pthread_cond_broadcast(&u->cond);
  // After the unmount every entry completes with -ENOTCONN; wait two seconds at most.
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 2;
  while (u->finished < (int)threads && pthread_cond_timedwait(&u->cond, &u->lock, &deadline) == 0) {}
  int done = u->finished == (int)threads;
  pthread_mutex_unlock(&u->lock);
  if (!done) return 0;  // a thread is still in the kernel's hands: leave it all to the exit
  for (unsigned i = 0; i < u->nqueues; i++) {
    struct queue *q = &u->queues[i];
    if (q->started == 2) pthread_join(q->thread, NULL);
    if (q->entries != NULL) {
      for (unsigned j = 0; j < u->depth; j++) free(q->entries[j].front);
      free(q->entries);
    }
  }
  free(u->queues);
  free(u);
  session->uring = NULL;
  return 1;
}

ssize_t fuseio_uring_take_reply(struct iovec *iov, int count) {
  struct entry *e = serving;
  if (e == NULL) return -1;
  size_t total = 0;
  for (int i = 1; i < count; i++) total += iov[i].iov_len;
  if (iov[0].iov_len < sizeof(struct fuse_out_header) || total > e->iov[1].iov_len) {
    struct fuse_out_header out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    out.error = -EIO;
    memcpy(e->header.in_out, &out, sizeof out);
    e->header.ring_ent_in_out.payload_sz = 0;
  } else {
    memcpy(e->header.in_out, iov[0].iov_base, sizeof(struct fuse_out_header));
    char *p = e->iov[1].iov_base;
    for (int i = 1; i < count; i++) {
      memcpy(p, iov[i].iov_base, iov[i].iov_len);
      p += iov[i].iov_len;
    }
    e->header.ring_ent_in_out.payload_sz = (uint32_t)total;
  }
  e->replied = 1;
  size_t all = total + iov[0].iov_len;
  return (ssize_t)all;
}
