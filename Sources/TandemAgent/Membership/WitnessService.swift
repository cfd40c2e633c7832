import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TandemCore
import TandemReplication
import TandemStorage
import TandemWire

/// `tandem witness`: the third voter. Holds no data; answers heartbeats, lease renewals and vote
/// requests from the two nodes, and keeps its votes and outdated marks in a state file.
public final class WitnessService: Service, Sendable {
    private let configuration: Configuration
    private let transport: MembershipTransport
    private let statePath: String
    private let logger: Logger
    private let initial: MembershipState

    /// Reads the persisted state; a damaged state file refuses the start.
    public init(configuration: Configuration, logger: Logger) throws(AgentError) {
        guard configuration.witness != nil else { throw .unsupported("the config has no [witness] section") }
        guard configuration.nodes.count == 2 else {
            throw .unsupported("a witness votes between two nodes; the config has \(configuration.nodes.count)")
        }
        self.configuration = configuration
        let secret = try Agent.readSecret(configuration)
        try Agent.makeDirectory(configuration.cluster.stateDirectory)
        // Two witnesses with one record would each vote from their own memory of it.
        try NodeLock.acquire(directory: configuration.cluster.stateDirectory, node: "witness", what: "witness")
        self.transport = MembershipTransport(
            cluster: configuration.cluster.name, name: MembershipService.witnessName, secret: secret,
            incarnation: try MembershipTransport.nextIncarnation(
                path: "\(configuration.cluster.stateDirectory)/witness.incarnation"),
            logger: logger)
        self.statePath = "\(configuration.cluster.stateDirectory)/witness.membership"
        self.logger = logger
        self.initial = try MembershipState.load(path: statePath)
    }

    public func run() async throws {
        guard let witness = configuration.witness else { return }
        let nodes = configuration.nodes.map(\.name)
        let controller = Mutex(
            WitnessController(
                name: MembershipService.witnessName, nodes: nodes, leaseTime: configuration.timing.deadTime,
                record: initial.record, now: MembershipService.systemNow()))
        let sender = try DatagramSender(host: witness.address)
        // Replies go to the node's configured first heartbeat address, where it listens.
        let replyAddresses = Dictionary(
            uniqueKeysWithValues: configuration.nodes.compactMap { node in
                (try? SocketAddress(ipAddress: node.heartbeat.first ?? node.address, port: node.port)).map {
                    (node.name, $0)
                }
            })
        let channel = try await MembershipTransport.bind(
            host: witness.address, port: witness.port, group: MultiThreadedEventLoopGroup.singleton
        ) { [transport, logger, statePath] bytes, source in
            let message: MembershipMessage
            let opened = transport.open(bytes) { recipient, challenge in
                if let address = replyAddresses[recipient] { sender.send(challenge, to: address) }
            }
            switch opened {
            case .success(let opened): message = opened
            case .failure(let error):
                logger.debug("datagram from \(source) refused: \(error)")
                return
            }
            // One datagram at a time: the record is stored before the answer leaves.
            controller.withLock { controller in
                let before = controller.voter.record
                let actions = controller.receive(message, now: MembershipService.systemNow())
                for action in actions {
                    switch action {
                    case .persist(let record):
                        do {
                            try AtomicFile.replace(path: statePath, bytes: MembershipState(record: record).encoded())
                        } catch {
                            logger.critical("cannot store \(statePath): \(error); answer withheld")
                            return
                        }
                        if record.epoch != before.epoch {
                            logger.notice("vote for epoch \(record.epoch) went to \(record.holder ?? "-")")
                        }
                        if record.outdated != before.outdated {
                            logger.notice("outdated nodes: \(record.outdated.sorted())")
                        }
                    case .send(let reply, _):
                        if let address = replyAddresses[message.sender] {
                            sender.send(transport.seal(reply, to: message.sender), to: address)
                        }
                    default:
                        break
                    }
                }
            }
        }
        logger.info("witness of cluster \(configuration.cluster.name) listening on \(witness.address):\(witness.port)")
        SystemdNotify.send("READY=1\nSTATUS=witness of \(configuration.cluster.name)")
        try? await gracefulShutdown()
        try? await channel.close()
    }
}
