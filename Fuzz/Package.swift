// swift-tools-version:6.0
// libFuzzer targets for Tandem's parsers of hostile input. A package of its own, so that
// libFuzzer's `main` never meets the `tandem` executable; build and run it with `scripts/fuzz`.
import Foundation
import PackageDescription

/// A path dependency is named by its folder, which is whatever the clone was called.
let tandem = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "TandemFuzz",
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "CFuzzDriver"),
        .executableTarget(
            name: "tandem-fuzz",
            dependencies: [
                "CFuzzDriver",
                .product(name: "TandemParsers", package: tandem),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
