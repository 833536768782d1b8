import TestSupport
import Testing

/// The stack answers the kernel's ICMP echo on its TAP addresses, IPv4 and IPv6: ARP and neighbour
/// discovery work both ways, and so do frames of a full MTU and fragmented datagrams.
@Suite("TAP: ping", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPPingTests {
    @Test("kernel ping and ping -6 to the stack's addresses get replies")
    func pingBothFamilies() throws {
        let net = try TAPNetwork.make("ping", subnet: 1)
        defer { net.teardown() }
        try net.startServer()
        let cases: [(String, [String])] = [
            ("IPv4", ["ping", "-c", "3", "-i", "0.2", "-W", "3", net.stackIPv4]),
            ("IPv6", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", net.stackIPv6]),
            // 1472 bytes of ICMP payload: a 1500-byte IP packet, the MTU, with DF set.
            ("IPv4 full MTU", ["ping", "-c", "3", "-i", "0.2", "-W", "3", "-s", "1472", "-M", "do", net.stackIPv4]),
            ("IPv6 full MTU", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", "-s", "1452", "-M", "do", net.stackIPv6]),
            // 4000 bytes: three fragments each way, reassembled by lwIP and by the kernel.
            ("IPv4 fragmented", ["ping", "-c", "3", "-i", "0.2", "-W", "3", "-s", "4000", net.stackIPv4]),
            ("IPv6 fragmented", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", "-s", "4000", net.stackIPv6]),
        ]
        for (name, command) in cases {
            let r = try net.runKernel(command, timeoutSeconds: 30)
            #expect(r.succeeded, "\(name): \(r)")
            #expect(r.output.contains("3 packets transmitted, 3 received"), "\(name): \(r)")
        }
        // The server is still healthy and stops cleanly.
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }
}
