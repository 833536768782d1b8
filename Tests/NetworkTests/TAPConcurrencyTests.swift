import TestSupport
import Testing

/// Many kernel connections at once to one stack application.
@Suite("TAP: concurrent connections", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPConcurrencyTests {
    @Test("200 concurrent kernel TCP connections served by tcp-echo-server, every byte verified")
    func twoHundredConnections() throws {
        let net = try TAPNetwork.make("conc", subnet: 6)
        defer { net.teardown() }
        try net.startServer()
        let server = try net.startStack("tcp-echo-server", ["--socket-path", net.socketPath, "--port", "7008"])
        try #require(server.waitForOutput("listening on [::]:7008"), "\(server.diagnostics)")
        let script = try net.script("tcp_echo_check.py", KernelPeers.tcpEchoCheck)
        // All 200 are connected before any data moves, then 128 KiB of distinct data goes through each
        // concurrently; each echo is compared with what was sent, and each connection must end with
        // the echo server's FIN after the last byte.
        let r = try net.runKernel(["python3", script, net.stackIPv4, "7008", "200", "\(128 << 10)", "90"], timeoutSeconds: 120)
        #expect(r.succeeded && r.output.contains("connected=200") && r.output.contains("ok connections=200 bytes=\(128 << 10)"), "\(r)")
        #expect(server.isRunning, "tcp-echo-server died: \(server.diagnostics)")
        #expect(net.stopServer() == .exited(0), "\(net.server?.diagnostics ?? "")")
    }
}
