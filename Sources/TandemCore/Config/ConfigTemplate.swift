/// The commented config files that `tandem init` and `tandem lab` write.
public enum ConfigTemplate {
    /// A two-node example with a witness, to be edited by the administrator.
    public static func example(
        secretFile: String, stateDirectory: String = "/var/lib/tandem", tlsDirectory: String = "/etc/tandem/tls"
    ) -> String {
        """
        # Tandem cluster configuration. The same file goes on every node.
        # Check it with: tandem config check /etc/tandem/tandem.toml

        [cluster]
        name = "media"                        # peers with another cluster name are refused
        secret-file = "\(secretFile)"         # shared secret; copy it to every node (mode 0600)
        state-dir = "\(stateDirectory)"       # modes, journal, metadata of block-device volumes
        # ha-reset = "reboot"                 # what a node that cannot prove it stopped does ("exit" in labs)
        # fence-command = "/usr/local/sbin/fence-peer"  # without a witness: `CMD NODE ADDRESS`, exit 0 = off
        # peer-congestion-control = "cubic"   # the peer link's TCP congestion control; "system" keeps the kernel's
        # watchdog = "/dev/watchdog"          # armed and fed by the agent: a dead or frozen agent resets its host
        tls-dir = "\(tlsDirectory)"           # the cluster's authority; each node's certificate in NODE/
        # nbd-client-certificates = "required"  # NBD clients must show a certificate from `tandem cert client`
        peer-tls = "on"                       # replication over mutual TLS; "off" only on a dedicated link

        [[node]]
        name = "box-a"                        # `tandem agent --node box-a` (default: the host name)
        address = "10.0.0.1"                  # peer link
        heartbeat = ["10.0.0.1", "192.168.50.1"]   # every link carries heartbeats
        precedence = 10                       # the lowest number is the preferred primary
        nbd-listen = ["10.0.0.1:10809", "10.0.0.50:10809"]  # own and floating addresses; "unix:/path" too
        tls = "require"                       # NBD over TLS: "off", "allow" or "require"
        api-listen = ["10.0.0.1:7443"]        # the management API over HTTPS (tokens: `tandem token create`)

        [[node]]
        name = "box-b"
        address = "10.0.0.2"
        heartbeat = ["10.0.0.2", "192.168.50.2"]
        precedence = 20
        nbd-listen = ["10.0.0.2:10809", "10.0.0.50:10809"]
        tls = "require"
        api-listen = ["10.0.0.2:7443"]

        [witness]
        address = "10.0.0.3"                  # `tandem witness` on a third machine breaks ties

        [timing]
        heartbeat-interval = "200ms"
        dead-time = "2s"                      # every link silent this long: the peer is dead

        [limits]
        nbd-max-request = "32MiB"             # largest NBD request (advertised block size maximum)
        nbd-max-in-flight = 64                # requests per connection before the server stops reading
        nbd-max-connections = 128             # clients in transmission at once
        nbd-max-buffered = "64MiB"            # write payloads and read replies held, all clients together

        [[volume]]
        name = "vol0"
        protocol = "C"                        # A: async, B: peer received, C: both wrote it
        size = "100GiB"
        backing = "/srv/tandem/vol0.img"      # a file (created on first use) or a block device
        nbd-export = "vol0"

        [[group]]
        name = "storage"
        failback = "manual"                   # or "auto"
        resources = [
          { type = "volume", volume = "vol0" },
          { type = "ip", address = "10.0.0.50/24", interface = "eth0" },
          { type = "nbd-export", volume = "vol0" },
          # an OCF agent, as Pacemaker runs it; restarted in place up to max-restarts, then moved:
          # { type = "ocf", agent = "heartbeat:Filesystem", max-restarts = 3, params = { device = "/dev/nbd0", directory = "/srv/media", fstype = "xfs" } },
        ]

        """
    }

    /// The lab: two nodes and a witness on loopback addresses, file-backed volumes in `directory`.
    public static func lab(
        directory: String, sizeText: String, port: Int, deadTime: String = "2s", apiPort: Int = 7443
    ) -> String {
        """
        # Written by `tandem lab`: two nodes and a witness on loopback, file-backed volumes.

        [cluster]
        name = "lab"
        secret-file = "\(directory)/secret"
        state-dir = "\(directory)/state/{node}"
        ha-reset = "exit"                     # the lab's agents exit instead of rebooting the machine
        tls-dir = "\(directory)/tls"          # the lab's own authority and node certificates

        [[node]]
        name = "lab-a"
        address = "127.0.0.1"
        heartbeat = ["127.0.0.1", "127.0.1.1"]
        precedence = 10
        nbd-listen = ["127.0.0.1:\(port)"]
        api-listen = ["127.0.0.1:\(apiPort)"]
        health-listen = ["127.0.0.1:\(apiPort + 1)"]

        [[node]]
        name = "lab-b"
        address = "127.0.0.2"
        heartbeat = ["127.0.0.2", "127.0.1.2"]
        precedence = 20
        nbd-listen = ["127.0.0.2:\(port)"]
        api-listen = ["127.0.0.2:\(apiPort)"]
        health-listen = ["127.0.0.2:\(apiPort + 1)"]

        [witness]
        address = "127.0.0.3"

        [timing]
        heartbeat-interval = "200ms"
        dead-time = "\(deadTime)"

        [[volume]]
        name = "vol0"
        protocol = "C"
        size = "\(sizeText)"
        backing = "\(directory)/{node}/vol0.img"

        """
    }
}
