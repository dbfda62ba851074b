#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

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

int shim_syncfs(int fd) { return (int)syscall(SYS_syncfs, fd); }

unsigned long shim_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }
unsigned int shim_major(unsigned long dev) { return major(dev); }
unsigned int shim_minor(unsigned long dev) { return minor(dev); }
