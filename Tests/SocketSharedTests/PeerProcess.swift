import CShims
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The `shm-peer` helper running as a separate process (its own address space), with some of our
/// descriptors installed as its fds 3, 4, 5..., its stdin and stdout on pipes and its stderr ours.
/// Every wait for it is bounded: `timeout` for the long exchanges, `shortTimeout` for the rest.
enum PeerProcess {
    /// Channel offset the peer uses inside a test segment.
    static let channelOffset = 4096
    /// Seconds a long exchange (256 MiB, a million messages) may take: far beyond the few seconds it
    /// takes in a debug build on 2 cores, so only a hang reaches it.
    static let timeout: Double = 180
    /// Seconds for a peer that only passes descriptors or touches a buffer.
    static let shortTimeout: Double = 30

    /// The helper binary: next to the test bundle (both are built by `swift build --build-tests`),
    /// or `$SHM_PEER` when set.
    static var executablePath: String {
        if let override = getenv("SHM_PEER") { return String(cString: override) }
        return TestBinaries.path("shm-peer")
    }

    static func start(_ arguments: [String], descriptors: [Int32] = []) throws -> ChildProcess {
        try ChildProcess(executablePath, arguments, name: "shm-peer", stdin: .pipe, stderr: .inherit, descriptors: descriptors)
    }
}

/// A segment, a test channel in it and the two eventfds that connect the test to a peer.
struct TestChannel {
    let segment: SharedSegment
    let view: ChannelView
    let toPeer: EventFD
    let toUs: EventFD

    init(layout: ChannelLayout, segmentSize: Int = 1 << 22) throws {
        segment = try SharedSegment.create(name: "test-channel", size: segmentSize)
        view = try ChannelView(segment: segment, offset: PeerProcess.channelOffset, layout: layout)
        toPeer = try EventFD()
        toUs = try EventFD()
    }

    var descriptors: [Int32] { [segment.fd, toPeer.fd, toUs.fd] }
    /// Wakes the peer (stack -> app direction of the channel).
    var peerNotifier: Notifier { Notifier(state: view.toApp, fd: toPeer.fd) }
    /// Wakes us (app -> stack direction).
    var ourNotifier: Notifier { Notifier(state: view.toStack, fd: toUs.fd) }
}

/// Sleeps on `notifier` until `ready()` holds (the same loop as the peer's).
func waitUntil(_ notifier: Notifier, _ ready: () throws -> Bool) throws {
    while true {
        if try ready() { return }
        notifier.acknowledge()
        if try ready() { return }
        if try !notifier.wait(timeoutMilliseconds: 3000) {
            try #require(try ready(), "no progress for 3 s")
            Issue.record("lost wake-up: work was ready but the eventfd never fired")
        }
    }
}

struct TestRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
