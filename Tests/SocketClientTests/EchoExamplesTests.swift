import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The echo examples end to end: a real socket-server, the real udp-echo-server and the real
/// udp-echo-client, which numbers every datagram, checks every echo byte for byte and prints
/// `sent=.. received=.. lost=.. corrupted=.. ... transport=..`.
///
/// Each test has its own server (own socket path) and its own port, so they run in parallel.
@Suite("Echo examples through the stack")
struct EchoExamplesTests {
    struct Run: CustomTestStringConvertible, Sendable {
        var host: String
        var port: UInt16
        var count: Int
        var size: Int = 100
        var window: Int = 1
        /// `--transport` for the client (nil: not given, i.e. auto).
        var clientTransport: String?
        /// `--datagram-transport` for the server (nil: not given, i.e. auto).
        var serverTransport: String?
        /// The transport the client must report.
        var expected: String

        var testDescription: String {
            "\(host) count=\(count) size=\(size) window=\(window) client=\(clientTransport ?? "auto") server=\(serverTransport ?? "auto")"
        }
    }

    static let runs: [Run] = [
        // 10,000 small datagrams, each address family with each client-chosen transport.
        Run(host: "127.0.0.1", port: 7101, count: 10_000, clientTransport: "process-vm", expected: "process-vm"),
        Run(host: "127.0.0.1", port: 7102, count: 10_000, clientTransport: "shared-memory", expected: "shared-memory"),
        Run(host: "::1", port: 7103, count: 10_000, clientTransport: "process-vm", expected: "process-vm"),
        Run(host: "::1", port: 7104, count: 10_000, clientTransport: "shared-memory", expected: "shared-memory"),
        // The server imposes shared memory on a client that asks for nothing.
        Run(host: "127.0.0.1", port: 7105, count: 10_000, serverTransport: "shared-memory", expected: "shared-memory"),
        Run(host: "::1", port: 7106, count: 10_000, serverTransport: "shared-memory", expected: "shared-memory"),
        // The largest IPv4 UDP payload: 33 payload buffers per datagram on each ring.
        Run(host: "127.0.0.1", port: 7107, count: 300, size: 65_507, clientTransport: "process-vm", expected: "process-vm"),
        Run(host: "127.0.0.1", port: 7108, count: 300, size: 65_507, clientTransport: "shared-memory", expected: "shared-memory"),
        // The largest the stack carries over IPv6 (65,535 - 40 - 8; see DatagramSocket.maximumIPv6Payload).
        Run(host: "::1", port: 7111, count: 300, size: 65_487, clientTransport: "process-vm", expected: "process-vm"),
        // 16 datagrams in flight at once.
        Run(host: "127.0.0.1", port: 7109, count: 10_000, window: 16, clientTransport: "process-vm", expected: "process-vm"),
        Run(host: "::1", port: 7110, count: 10_000, window: 16, clientTransport: "shared-memory", expected: "shared-memory"),
    ]

    @Test("every datagram echoed intact", arguments: runs)
    func echo(_ run: Run) throws {
        let server = try ServerProcess(run.serverTransport.map { ["--datagram-transport", $0] } ?? [])
        defer { server.stop() }
        let echo = try EchoServer(server, port: run.port)
        defer { echo.stop() }

        var arguments = [run.host, String(run.port), "--count", String(run.count), "--size", String(run.size),
                         "--window", String(run.window), "--socket-path", server.socketPath,
                         // Not a timing assertion: an echo is "lost" only after 10 s (default 1 s).
                         "--timeout", "10000"]
        if let t = run.clientTransport { arguments += ["--transport", t] }
        let client = try ChildProcess(TestBinaries.path("udp-echo-client"), arguments, stderr: .file(server.socketPath + ".client-stderr", append: true))
        defer { unlink(server.socketPath + ".client-stderr") }
        // Generous: 10,000 round trips take about 3 s in a debug build.
        let (status, output) = client.finish(timeout: 90)
        let report = output.last(where: { $0.hasPrefix("sent=") }) ?? ""
        let diagnostics = "\(client.diagnostics)\nserver log:\n\(server.log)\necho server:\n\(echo.process.diagnostics)"
        #expect(status == .exited(0), "udp-echo-client: \(status.map { "\($0)" } ?? "did not finish in 90 s")\n\(diagnostics)")
        let f = ChildProcess.fields(report)
        #expect(f["sent"] == String(run.count), "\(report)")
        #expect(f["received"] == String(run.count), "\(report)\n\(diagnostics)")
        #expect(f["lost"] == "0", "\(report)")
        #expect(f["corrupted"] == "0", "\(report)")
        #expect(f["duplicates"] == "0", "\(report)")
        #expect(f["transport"] == run.expected, "\(report)")
        // The echo server is still up after the run: nothing in the exchange killed it.
        #expect(echo.process.isRunning, "udp-echo-server died: \(echo.process.diagnostics)")
    }
}

