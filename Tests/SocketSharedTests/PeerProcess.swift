import CShims
import SocketShared
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The `shm-peer` helper running as a separate process (its own address space), with some of our
/// descriptors installed as its fds 3, 4, 5... and its stdout on a pipe.
final class PeerProcess {
    let pid: pid_t
    private let stdoutFD: Int32
    private let stdinFD: Int32
    private var buffered: [UInt8] = []

    /// Channel offset the peer uses inside a test segment.
    static let channelOffset = 4096

    /// The helper binary: next to the test bundle (both are built by `swift build --build-tests`),
    /// or `$SHM_PEER` when set.
    static var executablePath: String {
        if let override = getenv("SHM_PEER") { return String(cString: override) }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "."
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return dir + "/shm-peer"
    }

    init(_ arguments: [String], descriptors: [Int32] = []) throws {
        var out: [Int32] = [0, 0], input: [Int32] = [0, 0]
        guard pipe(&out) == 0, pipe(&input) == 0 else { throw Errno.current }
        for fd in out + input { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        // Move the descriptors out of the way first, so that installing fd 3 cannot clobber a source
        // that happens to be fd 4.
        for (i, fd) in descriptors.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(100 + i)) }
        for i in descriptors.indices { posix_spawn_file_actions_adddup2(&actions, Int32(100 + i), Int32(3 + i)) }
        let path = Self.executablePath
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        close(out[1])
        close(input[0])
        guard rc == 0 else {
            close(out[0]); close(input[1])
            throw Errno(rc)
        }
        self.pid = pid
        self.stdoutFD = out[0]
        self.stdinFD = input[1]
    }

    /// The next line the peer prints (nil at end of output).
    func readLine() -> String? {
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                if buffered.isEmpty { return nil }
                defer { buffered = [] }
                return String(decoding: buffered, as: UTF8.self)
            }
            buffered += chunk[..<n]
        }
    }

    func writeLine(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
    }

    /// Waits for the peer to exit; returns its exit status and the rest of its output.
    func finish() -> (status: Int32, output: String) {
        var lines: [String] = []
        while let line = readLine() { lines.append(line) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        close(stdoutFD)
        close(stdinFD)
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exitStatus, lines.joined(separator: "\n"))
    }

    /// Parses "key=value key=value" into a dictionary.
    static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
        }
        return result
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
