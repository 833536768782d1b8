import Foundation
import SocketShared
import Testing
#if canImport(Glibc)
import Glibc
#endif

// Process helpers for the integration tests: a scratch directory per test, a generic child process
// (the example binaries, client-peer, a second socket-server) with its stdout on a pipe, and the real
// socket-server started on a unique socket path.
//
// Every wait here is bounded, so a broken product makes a test fail instead of hanging the run;
// every child is killed and reaped, and every directory removed, in deinit at the latest, so a
// failing test (a thrown error skips the rest of its body) leaves nothing behind.
//
// This is a generalised copy of SocketSharedTests/PeerProcess.swift (which spawns shm-peer with
// descriptors installed): the two test targets cannot share code without a support library target,
// and the copy is small.

/// A fresh directory under /tmp (mode 0755 so that a client of another uid can reach a socket file
/// in it), removed with its contents at deinit.
final class TestDirectory: @unchecked Sendable {
    let path: String

    init(_ tag: String = "sko") throws {
        var template = Array("/tmp/\(tag)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw Errno.current }
        path = String(cString: p)
        chmod(path, 0o755)
    }

    /// A path inside the directory.
    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// How a child process ended.
enum ExitStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus status: Int32) {
        self = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
    }

    var description: String {
        switch self {
        case .exited(let code): return "exit status \(code)"
        case .signaled(let signal): return "killed by signal \(signal)"
        }
    }
}

/// A binary of this package (built next to the test bundle) running as a child process: stdin is
/// /dev/null, stdout a pipe we read line by line with a deadline, stderr a file (or /dev/null).
final class ChildProcess: @unchecked Sendable {
    // @unchecked Sendable: a test uses its child from one task at a time.
    let pid: pid_t
    let name: String
    /// Where the child's stderr goes (nil: /dev/null).
    let stderrPath: String?
    private var stdoutFD: Int32
    private var buffered: [UInt8] = []
    private var endOfOutput = false
    private(set) var status: ExitStatus?
    /// Every line read so far (for failure messages).
    private(set) var transcript: [String] = []

