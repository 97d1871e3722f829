/*
 * faultfs: I/O faults injected at the system-call boundary of a child
 * process (LD_PRELOAD), for the tests of issue 18. Built by
 * highwater_testkit::faultfs::shim(); see that module for the protocol.
 *
 * While the file named by HW_FAULTFS_ARM exists ("armed"), calls on a file
 * descriptor whose path contains HW_FAULTFS_PATTERN fail with EIO:
 *   HW_FAULTFS_SYNC set: fdatasync and fsync. The first injected failure
 *     removes the arm file, as the kernel reports a writeback error once
 *     and lets the next fsync succeed (the "fsyncgate" behaviour a log
 *     must not be fooled by).
 *   HW_FAULTFS_READ set: read, pread, pread64, readv (every call while
 *     armed: a bad sector stays bad).
 * Every injected fault is reported on stderr as "faultfs: CALL(FD) -> EIO".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int armed(void) {
    const char *arm = env("HW_FAULTFS_ARM");
    struct stat st;
    return arm && stat(arm, &st) == 0;
}

static int matches(int fd) {
    const char *pattern = env("HW_FAULTFS_PATTERN");
    char link[64], path[4096];
    ssize_t n;
    if (!pattern) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, pattern) != NULL;
}

static int inject(const char *kind, const char *call, int fd) {
    if (!env(kind) || !armed() || !matches(fd)) return 0;
    fprintf(stderr, "faultfs: %s(%d) -> EIO\n", call, fd);
    errno = EIO;
    return 1;
}

static void *next(const char *name) { return dlsym(RTLD_NEXT, name); }

static int sync_fault(const char *call, int fd) {
    if (!inject("HW_FAULTFS_SYNC", call, fd)) return 0;
    unlink(env("HW_FAULTFS_ARM"));
    errno = EIO;
    return 1;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))next("fdatasync");
    if (sync_fault("fdatasync", fd)) return -1;
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))next("fsync");
    if (sync_fault("fsync", fd)) return -1;
    return real(fd);
}

ssize_t read(int fd, void *buf, size_t count) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real) real = (ssize_t (*)(int, void *, size_t))next("read");
    if (inject("HW_FAULTFS_READ", "read", fd)) return -1;
    return real(fd, buf, count);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, void *, size_t, off_t))next("pread");
    if (inject("HW_FAULTFS_READ", "pread", fd)) return -1;
    return real(fd, buf, count, offset);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, void *, size_t, off_t))next("pread64");
    if (inject("HW_FAULTFS_READ", "pread64", fd)) return -1;
    return real(fd, buf, count, offset);
}

ssize_t readv(int fd, const struct iovec *iov, int iovcnt) {
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real) real = (ssize_t (*)(int, const struct iovec *, int))next("readv");
    if (inject("HW_FAULTFS_READ", "readv", fd)) return -1;
    return real(fd, iov, iovcnt);
}
