// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Tandem",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tandem", targets: ["tandem"]),
        // The parsers of hostile input, for the fuzz targets in Fuzz/.
        .library(name: "TandemParsers", targets: ["TandemCore", "TandemWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        // Without its default traits: the agent reads no swift-configuration and needs no full Foundation.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .target(name: "TandemCore"),
        .target(
            name: "TandemWire",
            dependencies: ["TandemCore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(name: "TandemResources", dependencies: ["TandemCore", "CTandemLinux"]),
        // The management plane's contract (request and reply types) and its client, shared by the
        // agent, the CLI and the tests.
        .target(
            name: "TandemAPI",
            dependencies: [
                "TandemCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .target(name: "CTandemLinux"),
        .target(
            name: "TandemStorage",
            dependencies: [
                "TandemCore",
                "CTandemLinux",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "TandemReplication",
            dependencies: [
                "TandemCore", "TandemWire", "TandemStorage", .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "TandemAgent",
            dependencies: [
                "TandemCore",
                "TandemWire",
                "TandemStorage",
                "TandemReplication",
                "TandemResources",
                "TandemAPI",
                "CTandemLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .executableTarget(
            name: "tandem",
            dependencies: [
                "TandemCore",
                "TandemAgent",
                "TandemAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Optimised even in debug builds: CI runs a thousand simulated scenarios.
        .target(name: "TandemSim", dependencies: ["TandemCore"], swiftSettings: [.unsafeFlags(["-O"])]),
        // Searches the data-path simulator's seeds outside CI (`swift run -c release tandem-sim`).
        .executableTarget(name: "tandem-sim", dependencies: ["TandemSim", "TandemCore"]),
        .target(name: "TandemTestSupport", path: "Tests/TandemTestSupport"),
        .testTarget(name: "TandemCoreTests", dependencies: ["TandemCore"]),
        .testTarget(
            name: "TandemResourcesTests", dependencies: ["TandemResources", "TandemCore", "TandemTestSupport"]),
        .testTarget(name: "TandemSimTests", dependencies: ["TandemSim", "TandemCore"]),
        .testTarget(name: "TandemMembershipTests", dependencies: ["TandemCore", "TandemWire", "TandemStorage"]),
        .testTarget(
            name: "TandemWireTests",
            dependencies: [
                "TandemWire",
                "TandemCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "TandemStorageTests", dependencies: ["TandemStorage", "TandemCore", "TandemTestSupport"]),
        .testTarget(
            name: "TandemReplicationTests",
            dependencies: ["TandemReplication", "TandemCore", "TandemStorage", "TandemWire", "TandemTestSupport"]
        ),
        .testTarget(
            name: "TandemAgentTests",
            dependencies: [
                "TandemAgent",
                "TandemWire",
                "TandemReplication",
                "TandemTestSupport",
                "TandemCore",
                "TandemStorage",
                "TandemAPI",
                "CTandemLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
    ]
)
