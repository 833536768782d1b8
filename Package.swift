// swift-tools-version:6.1
import PackageDescription

let cSettings: [CSetting] = [.define("_GNU_SOURCE")]

let package = Package(
    name: "swift-socket-offload",
    products: [
        .library(name: "SocketClient", targets: ["SocketClient"]),
        .library(name: "SocketShared", targets: ["SocketShared"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C: syscalls Swift can't express well and the shared-memory layout with _Atomic fields.
        .target(name: "CShims", cSettings: cSettings),
        // lwIP headers from Debian's liblwip-dev (server only).
        .systemLibrary(
            name: "CLwIP",
            pkgConfig: "lwip",
            providers: [.apt(["liblwip-dev"])]
        ),
        // Wire protocol, shared segment, rings, notifier, errors: both sides.
        .target(name: "SocketShared", dependencies: ["CShims"]),
        // The client library applications link.
        .target(name: "SocketClient", dependencies: ["SocketShared", "CShims"]),

        // Cross-process test peer: the other process in the shared-memory tests.
        .executableTarget(
            name: "shm-peer",
            dependencies: ["SocketShared", "CShims"],
            path: "Tests/shm-peer"
        ),
        .testTarget(
            name: "SocketSharedTests",
            dependencies: ["SocketShared", "CShims"]
        ),
    ]
)
