import TestSupport
import Testing

/// socat as a relay between two nc's, all three under the launcher: nc -> socat (port A) -> nc
/// listening on port B.
@Suite struct SocatTests {
    static let bytes = 1 << 20

    /// One connection through `socat TCP-LISTEN:A TCP:127.0.0.1:B` (no fork): 1 MiB of random bytes
    /// from the client's stdin to the listener's stdout. The client's -N shutdown travels through
    /// socat, which then exits 0 like both nc's.
    @Test("socat TCP relay: 1 MiB from nc through socat to nc, SHA-256 equal")
    func tcpRelay() throws {
        let stack = try Offload("socat-tcp")
        defer { stack.finish() }
        let (relayPort, listenPort) = ("\(TestPorts.next())", "\(TestPorts.next())")
        let source = try stack.randomFile("source", bytes: Self.bytes)
        let received = stack.directory.file("received")
        let listener = try stack.start(["nc", "-v", "-n", "-l", "127.0.0.1", listenPort], name: "nc-listen",
                                       stdout: .file(received))
        try stack.awaitReady(listener, "Listening on")
        let relay = try stack.start(["socat", "-d", "-d", "TCP-LISTEN:\(relayPort),bind=127.0.0.1,reuseaddr",
                                     "TCP:127.0.0.1:\(listenPort)"], name: "socat-tcp", stdout: .null)
        try stack.awaitReady(relay, "listening on")
        try Offload.expectNotInKernel(port: relayPort)
        try Offload.expectNotInKernel(port: listenPort)
        let client = try stack.start(["nc", "-n", "-N", "127.0.0.1", relayPort], name: "nc-connect",
                                     input: .file(source), stdout: .null)
        if let problem = stack.waitForExit([client, relay, listener], growing: [received], expectedBytes: Self.bytes) {
            Issue.record(Comment(rawValue: problem))
            return
        }
        for p in [client, relay, listener] {
            #expect(p.status == .exited(0), "\(Offload.describe(p))")
        }
        try Offload.expectSameBytes(source, received, "nc -> socat -> nc")
        stack.expectSessions([listener, relay, client])
    }

    /// `socat UDP-LISTEN:A UDP:127.0.0.1:B` between `nc -u` and `nc -u -l`: a line each way, each
    /// relayed in one datagram.
    @Test("socat UDP relay: a datagram each way between nc -u and nc -u -l")
    func udpRelay() throws {
        let stack = try Offload("socat-udp")
        defer { stack.finish() }
        let (relayPort, listenPort) = ("\(TestPorts.next())", "\(TestPorts.next())")
        let listener = try stack.start(["nc", "-u", "-v", "-n", "-l", "127.0.0.1", listenPort], name: "nc-udp-listen",
                                       input: .pipe)
        try stack.awaitReady(listener, "Bound on")
        let relay = try stack.start(["socat", "-d", "-d", "UDP-LISTEN:\(relayPort),bind=127.0.0.1",
                                     "UDP:127.0.0.1:\(listenPort)"], name: "socat-udp", stdout: .null)
        try stack.awaitReady(relay, "listening on")
        try Offload.expectNotInKernel(port: relayPort, udp: true)
        try Offload.expectNotInKernel(port: listenPort, udp: true)
        let sender = try stack.start(["nc", "-u", "-n", "-q", "0", "127.0.0.1", relayPort], name: "nc-udp-send", input: .pipe)
        try exchange(sender: sender, receiver: listener, stack: stack, tag: "socat UDP relay \(relayPort) -> \(listenPort)")
        stack.expectSessions([listener, relay, sender])
    }

    /// `socat TCP-LISTEN:A,fork EXEC:cat,nofork`: for each connection socat forks, and the child
    /// execs cat with the connection as its standard input and output, so the connection crosses
    /// a fork and an exec and cat (under the library too) moves its bytes. Three clients in turn,
    /// 1 MiB each, the echo compared.
    @Test("socat TCP-LISTEN,fork EXEC:cat,nofork: a connection crosses fork and exec; three clients get their 1 MiB back")
    func forkExec() throws {
        let stack = try Offload("socat-exec")
        defer { stack.finish() }
        let port = "\(TestPorts.next())"
        let server = try stack.start(["socat", "-d", "-d", "TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "EXEC:cat,nofork"],
                                     name: "socat-exec", stdout: .null)
        try stack.awaitReady(server, "listening on")
        try Offload.expectNotInKernel(port: port)
        for n in 1...3 {
            let source = try stack.randomFile("source\(n)", bytes: Self.bytes)
            let received = stack.directory.file("received\(n)")
            let client = try stack.start(["socat", "-t", "10", "-", "TCP:127.0.0.1:\(port)"], name: "socat-client-\(n)",
                                         input: .file(source), stdout: .file(received))
            if let problem = stack.waitForExit([client], growing: [received], expectedBytes: Self.bytes) {
                Issue.record(Comment(rawValue: "client \(n): \(problem)"))
                return
            }
            #expect(client.status == .exited(0), "\(Offload.describe(client))")
            try Offload.expectSameBytes(source, received, "client \(n) through socat's fork and cat's exec")
        }
        #expect(server.isRunning, "socat's listener exited: \(Offload.describe(server))")
        let execs = server.errorOutput.split(separator: "\n").filter { $0.contains("execvp'ing \"cat\"") }.count
        #expect(execs == 3,
                "socat did not exec cat three times: \(Offload.describe(server))")
    }
}
