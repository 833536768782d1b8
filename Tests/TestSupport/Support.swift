import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A point in time on the monotonic clock, for hang bounds ("returns within 10 s").
public struct Deadline: Sendable {
    private let end: UInt64

    /// `seconds` from now; `.infinity` for never.
    public init(seconds: Double) {
        let nanoseconds = max(0, seconds) * 1e9
        end = nanoseconds >= Double(UInt64.max / 2) ? UInt64.max : Deadline.now() &+ UInt64(nanoseconds)
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

    /// The package root: the test binaries live in <root>/.build/<triple>/debug.
    public static func packageRoot() throws(TestSupportError) -> String {
        let dir = directory
        let parts = dir.split(separator: "/", omittingEmptySubsequences: false)
        guard let buildIndex = parts.firstIndex(of: ".build") else { throw TestSupportError("binaries are not under .build: \(dir)") }
        return parts[..<buildIndex].joined(separator: "/")
    }
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

    public static func readFile(_ path: String) -> String? { TestFiles.read(path) }

    /// Syscalls a thread sleeps in while it waits for data, room or readiness (poll, ppoll, select,
    /// pselect6, epoll_wait, epoll_pwait, read, recvfrom, recvmsg), by number on this architecture.
    public static let waitingSyscalls: Set<Int> = {
        #if arch(x86_64)
        return [7, 271, 23, 270, 232, 281, 0, 45, 47]
        #elseif arch(arm64)
        return [73, 72, 22, 63, 207, 212]
        #else
        return []
        #endif
    }()

    /// The syscall thread `tid` of `pid` is sleeping in: its number while the thread is in state S
    /// inside a syscall (/proc/PID/task/TID/stat and .../syscall), nil while it runs or is gone.
    public static func sleepingSyscall(pid: pid_t, tid: pid_t) -> Int? {
        guard let stat = readFile("/proc/\(pid)/task/\(tid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        guard state == "S", let syscall = readFile("/proc/\(pid)/task/\(tid)/syscall") else { return nil }
        return syscall.split(separator: " ").first.flatMap { Int($0) }
    }

    /// Waits up to `timeout` seconds until thread `tid` of `pid` (its main thread by default) sleeps
    /// in one of `waitingSyscalls`, seen on two readings 20 ms apart: proof that it is blocked, where
    /// a sleep would only make it likely.
    /// - Returns: nil when it is blocked, else what was seen last (for the failure message).
    public static func waitUntilBlocked(pid: pid_t, tid: pid_t? = nil, timeout: Double = 10) -> String? {
        let tid = tid ?? pid
        var last = "nothing"
        var previous: Int?
        let blocked = waitUntil(timeout: timeout, interval: 0.02) {
            let now = sleepingSyscall(pid: pid, tid: tid)
            defer { previous = now }
            last = now.map { "sleeping in syscall \($0)" } ?? "running (or gone): \(readFile("/proc/\(pid)/task/\(tid)/stat") ?? "no stat")"
            guard let now, waitingSyscalls.contains(now) else { return false }
            return previous == now
        }
        return blocked ? nil : "thread \(tid) of \(pid) not blocked within \(timeout) s: \(last)"
    }

    /// This thread's kernel id (for `waitUntilBlocked`).
    public static func currentThreadID() -> pid_t { glibcGettid() }
}

/// gettid(2) (glibc 2.30+; Glibc's Swift module does not declare it).
@_silgen_name("gettid")
private func glibcGettid() -> pid_t

/// Whole-file reads and writes.
public enum TestFiles {
    /// The file's contents, nil when it cannot be opened.
    public static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            result += chunk[..<n]
        }
        return String(decoding: result, as: UTF8.self)
    }

    /// Creates or replaces the file with `text`.
    public static func write(_ path: String, _ text: String) throws(TestSupportError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw TestSupportError("cannot create \(path): errno \(errno)") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestSupportError("cannot write \(path): errno \(errno)") }
            done += n
        }
    }

    /// Removes `path` and, if it is a directory (not a link to one), everything in it.
    public static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR, let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name == "." || name == ".." { continue }
                removeTree(path + "/" + name)
            }
            closedir(dir)
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

/// A fresh directory under /tmp (mode 0755, so that a client of another uid can reach a socket file
/// in it), removed with its contents at deinit.
public final class TestDirectory: @unchecked Sendable {
    // @unchecked Sendable: immutable.
    public let path: String

    public init(_ tag: String = "sko") throws(TestSupportError) {
        var template = Array("/tmp/\(tag)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestSupportError("mkdtemp /tmp/\(tag)-XXXXXX: errno \(errno)") }
        path = String(cString: p)
        chmod(path, 0o755)
    }

    /// A path inside the directory.
    public func file(_ name: String) -> String { path + "/" + name }

    deinit { TestFiles.removeTree(path) }
}

/// `connect` for an AF_UNIX path.
public func connectUnix(_ fd: Int32, _ path: String) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { errno = ENAMETOOLONG; return -1 }
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// pipe2(2) (Glibc's Swift module hides it behind _GNU_SOURCE).
@_silgen_name("pipe2")
public func pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

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
