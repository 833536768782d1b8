import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 9: clients that take what they can. One opens 4,096 UDP sockets; one floods another
/// client's listener with connections it never uses.
@Suite("Greedy clients", .serialized)
struct GreedyClientTests {
    /// The most the server may hold in memory (VmRSS) with one client's 4,096 UDP sockets open.
    static let residentBound = 256 << 20

    static func mebibytes(_ bytes: Int?) -> String {
        guard let bytes else { return "?" }
        let tenths = bytes * 10 / (1 << 20)
        return "\(tenths / 10).\(tenths % 10) MiB"
    }

    @Test("4,096 UDP sockets in one client (process-vm): a clear error or success, and the server's RSS stays bounded")
    func manyDatagramSockets() throws {
        let server = try Hardening.server(["--datagram-transport", "process-vm"])
        defer { server.stop() }
        let baseline = Hardening.settledDescriptors(server)
        let before = ProcStats.residentBytes(server.pid)
        let client = try Hardening.scribbler("udp-many", server, ["--count", "4096", "--transport", "process-vm"])
        defer { client.terminate() }

        let opened = Hardening.line(client, "opened=", timeout: 60)
        try #require(opened != nil, "udp-many did not report within 60 s: \(client.diagnostics)\n\(Hardening.death(server))")
        let count = Int(opened?["opened"] ?? "") ?? 0
        let err = Int32(opened?["errno"] ?? "") ?? -1
        // Either all 4,096 or a clear refusal.
        #expect((count == 4096 && err == 0) || [ENOBUFS, EMFILE, ENFILE].contains(err),
                "opened \(count) UDP sockets, then errno \(err)\n\(Hardening.death(server))")
        let verified = Hardening.line(client, "verified=", timeout: 30)
        #expect(verified != nil && verified?["verified"] == verified?["of"] && verified?["of"] != "0",
                "datagrams on a few of the sockets: \(verified ?? [:])\n\(client.diagnostics)")
        _ = Hardening.line(client, "ready", timeout: 10)
        let during = ProcStats.residentBytes(server.pid)
        print("4,096 UDP sockets (process-vm): opened \(count), errno \(err); server VmRSS \(Self.mebibytes(before)) before, \(Self.mebibytes(during)) with the sockets open")
        #expect(server.process.isRunning, "with \(count) UDP sockets open: \(Hardening.death(server))")
        #expect((during ?? Int.max) <= Self.residentBound,
                "server VmRSS with \(count) UDP sockets of one client: \(Self.mebibytes(during)) (bound \(Self.mebibytes(Self.residentBound)), \(Self.mebibytes(before)) before)")

        client.closeInput()
        let (status, _) = client.finish(timeout: 30)
        #expect(status == .exited(0), "udp-many: \(client.diagnostics)")
        let after = Hardening.descriptorsReturn(server, to: baseline)
        #expect(after == baseline, "server descriptors after the client left: \(after), baseline \(baseline)")
        print("after the client left: server VmRSS \(Self.mebibytes(ProcStats.residentBytes(server.pid)))")
        Hardening.expectAliveAndCleanStop(server, "after 4,096 UDP sockets")
    }

    @Test("a connect flood at one client's listener: a third client still connects and echoes, there and at another listener")
    func connectFlood() throws {
        let server = try Hardening.server()
        defer { server.stop() }
        let floodedPort: UInt16 = 7611, otherPort: UInt16 = 7612
        let flooded = try Hardening.echoServer("tcp-echo-server", server, port: floodedPort)
        defer { flooded.terminate() }
        let other = try Hardening.echoServer("tcp-echo-server", server, port: otherPort)
        defer { other.terminate() }
        let baseline = Hardening.settledDescriptors(server)
        let first = try Hardening.tcpEcho(server, port: floodedPort)
        try #require(first.ok, "echo before the flood: \(first)")

        // Two flooding processes (one client's own segment holds about as many connections as the
        // listener's), 1,500 attempts or 10 s each, holding every connection they get.
        var floods: [ChildProcess] = []
        defer { floods.forEach { $0.terminate() } }
        var report: [String] = []
        for _ in 0..<2 {
            let flood = try Hardening.scribbler("flood", server, ["--port", String(floodedPort), "--attempts", "1500", "--seconds", "10"])
            floods.append(flood)
            let held = Hardening.line(flood, "held=", timeout: 40)
            try #require(held != nil, "flood did not report within 40 s: \(flood.diagnostics)\n\(Hardening.death(server))")
            report.append(flood.transcript.last { $0.hasPrefix("held=") } ?? "")
        }
        print("connect flood at port \(floodedPort): \(report.joined(separator: "; "))")
        #expect(server.process.isRunning, "during the flood: \(Hardening.death(server))")

        let here = try Hardening.tcpEcho(server, port: floodedPort, connections: 1, bytes: "64K")
        #expect(here.ok, "a third client at the flooded listener (floods: \(report)): \(here)\n\(server.log)")
        let there = try Hardening.tcpEcho(server, port: otherPort, connections: 1, bytes: "64K")
        #expect(there.ok, "a third client at another client's listener (floods: \(report)): \(there)\n\(server.log)")
        #expect(flooded.isRunning && other.isRunning, "an echo server died: \(flooded.diagnostics)\n\(other.diagnostics)")

        for flood in floods {
            flood.closeInput()
            let (status, _) = flood.finish(timeout: 30)
            #expect(status == .exited(0), "flood: \(flood.diagnostics)")
        }
        let after = Hardening.descriptorsReturn(server, to: baseline, timeout: 15)
        #expect(after == baseline, "server descriptors after the floods left: \(after), baseline \(baseline)")
        let last = try Hardening.tcpEcho(server, port: floodedPort, connections: 1, bytes: "64K")
        #expect(last.ok, "echo after the floods left: \(last)")
        Hardening.expectAliveAndCleanStop(server, "after the connect flood")
    }
}
