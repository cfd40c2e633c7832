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
