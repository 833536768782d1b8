import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A point in time on the monotonic clock, for hang bounds ("returns within 10 s").
public struct Deadline: Sendable {
    private let end: UInt64

    public init(seconds: Double) {
        end = Deadline.now() &+ UInt64(max(0, seconds) * 1e9)
    }

    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public var expired: Bool { Deadline.now() >= end }
    public var remainingSeconds: Double {
        let now = Deadline.now()
        return now >= end ? 0 : Double(end - now) / 1e9
    }
    public var remainingMilliseconds: Int32 {
        let now = Deadline.now()
        return now >= end ? 0 : Int32(min((end - now + 999_999) / 1_000_000, UInt64(Int32.max)))
    }
}

/// Polls `condition` every `interval` seconds until it holds or `timeout` seconds pass.
/// - Returns: whether it held (checked once more at the deadline).
@discardableResult
public func waitUntil(timeout: Double, interval: Double = 0.02, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Deadline(seconds: timeout)
    while !deadline.expired {
        if try condition() { return true }
        usleep(useconds_t(interval * 1e6))
    }
    return try condition()
}

/// Names that no other test (in this or a parallel test process) uses.
public enum TestNames {
    private static let counter = Atomic<Int>(0)

    /// `/tmp/sko-TAG-PID-N.SUFFIX`, short enough for a unix socket path (< 108 bytes).
    public static func uniquePath(_ tag: String, suffix: String) -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        return "/tmp/sko-\(tag.prefix(40))-\(getpid())-\(n).\(suffix)"
    }
}

/// TCP/UDP ports for tests: unique within the test process (tests that share one socket server run
/// in the same process; separate servers have separate stacks, so processes cannot collide).
public enum TestPorts {
    private static let counter = Atomic<Int>(0)

    public static func next() -> UInt16 {
        UInt16(20_000 + counter.add(1, ordering: .relaxed).newValue % 40_000)
    }
}

/// The package's executables, found next to the running test bundle (`swift build --build-tests`
/// puts them all in the same directory).
public enum TestBinaries {
    public static var directory: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "./x"
        return exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    }

    public static func path(_ name: String) -> String { directory + "/" + name }
}

/// What /proc says about a process (the socket server, in the resource tests).
public enum ProcStats {
    /// Targets of every open descriptor of `pid` (nil when the process is gone).
    public static func descriptorTargets(_ pid: pid_t) -> [String]? {
        guard let dir = opendir("/proc/\(pid)/fd") else { return nil }
        defer { closedir(dir) }
        var targets: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var buffer = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/\(pid)/fd/\(name)", &buffer, buffer.count - 1)
            if n >= 0 { targets.append(String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
        }
        return targets
    }

    /// Lines of /proc/PID/maps that contain `text`.
    public static func mapsLines(_ pid: pid_t, containing text: String) -> [String]? {
        guard let content = readFile("/proc/\(pid)/maps") else { return nil }
        return content.split(separator: "\n").filter { $0.contains(text) }.map(String.init)
    }

    /// VmRSS in bytes, from /proc/PID/status.
    public static func residentBytes(_ pid: pid_t) -> Int? {
        guard let status = readFile("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kib = line.split(separator: " ").compactMap { Int($0) }.first
            return kib.map { $0 * 1024 }
        }
        return nil
    }

    public static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            result += chunk[..<n]
        }
        return String(decoding: result, as: UTF8.self)
    }
}

/// A real thread (not a Swift concurrency task) for a peer that must block while the test blocks:
/// tests run on the small cooperative pool, where two blocking tasks could wait on each other forever.
public final class TestThread: @unchecked Sendable {
    // @unchecked Sendable: `thread` is written once in init and read by join.
    private var thread = pthread_t()
    private var joined = false

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    public init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create: \(rc)")
    }

    /// Waits for the thread to finish.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    deinit { join() }
}
