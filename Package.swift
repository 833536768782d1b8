// swift-tools-version:6.1
import PackageDescription

let cSettings: [CSetting] = [.define("_GNU_SOURCE")]

let package = Package(
    name: "swift-socket-offload",
    products: [
        .library(name: "SocketClient", targets: ["SocketClient"]),
        // The same library as a shared object, for C programs (include/socket_offload.h).
        .library(name: "SocketClientDynamic", type: .dynamic, targets: ["SocketClient"]),
        .library(name: "SocketShared", targets: ["SocketShared"]),
        // The LD_PRELOAD library (C): libsocket-offload-preload.so, next to libSocketClientDynamic.so.
        .library(name: "socket-offload-preload", type: .dynamic, targets: ["SocketPreload"]),
        .library(name: "SocketServer", targets: ["SocketServer"]),
        .executable(name: "socket-server", targets: ["socket-server"]),
        .executable(name: "socket-bench", targets: ["socket-bench"]),
        .executable(name: "socket-offload-run", targets: ["socket-offload-run"]),
        .executable(name: "socket-stat", targets: ["socket-stat"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
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
        // libpcap from Debian's libpcap-dev: tcpdump's filter language for live captures.
        .systemLibrary(
            name: "CPcap",
            pkgConfig: "libpcap",
            providers: [.apt(["libpcap-dev"])]
        ),
        // Wire protocol, shared segment, rings, notifier, errors: both sides.
        .target(name: "SocketShared", dependencies: ["CShims"]),
        // lwIP glue that Swift cannot express (macros, netif init, ip_addr_t) and libnuma placement.
        .target(
            name: "CStack",
            dependencies: ["CLwIP", "CPcap"],
            cSettings: cSettings,
            linkerSettings: [.linkedLibrary("numa")]
        ),
        // The stack, sessions, sockets and channel pumps.
        .target(
            name: "SocketServer",
            dependencies: [
                "SocketShared", "CShims", "CStack", "CLwIP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "socket-server",
            dependencies: [
                "SocketServer", "SocketShared",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The launcher: runs any program with LD_PRELOAD=libsocket-offload-preload.so.
        .executableTarget(
            name: "socket-offload-run",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // ss for the stack: the server's sockets, clients, counters and interfaces (admin reports).
        .executableTarget(
            name: "socket-stat",
            dependencies: [
                "SocketClient", "SocketShared", "CPcap",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The benchmark: every workload over the kernel's sockets and over the stack.
        .executableTarget(
            name: "socket-bench",
            dependencies: [
                "SocketClient", "SocketShared", "CShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The client library applications link.
        .target(name: "SocketClient", dependencies: ["SocketShared", "CShims"]),
        // Unmodified programs on the stack: libc's socket calls interposed (C: it runs inside any
        // program, before any Swift code), forwarding ours to SocketClient's sko_* calls, which it
        // loads on first use.
        .target(
            name: "SocketPreload",
            cSettings: cSettings,
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]
        ),

        // Examples: the echo pairs, built on SocketClient.
        .executableTarget(
            name: "udp-echo-server",
            dependencies: ["SocketClient", "SocketShared", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "examples/udp-echo-server",
            exclude: ["README.md"]
        ),
        .executableTarget(
            name: "udp-echo-client",
            dependencies: ["SocketClient", "SocketShared", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "examples/udp-echo-client",
            exclude: ["README.md"]
        ),

        .executableTarget(
            name: "tcp-echo-server",
            dependencies: ["SocketClient", "SocketShared", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "examples/tcp-echo-server",
            exclude: ["README.md"]
        ),
        .executableTarget(
            name: "tcp-echo-client",
            dependencies: ["SocketClient", "SocketShared", "CShims", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "examples/tcp-echo-client",
            exclude: ["README.md"]
        ),

        // Cross-process test peer: the other process in the shared-memory tests.
        .executableTarget(
            name: "shm-peer",
            dependencies: ["SocketShared", "CShims"],
            path: "Tests/shm-peer"
        ),
        .testTarget(
            name: "SocketSharedTests",
            dependencies: ["SocketShared", "CShims", "TestSupport"]
        ),

        // The client peer of the UDP integration tests: a second SocketClient process the tests
        // can kill, block, or run as another user.
        .executableTarget(
            name: "client-peer",
            dependencies: ["SocketClient", "SocketShared", "CShims"],
            path: "Tests/client-peer"
        ),
        // Something listening where a socket server should be (silent, recording, refusing, or run
        // as another user): the client's authentication and timeout tests.
        .executableTarget(
            name: "fake-server",
            dependencies: ["SocketShared", "CShims"],
            path: "Tests/fake-server"
        ),
        // Integration tests against the real socket-server, echo examples and client-peer binaries.
        .testTarget(
            name: "SocketClientTests",
            dependencies: ["SocketClient", "SocketShared", "CShims", "TestSupport"]
        ),
        // Process helpers for tests (spawn and reap helper programs, a socket server per test, /proc
        // readings); any test target may depend on it.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // TCP tests: the second client process, and the tests (in-process BSD calls, the examples,
        // client death, a slow reader).
        .executableTarget(
            name: "tcp-peer",
            dependencies: ["SocketClient", "SocketShared", "CShims"],
            path: "Tests/tcp-peer"
        ),
        .testTarget(
            name: "SocketTCPTests",
            dependencies: ["SocketClient", "SocketShared", "CShims", "TestSupport"]
        ),
        // Stack-side end of the network tests' bulk transfers (tcp-sink, tcp-source).
        .executableTarget(
            name: "net-peer",
            dependencies: ["SocketClient", "SocketShared"],
            path: "Tests/net-peer"
        ),
        // The stack on a real TAP link to the kernel, in network namespaces (root and /dev/net/tun).
        // The tests run the built executables (socket-server, the examples, net-peer), so they depend
        // on them only through the build.
        .testTarget(
            name: "NetworkTests",
            dependencies: ["TestSupport"]
        ),
        // Hostile and greedy clients (issue 9): the scribbler writes over its own segment, floods and
        // hoards; the tests check the real server survives them and keeps serving everyone else.
        .executableTarget(
            name: "scribbler",
            dependencies: ["SocketClient", "SocketShared", "CShims", "TestSupport"],
            path: "Tests/scribbler"
        ),
        .testTarget(
            name: "HardeningTests",
            dependencies: ["SocketShared", "CShims", "TestSupport"]
        ),
        // The differential conformance suite (issue 10): the C scenarios in Tests/conformance run on
        // the kernel's sockets and on the stack, compiled against libSocketClientDynamic by the test.
        .testTarget(
            name: "ConformanceTests",
            dependencies: ["TestSupport"]
        ),
        // Unmodified Debian programs (nc, socat, python3's http.server, curl) on the stack through
        // socket-offload-run and the preload library, against a real server: bytes checked end to end.
        .testTarget(
            name: "PreloadTests",
            dependencies: ["TestSupport"]
        ),
    ]
)
