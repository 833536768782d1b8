import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The measurement tools users bring, both ends under the launcher: iperf3 (TCP, 4 streams,
/// reverse, UDP at 100 Mbit/s) completing with its JSON result, and sockperf ping-pong and
/// throughput over UDP and TCP completing with their summaries.
@Suite struct MeasurementToolTests {
    /// Waits until the server log shows a session of `program` (its first socket), then a moment
    /// for its bind and listen: the tool's own output may sit in a buffer.
    static func awaitSession(_ o: Offload, _ program: ChildProcess) throws {
        let seen = waitUntil(timeout: 10) { o.server.log.contains("client=\(program.pid) ") }
        try #require(seen, "\(program.name) made no socket within 10 s\n\(Offload.describe(program))\n\(o.server.log)")
        usleep(300_000)
    }

    /// iperf3's JSON: the field at `path` ("end.sum_received.bits_per_second"), read by Python.
    static func jsonNumber(_ json: String, _ path: String) throws -> Double? {
        let file = TestNames.uniquePath("iperf3", suffix: "json")
        defer { unlink(file) }
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = json.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        close(fd)
        let keys = path.split(separator: ".").map { "[\"\($0)\"]" }.joined()
        let r = try ChildProcess.run(Offload.python, ["-c", "import json; d = json.load(open('\(file)')); print(d\(keys))"], name: "json", timeout: 10)
        return r.output.split(separator: "\n").first.flatMap { Double($0) }
    }

    @Test("iperf3 on the stack completes with its JSON result", arguments: [["-P", "1"], ["-P", "4"], ["-R"], ["-u", "-b", "100M"]])
    func iperf3(options: [String]) throws {
        let o = try Offload("iperf3")
        defer { o.finish() }
        let port = "\(TestPorts.next())"
        let server = try o.start(["iperf3", "-s", "-1", "-p", port], name: "iperf3-server")
        try Self.awaitSession(o, server)
        let r = try ChildProcess.run(Offload.launcher, ["--socket-path", o.server.socketPath, "--", "iperf3", "-c", "127.0.0.1",
                                                        "-p", port, "-t", "2", "-J"] + options, name: "iperf3-client", timeout: 60)
        #expect(r.succeeded, "\(r)")
        #expect(!r.output.contains("\"error\""), "iperf3 reported an error: \(r.output.suffix(2000))")
        let sum = options.first == "-u" ? "end.sum.bits_per_second" : "end.sum_received.bits_per_second"
        let bits = try Self.jsonNumber(r.output, sum)
        #expect((bits ?? 0) > 1e6, "\(sum) = \(String(describing: bits)) (\(options))")
        if options.first == "-u" {
            // 100 Mbit/s offered for 2 s: the bulk must arrive (loss is a measurement, not asserted).
            #expect((bits ?? 0) > 50e6, "UDP at 100M: \(String(describing: bits)) bit/s received")
        }
        let s = server.wait(timeout: 20)
        #expect(s?.status == 0, "iperf3 server: \(String(describing: s))\n\(Offload.describe(server))")
        try Offload.expectNotInKernel(port: port, udp: false)
    }

    @Test("sockperf ping-pong and throughput on the stack", arguments: [false, true])
    func sockperf(tcp: Bool) throws {
        let o = try Offload("sockperf")
        defer { o.finish() }
        let port = "\(TestPorts.next())"
        let proto = tcp ? ["--tcp"] : []
        let server = try o.start(["sockperf", "server", "-i", "127.0.0.1", "-p", port] + proto, name: "sockperf-server")
        try Self.awaitSession(o, server)
        for mode in ["ping-pong", "throughput"] {
            let r = try ChildProcess.run(Offload.launcher, ["--socket-path", o.server.socketPath, "--", "sockperf", mode, "-i", "127.0.0.1",
                                                            "-p", port, "-t", "2", "-m", "64"] + proto, name: "sockperf-\(mode)", timeout: 60)
            #expect(r.succeeded, "\(mode): \(r)")
            let summary = mode == "ping-pong" ? "Summary: Latency is" : "Summary: Message Rate is"
            #expect((r.output + r.errorOutput).contains(summary), "\(mode) printed no summary: \(r)")
            #expect(!(r.output + r.errorOutput).contains("ERROR"), "\(mode): \(r)")
        }
        #expect(server.isRunning, "sockperf server died: \(Offload.describe(server))")
        try Offload.expectNotInKernel(port: port, udp: !tcp)
    }
}
