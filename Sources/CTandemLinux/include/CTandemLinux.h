#ifndef CTANDEM_LINUX_H
#define CTANDEM_LINUX_H

/* Linux calls that Swift's Glibc module does not expose (they need _GNU_SOURCE). */

#include <sys/types.h>

/* Mode bits of fallocate(2). */
#define CTANDEM_FALLOC_KEEP_SIZE 0x01
#define CTANDEM_FALLOC_PUNCH_HOLE 0x02
#define CTANDEM_FALLOC_ZERO_RANGE 0x10

/* fallocate(2); returns 0 or -1 with errno set. */
int ctandem_fallocate(int fd, int mode, off_t offset, off_t length);

/* reboot(2) with RB_AUTOBOOT after sync(2): the HA reset; returns only on failure (-1, errno set). */
int ctandem_reboot(void);

/* pipe2(2) with O_CLOEXEC: no other program started meanwhile inherits either end. */
int ctandem_pipe_cloexec(int fds[2]);

/* Adds "close every descriptor from `lowest` up" to spawn file actions (glibc 2.34+). */
int ctandem_spawn_closefrom(void *actions, int lowest);

/* Moves the calling thread into the network namespace at `path` (setns(2)); 0 or -1 with errno. */
int ctandem_enter_network_namespace(const char *path);

/// pread(2) that only copies what the page cache already holds (preadv2 with RWF_NOWAIT): -1 with
/// errno EAGAIN when the first byte is not cached, EOPNOTSUPP where the file cannot say.
ssize_t ctandem_pread_cached(int fd, void *buffer, size_t count, off_t offset);

/* Asks who holds the IPv4 address `target` (network byte order) on interface `interface`, as
   duplicate address detection does (ARP request from 0.0.0.0), `probes` times `interval_ms` apart,
   waiting `timeout_ms` in all. Returns 1 with the responder's MAC in `mac` when someone answered,
   0 when nobody did, -1 with errno set when the interface or the raw socket failed. */
int ctandem_arp_probe(const char *interface, unsigned int target, int probes, int interval_ms, int timeout_ms,
                      unsigned char mac[6]);

/* Announces the IPv4 address `address` (network byte order) on `interface` with one gratuitous ARP
   request, so that neighbours and switches learn its new place. 0, or -1 with errno set. */
int ctandem_arp_announce(const char *interface, unsigned int address);

/* The MAC of `interface` into `mac`: 0, or -1 with errno set. */
int ctandem_interface_mac(const char *interface, unsigned char mac[6]);

/// Hands freed heap memory back to the system (glibc `malloc_trim(0)`); 1 when some was returned.
int ctandem_malloc_trim(void);

#endif
