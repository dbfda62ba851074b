// System calls the Swift Glibc module does not offer, or offers only in a variadic or
// macro form Swift cannot call. Each is a thin, inline pass-through.
#ifndef CSYSSHIMS_H
#define CSYSSHIMS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

/// openat2(2) with RESOLVE_* flags: resolution confined beneath `dirfd`.
static inline int shim_openat2(int dirfd, const char *path, unsigned long long flags,
                               unsigned long long mode, unsigned long long resolve) {
  struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
  return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

static inline int shim_open(const char *path, int flags, unsigned int mode) {
  return open(path, flags, mode);
}

static inline int shim_openat(int dirfd, const char *path, int flags, unsigned int mode) {
  return openat(dirfd, path, flags, mode);
}

/// O_PATH, which Swift's Glibc module leaves out.
static const int SHIM_O_PATH = O_PATH;

static inline int shim_syncfs(int fd) { return (int)syscall(SYS_syncfs, fd); }

static inline dev_t shim_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }
static inline unsigned int shim_major(dev_t dev) { return major(dev); }
static inline unsigned int shim_minor(dev_t dev) { return minor(dev); }

#endif
