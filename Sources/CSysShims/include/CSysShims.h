// System calls the Swift Glibc module does not offer, or offers only in a variadic or
// macro form Swift cannot call. Each is a thin pass-through, defined in shims.c.
//
// This header must not define _GNU_SOURCE or include headers under it: Clang would then
// see a second, different definition of glibc types (fd_set) than the SwiftGlibc module's
// and a clean build fails. shims.c is compiled with _GNU_SOURCE instead.
#ifndef CSYSSHIMS_H
#define CSYSSHIMS_H
#include <linux/openat2.h>
#include <sys/xattr.h>

/// openat2(2) with RESOLVE_* flags: resolution confined beneath `dirfd`.
int shim_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve);
int shim_open(const char *path, int flags, unsigned int mode);
int shim_openat(int dirfd, const char *path, int flags, unsigned int mode);

/// O_PATH and O_NOATIME, which Swift's Glibc module leaves out.
extern const int SHIM_O_PATH;
extern const int SHIM_O_NOATIME;
/// O_TMPFILE: an unnamed file in a directory's file system, linked later (or never).
extern const int SHIM_O_TMPFILE;

int shim_syncfs(int fd);
/// The calling thread's own nice value (getpriority(PRIO_PROCESS, gettid())), and
/// setpriority of it: -1 with errno on failure (a nice of -1 reads with errno 0).
int shim_thread_nice_get(int *nice);
int shim_thread_nice_set(int nice);
/* sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE), which Swift's Glibc module lacks. */
int shim_start_writeback(int fd);

/// getsockopt(SO_PEERCRED): the pid, uid and gid of a unix socket's peer (struct ucred
/// needs _GNU_SOURCE).
int shim_peer_credentials(int fd, int *pid, unsigned int *uid, unsigned int *gid);

/// Names _GNU_SOURCE gives that Swift's Glibc module leaves out.
extern const int SHIM_AT_EMPTY_PATH;
extern const long SHIM_UTIME_NOW;
extern const long SHIM_UTIME_OMIT;
extern const unsigned int SHIM_RENAME_NOREPLACE;
/// pipe2(2) with O_CLOEXEC | O_NONBLOCK.
int shim_pipe_nonblocking(int fds[2]);
/// renameat2(2) with RENAME_EXCHANGE: two names swap their files in one step.
int shim_rename_exchange(int fromdir, const char *from, int todir, const char *to);
int shim_fallocate(int fd, int mode, long long offset, long long length);
/// copy_file_range(2) at the given offsets (the descriptors' own offsets do not move).
long long shim_copy_file_range_at(int in, long long in_offset, int out, long long out_offset, unsigned long long length);

/// The *xattrat(2) calls (Linux 6.13): extended attributes of `path` beneath `dirfd`, with
/// AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH ("" names `dirfd` itself, which must then not be
/// an O_PATH descriptor: EBADF), where the older calls need a path (through /proc/self/fd
/// for an O_PATH descriptor). -1 with errno ENOSYS on older kernels. `flags` of setxattrat
/// are XATTR_*.
long shim_getxattrat(int dirfd, const char *path, int at_flags, const char *name, void *value, unsigned long size);
long shim_listxattrat(int dirfd, const char *path, int at_flags, char *list, unsigned long size);
int shim_setxattrat(int dirfd, const char *path, int at_flags, const char *name, const void *value, unsigned long size, int flags);
int shim_removexattrat(int dirfd, const char *path, int at_flags, const char *name);

/// malloc_trim(3): gives memory free in malloc's arenas back to the kernel (malloc.h is not
/// in Swift's Glibc module).
int shim_malloc_trim(void);

unsigned long shim_makedev(unsigned int major, unsigned int minor);
unsigned int shim_major(unsigned long dev);
unsigned int shim_minor(unsigned long dev);

/// libFuzzer's entry point for a program with a main of its own (libclang_rt.fuzzer_no_main),
/// Attaches the open file `fd` to a free loop device (LOOP_CTL_GET_FREE, then LOOP_CONFIGURE
/// with LO_FLAGS_AUTOCLEAR: the device detaches itself once its last user goes). Returns an
/// open descriptor of the device, to be held until it is mounted, and its number in
/// *index; or -errno.
int shim_loop_attach(int fd, int *index);

/// A relaxed atomic add to a counter in memory another process maps too (snapfs's
/// request statistics, FuseStats).
void shim_add_relaxed(unsigned long long *counter, unsigned long long value);
/// A relaxed atomic load of such a counter.
unsigned long long shim_load_relaxed(const unsigned long long *counter);

/// linked only into the fuzzing build of Tests/fuzz (scripts/fuzz); declared here so that
/// build can call it.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const unsigned char *Data, unsigned long Size));

#endif