    /// The directory holding the test bundle and the package's other binaries (`swift build
    /// --build-tests` builds them all into the same directory).
    static var binaryDirectory: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "./x"
        return exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    }

    static func binary(_ name: String) -> String { binaryDirectory + "/" + name }

    /// Starts `name` (a binary next to the test bundle) with `arguments`.
    init(_ name: String, _ arguments: [String], stderrPath: String? = nil) throws {
        let path = Self.binary(name)
        guard access(path, X_OK) == 0 else {
            throw TestFailure("\(path) is missing: run `swift build --build-tests` first")
        }
        var out: [Int32] = [0, 0]
        // Close-on-exec from the start: tests spawn in parallel, and a write end leaked into another
        // child would hold our pipe open after this child exits.
        guard pipe2(&out, O_CLOEXEC) == 0 else { throw Errno.current }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        // Default dispositions and an empty signal mask in the child, whatever this process set. (Same
        // process group as ours, so an interrupted test run's ^C reaches the children too.)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        close(out[1])
        guard rc == 0 else {
            close(out[0])
            throw Errno(rc)
        }
        self.pid = pid
        self.name = name
        self.stderrPath = stderrPath
        self.stdoutFD = out[0]
    }

    deinit {
        if status == nil {
            Glibc.kill(pid, SIGKILL)
            var s: Int32 = 0
            while waitpid(pid, &s, 0) < 0 && errno == EINTR {}
        }
        if stdoutFD >= 0 { close(stdoutFD) }
    }

    // MARK: output

    /// The next line of stdout, or nil at end of output or when `timeout` seconds pass first.
    func readLine(timeout: Double) -> String? {
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                transcript.append(line)
                return line
            }
            if endOfOutput || stdoutFD < 0 {
                guard !buffered.isEmpty else { return nil }
                let line = String(decoding: buffered, as: UTF8.self)
                buffered = []
                transcript.append(line)
                return line
            }
            let now = monotonicNanoseconds()
            guard now < deadline else { return nil }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let n = Glibc.poll(&pfd, 1, Int32(min((deadline - now) / 1_000_000 + 1, 1000)))
            if n <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let got = read(stdoutFD, &chunk, chunk.count)
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { endOfOutput = true; continue }
            buffered += chunk[..<got]
        }
    }

    /// Reads lines until one satisfies `match` (returned), end of output or the deadline (nil).
    func waitForLine(timeout: Double, _ match: (String) -> Bool) -> String? {
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline, let line = readLine(timeout: Double(deadline - now) / 1e9) else { return nil }
            if match(line) { return line }
        }
    }

    /// The stderr file's contents (the last `limit` bytes), for failure messages.
    func stderrTail(_ limit: Int = 4000) -> String {
        guard let stderrPath, let text = try? String(contentsOfFile: stderrPath, encoding: .utf8) else { return "" }
        return String(text.suffix(limit))
    }

    /// What the child printed so far, and its stderr: for the comment of a failed expectation.
    var diagnostics: String {
        "\(name) pid \(pid) stdout:\n\(transcript.joined(separator: "\n"))\nstderr:\n\(stderrTail())"
    }

    // MARK: lifetime

    var isAlive: Bool { poll() == nil }

    /// Reaps the child if it has exited (non-blocking).
    @discardableResult
    func poll() -> ExitStatus? {
        if let status { return status }
        var s: Int32 = 0
        let r = waitpid(pid, &s, WNOHANG)
        if r == pid { status = ExitStatus(waitStatus: s) }
        return status
    }

    /// Waits up to `timeout` seconds for the child to exit; nil if it is still running.
    @discardableResult
    func wait(timeout: Double) -> ExitStatus? {
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while true {
            if let s = poll() { return s }
            if monotonicNanoseconds() >= deadline { return nil }
            usleep(5_000)
        }
    }

    /// Waits for exit (bounded) and collects the rest of stdout. On timeout the child is killed and
    /// the status is nil.
    func finish(timeout: Double) -> (status: ExitStatus?, output: [String]) {
        let start = transcript.count
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while monotonicNanoseconds() < deadline {
            if readLine(timeout: 0.1) != nil { continue }
            if endOfOutput { break }
            if poll() != nil { // exited: take what is left in the pipe, without waiting for EOF
                while readLine(timeout: 0.05) != nil {}
                break
            }
        }
        var s = wait(timeout: max(0.05, Double(Int64(deadline) - Int64(monotonicNanoseconds())) / 1e9))
        if s == nil {
            kill(SIGKILL)
            wait(timeout: 5)
            s = nil
        }
        return (s, Array(transcript[start...]))
    }

    func kill(_ signal: Int32) {
        if status == nil { Glibc.kill(pid, signal) }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace` seconds. Returns how it ended.
    @discardableResult
    func terminate(grace: Double = 5) -> ExitStatus? {
        if let status { return status }
        kill(SIGTERM)
        if let s = wait(timeout: grace) { return s }
        kill(SIGKILL)
        return wait(timeout: 5)
    }
}

/// The real `socket-server` binary on a unique socket path.
final class ServerProcess: @unchecked Sendable {
    let process: ChildProcess
    let socketPath: String
    let logPath: String
    private let directory: TestDirectory?

    var pid: pid_t { process.pid }

    /// Starts a server at `socketPath` (default: a fresh directory's `server.sock`) and waits, at
    /// most `timeout` seconds, until the socket file exists and accepts a connection.
    /// - Parameter arguments: extra command-line options (`--datagram-transport shared-memory`, ...).
    init(_ arguments: [String] = [], socketPath: String? = nil, logPath: String? = nil, timeout: Double = 10) throws {
        if let socketPath {
            directory = nil
            self.socketPath = socketPath
            self.logPath = logPath ?? socketPath + ".log"
        } else {
            let dir = try TestDirectory("sko-server")
            directory = dir
            self.socketPath = dir.file("server.sock")
            self.logPath = logPath ?? dir.file("server.log")
        }
        process = try ChildProcess("socket-server", ["--socket-path", self.socketPath, "--log-level", "info"] + arguments,
                                   stderrPath: self.logPath)
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while !Self.accepts(self.socketPath) {
            if let status = process.poll() {
                throw TestFailure("socket-server exited (\(status)) before serving \(self.socketPath):\n\(process.stderrTail())")
            }
            if monotonicNanoseconds() > deadline {
                stop()
                throw TestFailure("socket-server did not accept connections at \(self.socketPath) within \(timeout) s:\n\(process.stderrTail())")
            }
            usleep(10_000)
        }
    }

    deinit { stop() }

    /// True when `path` exists and a SEQPACKET connection to it succeeds.
    static func accepts(_ path: String) -> Bool {
        guard access(path, F_OK) == 0 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return connectUnix(fd, path) == 0
    }

    /// Stops the server: SIGTERM, SIGKILL after 5 s; removes the socket file (a killed server leaves
    /// it behind) and the log. Idempotent. Returns how the server ended.
    @discardableResult
    func stop() -> ExitStatus? {
        let status = process.terminate()
        unlink(socketPath)
        if directory == nil { unlink(logPath) }
        return status
    }

    /// SIGKILL: the socket file stays behind, as after a crash.
    func crash() {
        process.kill(SIGKILL)
        process.wait(timeout: 5)
    }

    var log: String { process.stderrTail(8000) }

    // MARK: /proc views of the server, for leak checks

    /// Entries of /proc/PID/fd.
    var openDescriptorCount: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// Descriptors whose target is a client segment memfd.
    var clientSegmentDescriptorCount: Int {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return -1 }
        return entries.filter { entry in
            var buffer = [CChar](repeating: 0, count: 512)
            let n = readlink("/proc/\(pid)/fd/\(entry)", &buffer, buffer.count - 1)
            guard n > 0 else { return false }
            return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).hasPrefix("/memfd:socket-server-client")
        }.count
    }

    /// Lines of /proc/PID/maps that map a client segment.
    var clientSegmentMappingCount: Int {
        guard let maps = try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8) else { return -1 }
        return maps.split(separator: "\n").filter { $0.contains("memfd:socket-server-client") }.count
    }
}

/// pipe2(2) (Glibc's Swift module hides it behind _GNU_SOURCE).
@_silgen_name("pipe2")
func pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// `connect` for an AF_UNIX path.
func connectUnix(_ fd: Int32, _ path: String) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { errno = ENAMETOOLONG; return -1 }
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// An error with a message, for helper failures.
struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Parses "key=value key=value" into a dictionary.
func fields(_ line: String) -> [String: String] {
    var result: [String: String] = [:]
    for part in line.split(separator: " ") {
        let kv = part.split(separator: "=", maxSplits: 1)
        if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
    }
    return result
}

/// Polls `condition` every 10 ms until it holds or `timeout` seconds pass; returns its last value.
func eventually(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
    while true {
        if condition() { return true }
        if monotonicNanoseconds() >= deadline { return false }
        usleep(10_000)
    }
}
