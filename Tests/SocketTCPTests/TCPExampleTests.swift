import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The TCP echo examples against a real `socket-server` of their own: `tcp-echo-client` verifies
/// every echoed byte and exits 0 only if all came back intact.
@Suite
struct TCPExamples {

    /// A server and `tcp-echo-server` on `port`, ready (both listeners bound).
    static func echoServer(_ tag: String, port: UInt16) throws -> (ServerProcess, ChildProcess) {
        let server = try ServerProcess(tag: tag)
        do {
            let echo = try ChildProcess(TestBinaries.path("tcp-echo-server"),
                                        ["--port", "\(port)", "--socket-path", server.socketPath], name: "tcp-echo-server-\(tag)")
            var lines: [String] = []
            for _ in 0..<2 {
                guard let line = echo.waitForLine(containing: "listening on", timeout: 30) else {
                    let log = echo.logTail()
                    echo.terminate()
                    throw TestSupportError("tcp-echo-server did not listen within 30 s (\(lines)):\n\(log)")
                }
                lines.append(line)
            }
            return (server, echo)
        } catch {
            server.stop()
            throw error
        }
    }

    /// Runs tcp-echo-client to the end (at most `timeout` seconds) and returns its result fields.
    static func runClient(_ server: ServerProcess, _ arguments: [String], timeout: Double,
                          sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: String] {
        let client = try ChildProcess(TestBinaries.path("tcp-echo-client"), arguments + ["--socket-path", server.socketPath])
        defer { client.terminate() }
        let started = Deadline.now()
        guard let result = client.wait(timeout: timeout) else {
            // Where everything stands, for the post-mortem: the client's and the server's state and
            // kernel wait channel, the client's last output and both logs.
            func threads(_ pid: pid_t) -> String {
                let state = ProcStats.readFile("/proc/\(pid)/status")?.split(separator: "\n").filter { $0.hasPrefix("State") } ?? []
                let wchan = ProcStats.readFile("/proc/\(pid)/wchan") ?? "?"
                let stack = ProcStats.readFile("/proc/\(pid)/stack") ?? ""
                return "\(state.joined(separator: " ")) wchan=\(wchan)\n\(stack)"
            }
            let report = [
                "tcp-echo-client \(arguments) did not finish within \(timeout) s (running: \(client.isRunning))",
                "client: \(threads(client.pid))",
                "server: \(threads(server.pid))",
                "client output: \(client.transcript.suffix(5).joined(separator: " | "))",
                "client log: \(client.logTail())",
                "server log: \(server.process.logTail())",
            ].joined(separator: "\n")
            Issue.record(Comment(rawValue: report), sourceLocation: sourceLocation)
            return [:]
        }
        let seconds = Double(Deadline.now() - started) / 1e9
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        print("tcp-echo-client \(arguments.joined(separator: " ")): \(line) (wall \(Int(seconds * 10) / 10) s)")
        #expect(result.status == 0, "tcp-echo-client exited \(result.status): \(result.output)\n\(client.logTail())",
                sourceLocation: sourceLocation)
        return ChildProcess.fields(line)
    }

    @Test func hundredConnectionsOfOneMiB() throws {
        let port = TestPorts.next()
        let (server, echo) = try Self.echoServer("tcp-ex-many", port: port)
        defer { echo.terminate(); server.stop() }
        let f = try Self.runClient(server, ["127.0.0.1", "\(port)", "--connections", "100", "--bytes", "1M"], timeout: 180)
        Self.expectVerified(f)
        #expect(echo.isRunning, "tcp-echo-server died:\n\(echo.logTail())")
    }

    /// One connection streaming 1 GiB with 1 MiB in flight (about 20 s in a debug build on 2 cores).
    @Test func oneGiBOnOneConnection() throws {
        let port = TestPorts.next()
        let (server, echo) = try Self.echoServer("tcp-ex-gib", port: port)
        defer { echo.terminate(); server.stop() }
        let f = try Self.runClient(server, ["127.0.0.1", "\(port)", "--bytes", "1G", "--window", "1M"], timeout: 300)
        Self.expectVerified(f)
    }

    @Test func pingPongOverIPv6() throws {
        let port = TestPorts.next()
        let (server, echo) = try Self.echoServer("tcp-ex-pp6", port: port)
        defer { echo.terminate(); server.stop() }
        let f = try Self.runClient(server, ["::1", "\(port)", "--ping-pong", "--bytes", "256K", "--message-size", "64"], timeout: 120)
        Self.expectVerified(f)
        // Every round trip took place within the run: an RTT longer than the whole run, or none at
        // all, means the client did not measure what it reports.
        let p99 = f["rtt_p99_us"].flatMap { Int($0) }
        let seconds = f["seconds"].flatMap { Double($0) }
        #expect(p99 != nil && seconds != nil, "rtt or seconds missing: \(f)")
        if let p99, let seconds { #expect(p99 >= 0 && Double(p99) <= seconds * 1e6, "p99 \(p99) us in a run of \(seconds) s") }
    }

    /// What tcp-echo-client's result line proves: it exits 0 only once every byte of every
    /// connection came back and matched its pattern (checked by `runClient`), `mismatches` counts
    /// the reads that did not, and the throughput it measured is a real number. (`connections=` and
    /// `bytes=` only repeat the command line: nothing to check there.)
    static func expectVerified(_ f: [String: String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(f["mismatches"] == "0", "\(f)", sourceLocation: sourceLocation)
        let throughput = f["throughput_MBps"].flatMap { Double($0) }
        #expect(throughput.map { $0.isFinite && $0 > 0 } == true, "throughput_MBps: \(f)", sourceLocation: sourceLocation)
    }
}
