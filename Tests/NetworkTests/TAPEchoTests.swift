import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Kernel programs as the peers of the stack's applications, over the TAP link, IPv4 and IPv6: the
/// kernel's clients against our echo servers, and our echo clients against the kernel's echo servers.
@Suite("TAP: kernel programs as peers", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPEchoTests {
    @Test("kernel clients through udp-echo-server and tcp-echo-server on the stack")
    func kernelClientsAgainstStackServers() throws {
        let net = try TAPNetwork.make("kclients", subnet: 2)
        defer { net.teardown() }
        try net.startServer()
        let udpServer = try net.startStack("udp-echo-server", ["--socket-path", net.socketPath, "--port", "7007"])
        let tcpServer = try net.startStack("tcp-echo-server", ["--socket-path", net.socketPath, "--port", "7008"])
        try #require(udpServer.waitForOutput("listening on [::]:7007"), "\(udpServer.diagnostics)")
        try #require(tcpServer.waitForOutput("listening on [::]:7008"), "\(tcpServer.diagnostics)")
        let udpScript = try net.script("udp_echo_check.py", KernelPeers.udpEchoCheck)
        let tcpScript = try net.script("tcp_echo_check.py", KernelPeers.tcpEchoCheck)

        for address in [net.stackIPv4, net.stackIPv6] {
            // 300 datagrams of 4 to 1400 bytes and three fragmented ones (4000-12000), each echo checked.
            let udp = try net.runKernel(["python3", udpScript, address, "7007", "300"], timeoutSeconds: 60)
            #expect(udp.succeeded && udp.output.contains("ok datagrams=300"), "UDP to \(address): \(udp)")

            // 4 connections at once, 2 MiB each, echoed and then closed (the half-close comes back).
            let tcp = try net.runKernel(["python3", tcpScript, address, "7008", "4", "\(2 << 20)", "60"], timeoutSeconds: 90)
            #expect(tcp.succeeded && tcp.output.contains("ok connections=4 bytes=\(2 << 20)"), "TCP to \(address): \(tcp)")

            // A line through nc: a second, independent kernel client.
            let nc = try net.runKernel(["sh", "-c", "printf 'hello through the stack\\n' | nc -N -w 10 \(address) 7008"], timeoutSeconds: 30)
            #expect(nc.succeeded && nc.output == "hello through the stack\n", "nc to \(address): \(nc)")
        }
        #expect(udpServer.isRunning, "udp-echo-server died: \(udpServer.diagnostics)")
        #expect(tcpServer.isRunning, "tcp-echo-server died: \(tcpServer.diagnostics)")
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }

    @Test("udp-echo-client and tcp-echo-client on the stack against kernel socat echo servers")
    func stackClientsAgainstKernelServers() throws {
        let net = try TAPNetwork.make("sclients", subnet: 3)
        defer { net.teardown() }
        // Both ends capture, so that a failure can tell where datagrams went missing (the stack's
        // capture is kept with NETWORK_TESTS_KEEP=1; the kernel's tail goes into the failure message).
        try net.startServer(extraArguments: ["--capture", "\(net.directory)/capture.pcapng"])
        let dump = try net.startKernel(["tcpdump", "-Z", "root", "--immediate-mode", "-i", net.tap, "-n", "-U", "-w", "\(net.directory)/kernel.pcap"])
        try #require(dump.waitForOutput("listening on", inErrorOutput: true), "\(dump.diagnostics)")
        _ = try net.startKernel(["socat", "UDP4-RECVFROM:9001,fork", "PIPE"])
        _ = try net.startKernel(["socat", "UDP6-RECVFROM:9002,fork", "PIPE"])
        _ = try net.startKernel(["socat", "TCP4-LISTEN:9000,fork,reuseaddr", "PIPE"])
        _ = try net.startKernel(["socat", "TCP6-LISTEN:9003,fork,reuseaddr", "PIPE"])
        for port in [9001, 9002] { try net.waitForKernelListener(port: port, udp: true) }
        for port in [9000, 9003] { try net.waitForKernelListener(port: port) }

        for (address, udpPort, tcpPort) in [(net.kernelIPv4, "9001", "9000"), (net.kernelIPv6, "9002", "9003")] {
            for (count, size) in [(200, 1000), (50, 1400)] {
                // 1 s per echo is ample on this link; the bound lets the client report its losses
                // even if every datagram were lost.
                let udp = try net.runStack("udp-echo-client", [address, udpPort, "--count", "\(count)", "--size", "\(size)", "--timeout", "1000",
                                                              "--socket-path", net.socketPath], timeoutSeconds: Double(count) + 30)
                let ok = udp.succeeded && udp.output.contains("sent=\(count) received=\(count) lost=0 corrupted=0")
                let capture = ok ? "" : try net.kernelCaptureTail()
                #expect(ok, "UDP \(count) x \(size) B to \(address): \(udp)\nkernel-side capture (last lines):\n\(capture)")
            }

            let tcp = try net.runStack("tcp-echo-client", [address, tcpPort, "--connections", "4", "--bytes", "4M", "--timeout", "30",
                                                          "--socket-path", net.socketPath], timeoutSeconds: 90)
            #expect(tcp.succeeded && tcp.output.contains("connections=4 bytes=\(4 << 20)") && tcp.output.contains("mismatches=0"),
                    "TCP to \(address): \(tcp)")
        }
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }

    /// The kernel answers a datagram to a port where nothing listens with ICMP (ICMPv6) port
    /// unreachable: a connected stack socket's next call fails with ECONNREFUSED, as a kernel
    /// socket's would; an unconnected one hears nothing (its recv times out).
    @Test("ICMP port unreachable from the kernel: ECONNREFUSED on a connected UDP socket only")
    func portUnreachable() throws {
        let net = try TAPNetwork.make("refused", subnet: 16)
        defer { net.teardown() }
        try net.startServer()
        for address in [net.kernelIPv4, net.kernelIPv6] {
            for (mode, expected) in [("connected", "recv=errno:\(ECONNREFUSED)"), ("unconnected", "recv=errno:\(EAGAIN)")] {
                let r = try net.runStack("net-peer", ["udp-refused", net.socketPath, address, "9", mode], timeoutSeconds: 30)
                #expect(r.succeeded && r.output.contains(expected), "\(mode) to \(address): \(r)")
            }
        }
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }

    /// A stack application that reads to the end of the stream and closes must end the connection
    /// with FIN, not RST: the kernel sender, waiting for our FIN after its own, sees a clean end.
    /// (The stack once reset such connections about half the time: see TCPSocket.closeByApp.)
    @Test("a stack reader that reads to end of stream and closes sends FIN, not RST")
    func readToEndThenCloseSendsFIN() throws {
        let net = try TAPNetwork.make("fin", subnet: 9)
        defer { net.teardown() }
        try net.startServer()
        // A reset that follows the FIN does not fail the sender (it has seen the end of stream
        // already): a kernel-side capture of the link does. (--immediate-mode: without it tcpdump
        // hands over packets in blocks, and those still buffered when it is stopped are lost.)
        let capture = try net.startKernel(["tcpdump", "-Z", "root", "--immediate-mode", "-i", net.tap, "-n", "-U", "-w", "\(net.directory)/link.pcap"])
        try #require(capture.waitForOutput("listening on", inErrorOutput: true), "\(capture.diagnostics)")
        let file = try net.randomFile("data.bin", bytes: 300_000)
        let sendScript = try net.script("tcp_send.py", KernelPeers.tcpSend)
        for round in 0..<12 {
            let address = round % 2 == 0 ? net.stackIPv4 : net.stackIPv6
            let port = "\(5100 + round)"
            let sink = try net.startStack("net-peer", ["tcp-sink", net.socketPath, address, port, "\(net.directory)/out.bin"])
            try #require(sink.waitForOutput("listening on"), "\(sink.diagnostics)")
            // tcp_send.py fails with ECONNRESET if the stack resets instead of closing.
            let sender = try net.runKernel(["python3", sendScript, address, port, file], timeoutSeconds: 30)
            #expect(sender.succeeded && ChildProcess.fields(sender.output)["bytes"] == "300000", "round \(round): \(sender)")
            #expect(sink.finish(timeout: 20).status == .exited(0) && ChildProcess.fields(sink.output)["bytes"] == "300000", "round \(round): \(sink.diagnostics)")
        }
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
        #expect(capture.stop(SIGINT, grace: 5) == .exited(0), "\(capture.diagnostics)")
        let read = try TestCommand.run(["tcpdump", "-n", "-r", "\(net.directory)/link.pcap", "tcp"], label: "tcpdump-link", directory: net.directory)
        let segments = read.output.split(separator: "\n")
        // Every round's FIN from the stack is in the capture (so the capture saw the closes), no RST.
        let stackFINs = segments.filter { $0.contains("Flags [F") && ($0.contains(" \(net.stackIPv4).51") || $0.contains(" \(net.stackIPv6).51")) }
        #expect(read.succeeded && stackFINs.count >= 12, "the stack's FINs in the capture: \(stackFINs.count)\n\(read.errorOutput)")
        let resetSegments = segments.filter { $0.contains("Flags [R") }
        #expect(resetSegments.isEmpty, "RST segments on the link: \(resetSegments)")
    }
}