/// udp-echo-server on `port` of a test server, ready once it has printed its transport line.
final class EchoServer: @unchecked Sendable {
    let process: ChildProcess
    let transport: String

    init(_ server: ServerProcess, port: UInt16, arguments: [String] = []) throws {
        process = try ChildProcess(TestBinaries.path("udp-echo-server"), ["--socket-path", server.socketPath, "--port", String(port)] + arguments,
                                   stderr: .file(server.socketPath + ".echo-stderr", append: true))
        guard let line = process.waitForLine(timeout: 10, { $0.hasPrefix("transport ") }) else {
            process.kill(SIGKILL)
            throw TestSupportError("udp-echo-server did not start within 10 s: \(process.diagnostics)")
        }
        transport = String(line.dropFirst("transport ".count))
        // Both sockets are bound (it prints "listening on" for each before the transport line).
        guard process.transcript.filter({ $0.hasPrefix("listening on ") }).count == 2 || !arguments.isEmpty else {
            throw TestSupportError("udp-echo-server did not bind both families: \(process.diagnostics)")
        }
    }

    func stop() {
        process.stop()
        if let path = process.stderrPath { unlink(path) }
    }

    deinit { stop() }
}

/// The transport a client reports is what it uses: udp-echo-client runs under strace, which counts
/// its `process_vm_readv` and `process_vm_writev` calls. With process-vm every datagram crosses by
/// one of each (the send into lwIP's pbuf, the receive out of one); with shared memory there are
/// none at all.
@Suite("Datagram transports, observed")
struct TransportObservedTests {
    @Test("process-vm moves each datagram with process_vm_writev/readv; shared-memory never calls them",
          arguments: ["process-vm", "shared-memory"])
    func payloadCrossesByTheReportedTransport(_ transport: String) throws {
        let server = try ServerProcess()
        defer { server.stop() }
        let port: UInt16 = transport == "process-vm" ? 7121 : 7122
        let echo = try EchoServer(server, port: port)
        defer { echo.stop() }
        let count = 200
        let trace = server.socketPath + ".strace"
        defer { unlink(trace) }
        // strace waits for every child of its own, and the tether's watcher would be one if strace
        // were the program: a shell runs it instead (and keeps the watcher).
        let client = try ChildProcess("/bin/sh", ["-c", "strace \"$@\"; status=$?; exit $status", "sh", "-f", "-qq", "-e", "trace=process_vm_readv,process_vm_writev", "-o", trace,
                                                 TestBinaries.path("udp-echo-client"), "127.0.0.1", String(port), "--count", String(count),
                                                 "--size", "100", "--timeout", "10000", "--transport", transport, "--socket-path", server.socketPath],
                                      name: "strace-udp-echo-client")
        let (status, output) = client.finish(timeout: 90)
        #expect(status == .exited(0), "\(client.diagnostics)")
        let report = ChildProcess.fields(output.last(where: { $0.hasPrefix("sent=") }) ?? "")
        #expect(report["received"] == String(count) && report["transport"] == transport, "\(output)")
        let lines = (TestFiles.read(trace) ?? "").split(separator: "\n")
        // Successful calls only ("= -1" would be a failed one).
        let writes = lines.filter { $0.contains("process_vm_writev(") && !$0.contains("= -1") }.count
        let reads = lines.filter { $0.contains("process_vm_readv(") && !$0.contains("= -1") }.count
        if transport == "process-vm" {
            #expect(writes >= count && reads >= count, "process_vm_writev \(writes), process_vm_readv \(reads) for \(count) echoed datagrams")
        } else {
            #expect(writes == 0 && reads == 0, "process_vm_writev \(writes), process_vm_readv \(reads) with shared memory")
        }
    }
}
