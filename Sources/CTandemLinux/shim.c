#define _GNU_SOURCE
#include <fcntl.h>
#include "CTandemLinux.h"

int ctandem_fallocate(int fd, int mode, off_t offset, off_t length) {
    return fallocate(fd, mode, offset, length);
}

#include <sys/reboot.h>
#include <unistd.h>

int ctandem_reboot(void) {
    sync();
    return reboot(RB_AUTOBOOT);
}

#include <spawn.h>

int ctandem_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int ctandem_spawn_closefrom(void *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, lowest);
}

#include <sched.h>

int ctandem_enter_network_namespace(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int result = setns(fd, CLONE_NEWNET);
    close(fd);
    return result;
}

#include <sys/uio.h>

ssize_t ctandem_pread_cached(int fd, void *buffer, size_t count, off_t offset) {
    struct iovec vector = {.iov_base = buffer, .iov_len = count};
    return preadv2(fd, &vector, 1, offset, RWF_NOWAIT);
}
