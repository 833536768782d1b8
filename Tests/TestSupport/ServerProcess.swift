#if canImport(Glibc)
import Glibc
#endif

/// A `socket-server` of its own for a test (or for a whole test process): on a unique socket path
/// under /tmp (or one the test chooses), started and ready, killed and its socket file removed by
/// `stop()` (also at deinit).
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
    private let stopGrace: Double?

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
    ///   - stopGrace: nil: `stop()` kills the server with SIGKILL; otherwise it sends SIGTERM first and
    ///     waits that many seconds for it to exit.
    public init(tag: String, arguments: [String] = [], socketPath: String? = nil, logPath: String? = nil,
                directory: TestDirectory? = nil, timeout: Double = 30, readiness: Readiness = .logged,
                stopGrace: Double? = nil) throws(TestSupportError) {
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
            stop()
            throw TestSupportError("socket-server exited (\(status)) before serving \(socketPath):\n\(log)")
        }
        guard ready else {
            let log = process.logTail()
            stop()
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

    /// Stops the server (see `stopGrace`), removes its socket file (a killed server leaves it behind)
    /// and the log it was given unless that is in `directory`. Idempotent.
    public func stop() {
        if let stopGrace { process.stop(SIGTERM, grace: stopGrace) }
        process.terminate()
        unlink(socketPath)
        if directory == nil, let logPath { unlink(logPath) }
    }

    /// SIGKILL: the socket file stays behind, as after a crash.
    public func crash() {
        process.kill(SIGKILL)
        process.waitForExit(timeout: 5)
    }

    /// The end of the server's log.
    public var log: String { process.logTail(maxBytes: 8000) }

    deinit { stop() }

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
