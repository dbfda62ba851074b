#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <string.h>
#include <sys/ioctl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>
#include <sys/resource.h>

#include "CSysShims.h"

int shim_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve) {
  struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
  return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int shim_open(const char *path, int flags, unsigned int mode) { return open(path, flags, mode); }

int shim_openat(int dirfd, const char *path, int flags, unsigned int mode) {
  return openat(dirfd, path, flags, mode);
}

const int SHIM_O_PATH = O_PATH;
const int SHIM_O_NOATIME = O_NOATIME;
const int SHIM_O_TMPFILE = O_TMPFILE;

int shim_syncfs(int fd) { return (int)syscall(SYS_syncfs, fd); }

int shim_thread_nice_get(int *nice) {
  errno = 0;
  int value = getpriority(PRIO_PROCESS, (id_t)gettid());
  if (value == -1 && errno != 0) return -1;
  *nice = value;
  return 0;
}
int shim_thread_nice_set(int nice) { return setpriority(PRIO_PROCESS, (id_t)gettid(), nice); }
int shim_start_writeback(int fd) { return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); }

const int SHIM_AT_EMPTY_PATH = AT_EMPTY_PATH;
const long SHIM_UTIME_NOW = UTIME_NOW;
const long SHIM_UTIME_OMIT = UTIME_OMIT;
const unsigned int SHIM_RENAME_NOREPLACE = RENAME_NOREPLACE;

int shim_pipe_nonblocking(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }

int shim_rename_exchange(int fromdir, const char *from, int todir, const char *to) {
  return renameat2(fromdir, from, todir, to, RENAME_EXCHANGE);
}

int shim_fallocate(int fd, int mode, long long offset, long long length) {
  return fallocate(fd, mode, offset, length);
}

long long shim_copy_file_range_at(int in, long long in_offset, int out, long long out_offset, unsigned long long length) {
  loff_t i = in_offset, o = out_offset;
  return copy_file_range(in, &i, out, &o, length, 0);
}

int shim_malloc_trim(void) { return malloc_trim(0); }

unsigned long shim_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }
unsigned int shim_major(unsigned long dev) { return major(dev); }
unsigned int shim_minor(unsigned long dev) { return minor(dev); }

// Linux 6.13's numbers, the same on x86_64 and aarch64 (glibc 2.36 does not know them).
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#define SYS_getxattrat 464
#define SYS_listxattrat 465
#define SYS_removexattrat 466
#endif
struct shim_xattr_args {
  unsigned long long value;
  unsigned int size;
  unsigned int flags;
};

long shim_getxattrat(int dirfd, const char *path, int at_flags, const char *name, void *value, unsigned long size) {
  struct shim_xattr_args args = {.value = (unsigned long long)(uintptr_t)value, .size = (unsigned int)size, .flags = 0};
  return syscall(SYS_getxattrat, dirfd, path, at_flags, name, &args, sizeof args);
}

long shim_listxattrat(int dirfd, const char *path, int at_flags, char *list, unsigned long size) {
  return syscall(SYS_listxattrat, dirfd, path, at_flags, list, size);
}

int shim_setxattrat(int dirfd, const char *path, int at_flags, const char *name, const void *value, unsigned long size, int flags) {
  struct shim_xattr_args args = {.value = (unsigned long long)(uintptr_t)value, .size = (unsigned int)size, .flags = (unsigned int)flags};
  return (int)syscall(SYS_setxattrat, dirfd, path, at_flags, name, &args, sizeof args);
}

int shim_removexattrat(int dirfd, const char *path, int at_flags, const char *name) {
  return (int)syscall(SYS_removexattrat, dirfd, path, at_flags, name);
}

int shim_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid) {
  struct ucred c;
  socklen_t len = sizeof c;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) < 0) return -1;
  *pid = c.pid;
  *uid = c.uid;
  *gid = c.gid;
  return 0;
}

void shim_add_relaxed(unsigned long long *counter, unsigned long long value) {
  __atomic_fetch_add(counter, value, __ATOMIC_RELAXED);
}

unsigned long long shim_load_relaxed(const unsigned long long *counter) {
  return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

int shim_loop_attach(int fd, int *index) {
  for (int tries = 0; tries < 64; tries++) {
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return -errno;
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    int e = errno;
    close(ctl);
    if (n < 0) return -e;
    char path[32];
    snprintf(path, sizeof path, "/dev/loop%d", n);
    int dev = open(path, O_RDWR | O_CLOEXEC);
    if (dev < 0) {
      if (errno == ENOENT || errno == ENXIO) continue;  /* removed meanwhile */
      return -errno;
    }
    struct loop_config config;
    memset(&config, 0, sizeof config);
    config.fd = (unsigned int)fd;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (ioctl(dev, LOOP_CONFIGURE, &config) == 0) {
      *index = n;
      return dev;
    }
    e = errno;
    close(dev);
    if (e != EBUSY) return -e;  /* EBUSY: another process took it first */
  }
  return -EBUSY;
}
