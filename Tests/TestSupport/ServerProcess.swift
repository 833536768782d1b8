import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A `socket-server` of its own for a test (or for a whole test process): on a unique socket path
/// under /tmp (or one the test chooses), started and ready. `stop()` stops it the way a user does
/// (SIGTERM) and checks the clean stop the README promises: exit status 0 and the socket file gone,
/// removed by the server itself. After `crash()` (SIGKILL) nothing is checked and the stale socket
/// file is removed by the test. Dropping the object without `stop()` only kills and cleans up.
public final class ServerProcess: @unchecked Sendable {
    // @unchecked Sendable: immutable after init except through ChildProcess, used by one test at a time
    // (or, for a process-wide server, only read).

    /// When a starting server counts as ready.
    public enum Readiness: Sendable {
        /// It logged "listening on" and its socket file exists.
        case logged
        /// Its socket file accepts a SEQPACKET connection (a probe session the server then closes).
        case accepting
    }

    public let socketPath: String
    public let process: ChildProcess
    /// The log file the test named (nil: the process's own log, removed with it).
    public let logPath: String?
    /// A directory the server's files are in, removed with the server.
    public let directory: TestDirectory?
    private let stopGrace: Double
    private var stopped = false
    private var crashed = false

    /// The server's process id (for /proc).
    public var pid: pid_t { process.pid }

    /// - Parameters:
    ///   - tag: part of the socket and log file names, to tell servers apart in /tmp.
    ///   - arguments: extra `socket-server` options.
    ///   - socketPath: where the server listens (default: a unique path under /tmp).
    ///   - logPath: where its stderr goes, appended (default: a log of its own, removed with it).
    ///   - directory: a directory the paths are in, kept until the server is gone.
    ///   - timeout: how long the server may take to get ready.
    ///   - readiness: when it counts as ready.
    ///   - stopGrace: how long `stop()` waits after SIGTERM before it kills the server (a failure).
    public init(tag: String, arguments: [String] = [], socketPath: String? = nil, logPath: String? = nil,
                directory: TestDirectory? = nil, timeout: Double = 30, readiness: Readiness = .logged,
                stopGrace: Double = 10) throws(TestSupportError) {
        let socketPath = socketPath ?? TestNames.uniquePath(tag, suffix: "sock")
        self.socketPath = socketPath
        self.logPath = logPath
        self.directory = directory
        self.stopGrace = stopGrace
        process = try ChildProcess(TestBinaries.path("socket-server"), ["--socket-path", socketPath] + arguments,
                                   name: "socket-server-\(tag)", stderr: logPath.map { .file($0, append: true) } ?? .log,
                                   orphanFiles: [socketPath])
        let ready = waitUntil(timeout: timeout, interval: readiness == .accepting ? 0.01 : 0.02) {
            guard process.isRunning else { return true }
            switch readiness {
            case .logged: return process.logTail(maxBytes: 1 << 16).contains("listening on") && access(socketPath, F_OK) == 0
            case .accepting: return Self.accepts(socketPath)
            }
        }
        if let status = process.status {
            let log = process.logTail()
            dispose()
            throw TestSupportError("socket-server exited (\(status)) before serving \(socketPath):\n\(log)")
        }
        guard ready else {
            let log = process.logTail()
            dispose()
            throw TestSupportError("socket-server did not get ready at \(socketPath) within \(timeout) s:\n\(log)")
        }
    }

    /// True when `path` exists and a SEQPACKET connection to it succeeds.
    public static func accepts(_ path: String) -> Bool {
        guard access(path, F_OK) == 0 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return connectUnix(fd, path) == 0
    }

    /// Stops the server with SIGTERM and checks the clean stop: exit status 0 within `stopGrace`
    /// seconds, and no socket file left (the server removes it; this never does). A failure is
    /// recorded as an issue of the calling test. After `crash()` it only cleans up. Idempotent.
    /// - Returns: how the server ended (nil: it had to be killed).
    @discardableResult
    public func stop(sourceLocation: SourceLocation = #_sourceLocation) -> ChildProcess.ExitStatus? {
        guard !stopped else { return process.status }
        if crashed {
            dispose()
            return process.status
        }
        let wasRunning = process.isRunning
        let status = process.stop(SIGTERM, grace: stopGrace)
        let leftBehind = access(socketPath, F_OK) == 0
        if status != .exited(0) {
            Issue.record("socket-server at \(socketPath) did not stop cleanly on SIGTERM: \(status.map { "\($0)" } ?? "killed after \(stopGrace) s")\(wasRunning ? "" : " (it had already exited)")\n\(log)",
                         sourceLocation: sourceLocation)
        } else if leftBehind {
            Issue.record("socket-server exited 0 but left its socket file \(socketPath)\n\(log)", sourceLocation: sourceLocation)
        }
        dispose()
        return status
    }

    /// Kills the server if it runs, removes a socket file left behind and the log: cleanup, no checks
    /// (for a server that outlives every test, stopped at process exit).
    public func discard() { dispose() }

    private func dispose() {
        guard !stopped else { return }
        stopped = true
        process.terminate()
        unlink(socketPath)
        if directory == nil, let logPath { unlink(logPath) }
    }

    /// SIGKILL: the socket file stays behind, as after a crash (`stop()` then removes it, unchecked).
    public func crash() {
        crashed = true
        process.kill(SIGKILL)
        process.waitForExit(timeout: 5)
    }

    /// The end of the server's log.
    public var log: String { process.logTail(maxBytes: 8000) }

    deinit { dispose() }

    // MARK: /proc views of the server, for leak checks (-1 when it is gone)

    /// Open descriptors.
    public var openDescriptorCount: Int { ProcStats.descriptorTargets(pid)?.count ?? -1 }

    /// Descriptors of client segment memfds.
    public var clientSegmentDescriptorCount: Int {
        ProcStats.descriptorTargets(pid)?.filter { $0.hasPrefix("/memfd:socket-server-client") }.count ?? -1
    }

    /// Mappings of client segments.
    public var clientSegmentMappingCount: Int {
        ProcStats.mapsLines(pid, containing: "memfd:socket-server-client")?.count ?? -1
    }
}
