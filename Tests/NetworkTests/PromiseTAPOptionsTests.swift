import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// README promises about a TAP interface's options and what the stack puts on the wire, checked from
/// the kernel's side of the link: `--mac`, `--mtu`, several TAPs, `--gateway` routing, and the
/// IP_TTL / IP_TOS / IPV6_UNICAST_HOPS of a socket.
@Suite("README promises: TAP options", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct PromiseTAPOptionsTests {
    /// A kernel-side tcpdump of everything on `device` (the test picks its lines), ready; `read()`
    /// stops it and returns its lines. `--immediate-mode`: without it tcpdump takes packets in blocks
    /// and loses those still buffered when it is stopped.
    struct Capture {
        let net: TAPNetwork
        let process: ChildProcess
        let file: String

        init(_ net: TAPNetwork, device: String, name: String) throws {
            self.net = net
            file = "\(net.directory)/\(name).pcap"
            process = try net.startKernel(["tcpdump", "-Z", "root", "--immediate-mode", "-i", device, "-n", "-U", "-w", file], label: name)
            guard process.waitForOutput("listening on", inErrorOutput: true) else {
                throw SetupError(description: "tcpdump did not start: \(process.diagnostics)")
            }
        }

        /// - Parameter verbose: `tcpdump -v` (IP header fields; each packet then takes two lines).
        func read(verbose: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String] {
            #expect(process.stop(SIGINT, grace: 5) == .exited(0), "\(process.diagnostics)", sourceLocation: sourceLocation)
            let r = try TestCommand.run(["tcpdump", "-n"] + (verbose ? ["-v"] : []) + ["-r", file], label: "\(file.split(separator: "/").last ?? "")-read", directory: net.directory)
            #expect(r.succeeded, "\(r)", sourceLocation: sourceLocation)
            return r.output.split(separator: "\n").map(String.init)
        }
    }

    @Test("--mac is the stack's address in the kernel's neighbour table; --mtu 1400 makes its SYN carry MSS 1360")
    func macAndMTU() throws {
        let net = try TAPNetwork.make("macmtu", subnet: 11)
        defer { net.teardown() }
        let mac = "02:12:34:56:78:9a"
        try net.startServer(extraArguments: ["--mac", mac, "--mtu", "1400"])
        let ping = try net.runKernel(["ping", "-c", "1", "-W", "3", net.stackIPv4], timeoutSeconds: 20)
        #expect(ping.succeeded, "\(ping)")
        let neighbour = try net.runKernel(["ip", "neigh", "show", net.stackIPv4, "dev", net.tap], timeoutSeconds: 10)
        #expect(neighbour.output.contains("lladdr \(mac)"), "the kernel's neighbour entry for the stack: \(neighbour)")

        let syns = try Capture(net, device: net.tap, name: "syn")
        _ = try net.startKernel(["socat", "TCP4-LISTEN:9000,fork,reuseaddr", "PIPE"])
        try net.waitForKernelListener(port: 9000)
        let tcp = try net.runStack("tcp-echo-client", [net.kernelIPv4, "9000", "--bytes", "64K", "--socket-path", net.socketPath], timeoutSeconds: 60)
        #expect(tcp.succeeded, "\(tcp)")
        let lines = try syns.read()
        let fromStack = lines.filter { $0.contains("\(net.stackIPv4).") && $0.contains(" > \(net.kernelIPv4).9000: Flags [S]") }
        #expect(!fromStack.isEmpty, "no SYN from the stack in the capture: \(lines)")
        #expect(fromStack.allSatisfy { $0.contains("mss 1360") }, "the stack's SYN with --mtu 1400: \(fromStack)")
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }

    /// Two TAPs: the kernel reaches the stack on both; the second is the default interface (the last
    /// one), and its `--gateway` carries the stack's traffic to an address on neither subnet (one
    /// the kernel has on its loopback device).
    @Test("several TAPs, and --gateway routing to an address on neither link")
    func severalTAPsAndGateway() throws {
        let net = try TAPNetwork.make("twotaps", subnet: 12)
        defer { net.teardown() }
        let second = "skb12", remote = "10.99.12.1"
        try net.addTAP(second, kernelAddress: "10.78.12.1/24")
        try net.inside(["ip", "addr", "add", "\(remote)/32", "dev", "lo"])
        try net.startServer(extraArguments: ["--tap", second, "--address", "10.78.12.2/24", "--gateway", "10.78.12.1"])
        for address in [net.stackIPv4, "10.78.12.2"] {
            let ping = try net.runKernel(["ping", "-c", "2", "-i", "0.2", "-W", "3", address], timeoutSeconds: 20)
            #expect(ping.succeeded && ping.output.contains("2 received"), "ping \(address): \(ping)")
        }
        let frames = try Capture(net, device: second, name: "gateway")
        // (Bound to that address, so that the echo comes from it.)
        _ = try net.startKernel(["socat", "UDP4-RECVFROM:9001,bind=\(remote),fork", "PIPE"])
        try net.waitForKernelListener(port: 9001, udp: true)
        let udp = try net.runStack("udp-echo-client", [remote, "9001", "--count", "20", "--size", "200", "--timeout", "3000",
                                                      "--socket-path", net.socketPath], timeoutSeconds: 60)
        #expect(udp.succeeded && udp.output.contains("sent=20 received=20 lost=0"), "UDP to \(remote) through the gateway: \(udp)")
        let lines = try frames.read()
        #expect(lines.contains { $0.contains("10.78.12.2.") && $0.contains("> \(remote).9001") }, "not on the default TAP: \(lines)")
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }

    @Test("IP_TTL and IP_TOS of a UDP socket, and IPV6_UNICAST_HOPS, are what goes on the wire")
    func ttlTOSAndHopsOnTheWire() throws {
        let net = try TAPNetwork.make("ttltos", subnet: 13)
        defer { net.teardown() }
        try net.startServer()
        // The stack learns the kernel's link addresses first: lwIP may drop a datagram that waits
        // for address resolution.
        for command in [["ping", "-c", "1", "-W", "3", net.stackIPv4], ["ping", "-6", "-c", "1", "-W", "3", net.stackIPv6]] {
            let ping = try net.runKernel(command, timeoutSeconds: 20)
            try #require(ping.succeeded, "\(ping)")
        }
        let packets = try Capture(net, device: net.tap, name: "ttl")
        _ = try net.startKernel(["socat", "UDP4-RECVFROM:9005,fork", "PIPE"])
        _ = try net.startKernel(["socat", "UDP6-RECVFROM:9006,fork", "PIPE"])
        try net.waitForKernelListener(port: 9005, udp: true)
        try net.waitForKernelListener(port: 9006, udp: true)
        // net-peer waits for each echo: the datagram was on the wire before the capture stops.
        for (host, port) in [(net.kernelIPv4, "9005"), (net.kernelIPv6, "9006")] {
            let r = try net.runStack("net-peer", ["udp-send", net.socketPath, host, port, "7:16:echo"], timeoutSeconds: 30)
            #expect(r.succeeded && r.output.contains("sent=100 echoed=100"), "\(r)")
        }
        let lines = try packets.read(verbose: true).joined(separator: "\n")
        // (tcpdump -v: the IP header's fields, then the addresses on the next line.)
        #expect(lines.contains("tos 0x10, ttl 7,") && lines.contains("\(net.stackIPv4).") , "IPv4 header of the stack's datagram: \(lines)")
        #expect(lines.contains("hlim 7,"), "IPv6 header of the stack's datagram: \(lines)")
    }

    /// A datagram sendto accepted goes out even if the application exits right after (as with the
    /// kernel's sockets): net-peer sends one datagram and exits at once.
    @Test("a datagram accepted by sendto reaches the wire although its sender exits at once")
    func datagramOfAnExitingSender() throws {
        let net = try TAPNetwork.make("exitsend", subnet: 14)
        defer { net.teardown() }
        try net.startServer()
        let ping = try net.runKernel(["ping", "-c", "1", "-W", "3", net.stackIPv4], timeoutSeconds: 20)
        try #require(ping.succeeded, "\(ping)")
        let packets = try Capture(net, device: net.tap, name: "exit")
        for round in 0..<5 {
            let r = try net.runStack("net-peer", ["udp-send", net.socketPath, net.kernelIPv4, "\(9100 + round)", "64:0"], timeoutSeconds: 30)
            #expect(r.succeeded && r.output.contains("sent=100"), "\(r)")
        }
        // Bounded: each was accepted; give the stack a moment to put them out.
        usleep(300_000)
        let lines = try packets.read()
        for round in 0..<5 {
            #expect(lines.contains { $0.contains("> \(net.kernelIPv4).\(9100 + round): UDP, length 100") }, "datagram \(round) never left: \(lines)")
        }
    }
    /// README: a connect nobody answers fails with ETIMEDOUT. The host does not exist on the link (no
    /// ARP answer), so lwIP's SYN retries run out: about 90 s of waiting (the test mostly sleeps).
    @Test("a connect to a host that never answers fails with ETIMEDOUT")
    func connectTimesOut() throws {
        let net = try TAPNetwork.make("synto", subnet: 15)
        defer { net.teardown() }
        try net.startServer()
        let absent = "10.77.15.99"
        let r = try net.runStack("net-peer", ["tcp-source", net.socketPath, absent, "9", "/dev/null"], timeoutSeconds: 300)
        #expect(!r.succeeded && r.output.contains("errno \(ETIMEDOUT)"), "connect to \(absent): \(r)")
    }
}
