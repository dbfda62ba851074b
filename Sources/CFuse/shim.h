// libfuse 3 low-level API for snapfs, plus the few calls Swift cannot make itself: macros
// (fuse_session_loop_mt is a versioned macro, FUSE_BUFVEC_INIT) and buffer vectors.
#ifndef SNAPFS_CFUSE_H
#define SNAPFS_CFUSE_H
#define FUSE_USE_VERSION 314
#include <stddef.h>
#include <fuse_lowlevel.h>

/// The multi-threaded session loop with at most `max_threads` workers, one /dev/fuse clone
/// descriptor per worker.
static inline int snapfs_loop_mt(struct fuse_session *se, unsigned max_threads, unsigned max_idle) {
  struct fuse_loop_config *config = fuse_loop_cfg_create();
  if (config == NULL) return -1;
  fuse_loop_cfg_set_clone_fd(config, 1);
  fuse_loop_cfg_set_max_threads(config, max_threads);
  fuse_loop_cfg_set_idle_threads(config, max_idle);
  int rc = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);
  return rc;
}

/// Replies to a read with `size` bytes of `fd` at `offset`, spliced from the file to
/// /dev/fuse when the kernel allows it (no copy through user space).
static inline int snapfs_reply_fd(fuse_req_t req, int fd, size_t size, off_t offset) {
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  buf.buf[0].flags = (enum fuse_buf_flags)(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = fd;
  buf.buf[0].pos = offset;
  return fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

/// Stores `size` bytes of `fd` from offset 0 in the kernel's page cache of inode `ino`
/// (FUSE_NOTIFY_STORE): 0 or -errno.
static inline int snapfs_notify_store(struct fuse_session *se, fuse_ino_t ino, int fd, size_t size) {
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  buf.buf[0].flags = (enum fuse_buf_flags)(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = fd;
  buf.buf[0].pos = 0;
  return fuse_lowlevel_notify_store(se, ino, 0, &buf, (enum fuse_buf_copy_flags)0);
}

/// Writes the request's data buffers to `fd` at `offset`: returns bytes written or -errno.
static inline ssize_t snapfs_write_buf(int fd, struct fuse_bufvec *in, off_t offset) {
  struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
  out.buf[0].flags = (enum fuse_buf_flags)(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  out.buf[0].fd = fd;
  out.buf[0].pos = offset;
  return fuse_buf_copy(&out, in, (enum fuse_buf_copy_flags)0);
}

/// fuse_file_info's bit fields.
static inline void snapfs_fi_set(struct fuse_file_info *fi, int keep_cache, int cache_readdir, int noflush) {
  fi->keep_cache = keep_cache;
  fi->cache_readdir = cache_readdir;
  fi->noflush = noflush;
}
#endif
