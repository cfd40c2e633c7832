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

#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>

/* An ARP packet for Ethernet and IPv4, as it travels after the Ethernet header. */
struct ctandem_arp {
    unsigned short hardware_type, protocol_type;
    unsigned char hardware_length, protocol_length;
    unsigned short operation;
    unsigned char sender_mac[6];
    unsigned char sender_ip[4];
    unsigned char target_mac[6];
    unsigned char target_ip[4];
} __attribute__((packed));

int ctandem_interface_mac(const char *interface, unsigned char mac[6]) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, interface, IFNAMSIZ - 1);
    int status = ioctl(fd, SIOCGIFHWADDR, &request);
    int saved = errno;
    close(fd);
    if (status < 0) {
        errno = saved;
        return -1;
    }
    memcpy(mac, request.ifr_hwaddr.sa_data, 6);
    return 0;
}

/* A raw ARP socket bound to `interface`, its link address in `link` and its MAC in `mac`. */
static int ctandem_arp_socket(const char *interface, struct sockaddr_ll *link, unsigned char mac[6]) {
    unsigned int index = if_nametoindex(interface);
    if (index == 0) return -1;
    if (ctandem_interface_mac(interface, mac) != 0) return -1;
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (fd < 0) return -1;
    memset(link, 0, sizeof *link);
    link->sll_family = AF_PACKET;
    link->sll_protocol = htons(ETH_P_ARP);
    link->sll_ifindex = (int)index;
    if (bind(fd, (struct sockaddr *)link, sizeof *link) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    link->sll_halen = 6;
    memset(link->sll_addr, 0xff, 6);
    return fd;
}

static int ctandem_arp_send(int fd, struct sockaddr_ll *link, const unsigned char mac[6], unsigned int sender,
                            unsigned int target) {
    struct ctandem_arp packet;
    memset(&packet, 0, sizeof packet);
    packet.hardware_type = htons(ARPHRD_ETHER);
    packet.protocol_type = htons(ETH_P_IP);
    packet.hardware_length = 6;
    packet.protocol_length = 4;
    packet.operation = htons(ARPOP_REQUEST);
    memcpy(packet.sender_mac, mac, 6);
    memcpy(packet.sender_ip, &sender, 4);
    memcpy(packet.target_ip, &target, 4);
    ssize_t sent = sendto(fd, &packet, sizeof packet, 0, (struct sockaddr *)link, sizeof *link);
    return sent == (ssize_t)sizeof packet ? 0 : -1;
}

static long ctandem_milliseconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000L + now.tv_nsec / 1000000L;
}

int ctandem_arp_probe(const char *interface, unsigned int target, int probes, int interval_ms, int timeout_ms,
                      unsigned char mac[6]) {
    struct sockaddr_ll link;
    unsigned char own[6];
    int fd = ctandem_arp_socket(interface, &link, own);
    if (fd < 0) return -1;
    long start = ctandem_milliseconds_now();
    long next_probe = start;
    int sent = 0;
    for (;;) {
        long now = ctandem_milliseconds_now();
        if (now - start >= timeout_ms) break;
        if (sent < probes && now >= next_probe) {
            if (ctandem_arp_send(fd, &link, own, 0, target) != 0) {
                int saved = errno;
                close(fd);
                errno = saved;
                return -1;
            }
            sent += 1;
            next_probe = now + interval_ms;
        }
        long wait = timeout_ms - (now - start);
        if (sent < probes && next_probe - now < wait) wait = next_probe - now;
        struct pollfd ready = {.fd = fd, .events = POLLIN};
        int status = poll(&ready, 1, (int)(wait > 0 ? wait : 0));
        if (status < 0 && errno != EINTR) break;
        if (status <= 0) continue;
        struct ctandem_arp answer;
        ssize_t length = recv(fd, &answer, sizeof answer, 0);
        if (length < (ssize_t)sizeof answer) continue;
        if (answer.operation != htons(ARPOP_REPLY) && answer.operation != htons(ARPOP_REQUEST)) continue;
        /* A reply from the holder, or another host's own probe or announcement for the address. */
        if (memcmp(answer.sender_ip, &target, 4) != 0) continue;
        if (memcmp(answer.sender_mac, own, 6) == 0) continue;
        memcpy(mac, answer.sender_mac, 6);
        close(fd);
        return 1;
    }
    close(fd);
    return 0;
}

int ctandem_arp_announce(const char *interface, unsigned int address) {
    struct sockaddr_ll link;
    unsigned char own[6];
    int fd = ctandem_arp_socket(interface, &link, own);
    if (fd < 0) return -1;
    int status = ctandem_arp_send(fd, &link, own, address, address);
    int saved = errno;
    close(fd);
    errno = saved;
    return status;
}

#include <malloc.h>

int ctandem_malloc_trim(void) {
    return malloc_trim(0);
}
