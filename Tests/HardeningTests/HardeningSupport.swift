import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The server and helper processes of the hardening tests.
enum Hardening {
    /// A socket server in a directory of its own, logging at info level, ready once it accepts,
    /// stopped with SIGTERM by `stopCleanly` (SIGKILL at deinit if a test ends early).
    static func server(_ arguments: [String] = []) throws -> ServerProcess {
        let dir = try TestDirectory("sko-hardening")
        return try ServerProcess(tag: "hardening", arguments: ["--log-level", "info"] + arguments,
                                 socketPath: dir.file("server.sock"), logPath: dir.file("server.log"),
                                 directory: dir, timeout: 10, readiness: .accepting)
    }

    /// How the server ended, when it died: "killed by signal 4" and the end of its log.
    static func death(_ server: ServerProcess) -> String {
        "socket-server \(server.process.poll().map { "\($0)" } ?? "running")\n\(server.log)"
    }

    /// Expects the server to be alive and to exit 0 on SIGTERM (within 5 s).
    static func expectAliveAndCleanStop(_ server: ServerProcess, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(server.process.isRunning, "\(what): \(death(server))", sourceLocation: sourceLocation)
        guard server.process.isRunning else { return }
        let status = server.process.stop(SIGTERM, grace: 5)
        #expect(status == .exited(0), "\(what): SIGTERM gave \(status.map { "\($0)" } ?? "no exit within 5 s")\n\(server.log)",
                sourceLocation: sourceLocation)
    }

    /// The server's open descriptor count once it has stopped changing (sessions may still be closing).
    static func settledDescriptors(_ server: ServerProcess) -> Int {
        var last = server.openDescriptorCount
        for _ in 0..<50 {
            usleep(50_000)
            let now = server.openDescriptorCount
            if now == last { return now }
            last = now
        }
        return last
    }

    /// Waits up to `timeout` seconds for the server's descriptor count to come back to `baseline`.
    /// - Returns: the last count seen.
    static func descriptorsReturn(_ server: ServerProcess, to baseline: Int, timeout: Double = 10) -> Int {
        var now = server.openDescriptorCount
        _ = waitUntil(timeout: timeout, interval: 0.02) {
            now = server.openDescriptorCount
            return now == baseline
        }
        return now
    }

    /// Starts an example echo server (`tcp-echo-server` or `udp-echo-server`) on 127.0.0.1:`port`.
    static func echoServer(_ name: String, _ server: ServerProcess, port: UInt16, extra: [String] = []) throws -> ChildProcess {
        let p = try ChildProcess(TestBinaries.path(name), ["--port", String(port), "--address", "127.0.0.1",
                                                           "--socket-path", server.socketPath] + extra)
        guard p.waitForLine(containing: "listening on", timeout: 10) != nil else {
            p.terminate()
            throw TestSupportError("\(name) did not start within 10 s: \(p.diagnostics)\n\(server.log)")
        }
        return p
    }

    /// The outcome of one verified echo run by an honest client.
    struct EchoRun: CustomStringConvertible {
        let result: ChildProcess.Result
        let fields: [String: String]
        let ok: Bool
        var description: String { "\(result)" }
    }

    /// `tcp-echo-client`: `connections` x `bytes`, every byte checked.
    static func tcpEcho(_ server: ServerProcess, port: UInt16, connections: Int = 2, bytes: String = "256K") throws -> EchoRun {
        let r = try ChildProcess.run(TestBinaries.path("tcp-echo-client"),
                                     ["127.0.0.1", String(port), "--connections", String(connections), "--bytes", bytes,
                                      "--timeout", "20", "--socket-path", server.socketPath], timeout: 40)
        let f = ChildProcess.fields(r.output)
        return EchoRun(result: r, fields: f, ok: r.succeeded && f["mismatches"] == "0" && f["connections"] == String(connections))
    }

    /// `udp-echo-client`: `count` datagrams, every echo checked (an echo is lost only after 5 s).
    static func udpEcho(_ server: ServerProcess, port: UInt16, count: Int = 300, size: Int = 512) throws -> EchoRun {
        let r = try ChildProcess.run(TestBinaries.path("udp-echo-client"),
                                     ["127.0.0.1", String(port), "--count", String(count), "--size", String(size),
                                      "--timeout", "5000", "--socket-path", server.socketPath], timeout: 60)
        let f = ChildProcess.fields(r.output)
        return EchoRun(result: r, fields: f, ok: r.succeeded && f["received"] == String(count) && f["corrupted"] == "0")
    }

    /// A `scribbler` process in `mode`, its stdin a pipe (modes that hold resources wait for it to close).
    static func scribbler(_ mode: String, _ server: ServerProcess, _ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(TestBinaries.path("scribbler"), [mode, "--socket-path", server.socketPath] + arguments, stdin: .pipe)
    }

    /// Waits for a line starting with `prefix` from `process`; nil if it ends or `timeout` passes.
    static func line(_ process: ChildProcess, _ prefix: String, timeout: Double) -> [String: String]? {
        process.waitForLine(timeout: timeout) { $0.hasPrefix(prefix) || $0.hasPrefix("error") }
            .flatMap { $0.hasPrefix(prefix) ? ChildProcess.fields($0) : nil }
    }
}
