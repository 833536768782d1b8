#if canImport(Glibc)
import Glibc
#endif

/// A `socket-server` of its own for a test (or for a whole test process): a unique socket path under
/// /tmp, started and ready (it logged "listening on"), killed and its socket file removed by `stop()`
/// (also at deinit).
public final class ServerProcess: @unchecked Sendable {
    // @unchecked Sendable: immutable after init except through ChildProcess, used by one test at a time
    // (or, for a process-wide server, only read).
    public let socketPath: String
    public let process: ChildProcess

    /// The server's process id (for /proc).
    public var pid: pid_t { process.pid }

    /// - Parameters:
    ///   - tag: part of the socket file name, to tell servers apart in /tmp.
    ///   - arguments: extra `socket-server` options.
    ///   - timeout: how long the server may take to get ready.
    public init(tag: String, arguments: [String] = [], timeout: Double = 30) throws(TestSupportError) {
        socketPath = TestNames.uniquePath(tag, suffix: "sock")
        process = try ChildProcess(TestBinaries.path("socket-server"), ["--socket-path", socketPath] + arguments,
                                   name: "socket-server-\(tag)", orphanFiles: [socketPath])
        let ready = waitUntil(timeout: timeout) {
            !process.isRunning || (process.logTail(maxBytes: 1 << 16).contains("listening on") && access(socketPath, F_OK) == 0)
        }
        guard ready, process.isRunning else {
            let log = process.logTail()
            stop()
            throw TestSupportError("socket-server did not start within \(timeout) s:\n\(log)")
        }
    }

    /// Kills the server and removes its socket file. Idempotent.
    public func stop() {
        process.terminate()
        unlink(socketPath)
    }

    deinit { stop() }
}
