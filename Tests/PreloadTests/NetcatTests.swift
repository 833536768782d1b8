import TestSupport
import Testing

/// OpenBSD netcat (Debian's netcat-openbsd) at both ends, both under the launcher.
@Suite struct NetcatTests {
    static let bytes = 1 << 20

    /// `nc -l` and `nc` over TCP, 1 MiB of random bytes one way: the connector sends its stdin to the
    /// listener's stdout, or (`listenerSends`) the listener to the connector. The sender has -N
    /// (shutdown after its stdin's end), so both ends see the end of stream and exit 0.
    @Test("nc to nc over TCP: 1 MiB, SHA-256 equal", arguments: ["127.0.0.1", "::1"], [false, true])
    func tcp(address: String, listenerSends: Bool) throws {
        let stack = try Offload("nc-tcp")
        defer { stack.finish() }
        let port = "\(TestPorts.next())"
        let source = try stack.randomFile("source", bytes: Self.bytes)
        let received = stack.directory.file("received")
        let listener = try stack.start(["nc", "-v", "-n"] + (listenerSends ? ["-N"] : []) + ["-l", address, port],
                                       name: "nc-listen", input: listenerSends ? .file(source) : .null,
                                       stdout: listenerSends ? .null : .file(received))
        try stack.awaitReady(listener, "Listening on")
        try Offload.expectNotInKernel(port: port)
        let connector = try stack.start(["nc", "-n"] + (listenerSends ? [] : ["-N"]) + [address, port],
                                        name: "nc-connect", input: listenerSends ? .null : .file(source),
                                        stdout: listenerSends ? .file(received) : .null)
        if let problem = stack.waitForExit([listener, connector], growing: [received], expectedBytes: Self.bytes) {
            Issue.record(Comment(rawValue: problem))
            return
        }
        #expect(listener.status == .exited(0), "\(Offload.describe(listener))")
        #expect(connector.status == .exited(0), "\(Offload.describe(connector))")
        try Offload.expectSameBytes(source, received, "\(listenerSends ? "listener -> connector" : "connector -> listener") on \(address)")
        stack.expectSessions([listener, connector])
    }

    /// `nc -u -l` and `nc -u`: a line each way in one datagram each (the listener answers the sender
    /// it heard from); then the sender, with -q 0, exits 0 at the end of its stdin.
    @Test("nc to nc over UDP: a datagram each way", arguments: ["127.0.0.1", "::1"])
    func udp(address: String) throws {
        let stack = try Offload("nc-udp")
        defer { stack.finish() }
        let port = "\(TestPorts.next())"
        let listener = try stack.start(["nc", "-u", "-v", "-n", "-l", address, port], name: "nc-udp-listen", input: .pipe)
        try stack.awaitReady(listener, "Bound on")
        try Offload.expectNotInKernel(port: port, udp: true)
        let sender = try stack.start(["nc", "-u", "-n", "-q", "0", address, port], name: "nc-udp-send", input: .pipe)
        try exchange(sender: sender, receiver: listener, stack: stack, tag: "nc -u on \(address) port \(port)")
        stack.expectSessions([listener, sender])
    }
}

/// A line from `sender` to `receiver` and one back (each through their stdin and stdout pipes), then
/// `sender`'s stdin closed: it must exit 0 within 5 s (nc -q 0).
func exchange(sender: ChildProcess, receiver: ChildProcess, stack: Offload, tag: String,
              sourceLocation: SourceLocation = #_sourceLocation) throws {
    let request = "request: \(tag)"
    sender.writeLine(request)
    let heard = receiver.readLine(timeout: 10)
    func states() -> String { "\(Offload.describe(receiver))\n\(Offload.describe(sender))" }
    try #require(heard == request, "the receiver heard \(heard.map { "\"\($0)\"" } ?? "nothing in 10 s")\n\(states())\nserver log:\n\(stack.server.log)",
                 sourceLocation: sourceLocation)
    let reply = "reply: \(tag)"
    receiver.writeLine(reply)
    let answer = sender.readLine(timeout: 10)
    #expect(answer == reply, "the sender heard \(answer.map { "\"\($0)\"" } ?? "nothing in 10 s")\n\(states())",
            sourceLocation: sourceLocation)
    sender.closeInput()
    #expect(sender.waitForExit(timeout: 5) == .exited(0), "\(Offload.describe(sender))", sourceLocation: sourceLocation)
}
