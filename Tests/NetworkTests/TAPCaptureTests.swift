import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `--capture FILE`: the pcapng file the server writes is read back by tcpdump (and tshark) after a clean stop,
/// and it accounts for every payload byte of a set of UDP and TCP transfers over the TAP link.
///
/// What the capture must contain, on a clean link (no impairment):
/// - UDP: exactly the test's flows, each direction with exactly the datagrams sent (count and the
///   sum of payload lengths): there is nothing that retransmits UDP.
/// - TCP: exactly the test's connections. In each direction of each one, the payload segments cover
///   the sequence space from the SYN's ISN + 1 to ISN + 1 + N without a gap or an extra byte, where N
///   is what the application sent that way; the FIN sits right after the last byte; there is no RST.
///   A byte may appear more than once only in a retransmission (a segment lying wholly inside
///   ranges already covered); the test reports how many such bytes there were.
@Suite("TAP: packet capture", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPCaptureTests {
    @Test("the capture of UDP and TCP transfers, read by tcpdump, holds every payload byte once per direction")
    func captureAccountsForEveryByte() throws {
        let net = try TAPNetwork.make("capture", subnet: 8)
        defer { net.teardown() }
        let capture = "\(net.directory)/capture.pcapng"
        try net.startServer(extraArguments: ["--capture", capture])
        _ = try net.startKernel(["socat", "UDP4-RECVFROM:9001,fork", "PIPE"])
        _ = try net.startKernel(["socat", "UDP6-RECVFROM:9002,fork", "PIPE"])
        _ = try net.startKernel(["socat", "TCP4-LISTEN:9000,fork,reuseaddr", "PIPE"])
        _ = try net.startKernel(["socat", "TCP6-LISTEN:9003,fork,reuseaddr", "PIPE"])
        for port in [9001, 9002] { try net.waitForKernelListener(port: port, udp: true) }
        for port in [9000, 9003] { try net.waitForKernelListener(port: port) }

        // UDP from the stack: 100 x 1000 B over IPv4, 80 x 1200 B over IPv6, each echoed.
        for (address, port, count, size) in [(net.kernelIPv4, "9001", 100, 1000), (net.kernelIPv6, "9002", 80, 1200)] {
            let r = try net.runStack("udp-echo-client", [address, port, "--count", "\(count)", "--size", "\(size)", "--timeout", "3000",
                                                        "--socket-path", net.socketPath], timeoutSeconds: 60)
            try #require(r.succeeded && r.output.contains("sent=\(count) received=\(count) lost=0"), "\(r)")
        }
        // TCP from the stack: 2 connections x 1 MiB over IPv4, 1 x 1 MiB over IPv6, each echoed.
        for (address, port, connections) in [(net.kernelIPv4, "9000", 2), (net.kernelIPv6, "9003", 1)] {
            let r = try net.runStack("tcp-echo-client", [address, port, "--connections", "\(connections)", "--bytes", "1M",
                                                        "--socket-path", net.socketPath], timeoutSeconds: 60)
            try #require(r.succeeded && r.output.contains("mismatches=0"), "\(r)")
        }
        // TCP from the kernel: 512 KiB one way to a stack reader that closes after the end of stream.
        let file = try net.randomFile("half.bin", bytes: 512 << 10)
        let sink = try net.startStack("net-peer", ["tcp-sink", net.socketPath, net.stackIPv4, "5001", "\(net.directory)/half.out"])
        try #require(sink.waitForOutput("listening on"), "\(sink.diagnostics)")
        let sender = try net.runKernel(["python3", try net.script("tcp_send.py", KernelPeers.tcpSend), net.stackIPv4, "5001", file], timeoutSeconds: 60)
        try #require(sender.succeeded, "\(sender)")
        #expect(sink.finish(timeout: 30).status == .exited(0), "\(sink.diagnostics)")

        // A clean stop flushes and closes the file.
        try #require(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
        let dump = try TestCommand.run(["tcpdump", "-n", "-S", "-tt", "-r", capture], label: "tcpdump", directory: net.directory)
        try #require(dump.succeeded, "\(dump)")
        #expect(!dump.errorOutput.contains("truncated") && !dump.errorOutput.lowercased().contains("warning"), "\(dump.errorOutput)")
        let summary = CaptureSummary(tcpdump: dump.output)
        // tshark reads the same file and finds the same UDP datagrams (count and payload bytes).
        let shark = try TestCommand.run(["tshark", "-r", capture, "-Y", "udp.port == 9001 || udp.port == 9002", "-T", "fields", "-e", "udp.length"],
                                        label: "tshark", directory: net.directory, timeoutSeconds: 60)
        let lengths = shark.output.split(separator: "\n").compactMap { Int($0) }
        #expect(shark.succeeded && lengths.count == 2 * (100 + 80) && lengths.reduce(0) { $0 + $1 - 8 } == 2 * (100_000 + 96_000),
                "tshark -r: \(lengths.count) datagrams, \(lengths.reduce(0) { $0 + $1 - 8 }) payload bytes\n\(shark)")
        #expect(summary.unparsed.isEmpty, "tcpdump lines the test does not understand: \(summary.unparsed.prefix(5))")

        for (flow, totals) in summary.udp.sorted(by: { $0.key.description < $1.key.description }) {
            print("NetworkTests capture: UDP \(flow): \(totals.datagrams) datagrams, \(totals.bytes) bytes")
        }
        for (flow, stream) in summary.tcp.sorted(by: { $0.key.description < $1.key.description }) {
            print("NetworkTests capture: TCP \(flow): payload \(stream.coverage), FIN at \(stream.finOffset.map(String.init) ?? "-"), RST \(stream.resets), retransmitted \(stream.retransmittedBytes) B")
        }

        // UDP: exactly four flows, each with every datagram once.
        let k4 = net.kernelIPv4, s4 = net.stackIPv4, k6 = net.kernelIPv6, s6 = net.stackIPv6
        var udpExpected: [String: (Int, Int)] = [:]
        for flow in summary.udp.keys {
            if flow.destination == k4 && flow.destinationPort == 9001 && flow.source == s4 { udpExpected[flow.description] = (100, 100_000) }
            if flow.source == k4 && flow.sourcePort == 9001 && flow.destination == s4 { udpExpected[flow.description] = (100, 100_000) }
            if flow.destination == k6 && flow.destinationPort == 9002 && flow.source == s6 { udpExpected[flow.description] = (80, 96_000) }
            if flow.source == k6 && flow.sourcePort == 9002 && flow.destination == s6 { udpExpected[flow.description] = (80, 96_000) }
        }
        #expect(summary.udp.count == 4 && udpExpected.count == 4, "UDP flows in the capture: \(summary.udp)")
        for (flow, totals) in summary.udp {
            let expected = udpExpected[flow.description]
            #expect(expected.map { $0 == (totals.datagrams, totals.bytes) } ?? false,
                    "UDP \(flow): \(totals.datagrams) datagrams, \(totals.bytes) payload bytes; expected \(expected.map { "\($0)" } ?? "no such flow")")
        }

        // TCP: exactly four connections, every byte each way.
        let mib = 1 << 20
        var connections: [String: Int] = [:]
        for (flow, stream) in summary.tcp {
            let expected: Int?
            switch (flow.source, flow.sourcePort, flow.destination, flow.destinationPort) {
            case (s4, _, k4, 9000), (k4, 9000, s4, _), (s6, _, k6, 9003), (k6, 9003, s6, _): expected = mib
            case (k4, _, s4, 5001): expected = 512 << 10
            case (s4, 5001, k4, _): expected = 0
            default: expected = nil
            }
            let server = [9000, 9003, 5001].first { $0 == flow.sourcePort || $0 == flow.destinationPort } ?? 0
            connections["\(server)", default: 0] += 1
            guard let expected else {
                Issue.record("TCP flow the test did not make: \(flow)")
                continue
            }
            #expect(stream.isn != nil, "TCP \(flow): no SYN in the capture")
            #expect(stream.coverage == (expected > 0 ? [0..<expected] : []),
                    "TCP \(flow): payload covers \(stream.coverage), expected 0..<\(expected)")
            #expect(stream.finOffset == expected, "TCP \(flow): FIN at \(stream.finOffset.map(String.init) ?? "none"), expected \(expected)")
            #expect(stream.resets == 0, "TCP \(flow): \(stream.resets) RST segments")
            #expect(stream.unplaced == 0, "TCP \(flow): \(stream.unplaced) payload segments before the SYN")
            #expect(stream.misplaced == 0, "TCP \(flow): \(stream.misplaced) segments overlapping covered bytes only in part")
        }
        // Each connection appears once per direction: 2 + 1 echo connections, 1 one-way.
        #expect(connections == ["9000": 4, "9003": 2, "5001": 2], "TCP connections in the capture, by server port (x2 directions): \(connections)")
    }
}
