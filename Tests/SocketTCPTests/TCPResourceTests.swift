import CShims
import SocketClient
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension SharedServerTCPTests {

/// A client killed with SIGKILL: its peers learn of it and the server releases everything it held.
/// Uses this process's shared server (so that the peers are sockets of this test), compares the
/// server's descriptor and segment counts before and after: serialized with every other user.
@Suite
struct ClientDeath {
    struct Counts: Equatable, CustomStringConvertible {
        var descriptors: Int
        var segmentDescriptors: Int
        var segmentMappings: Int
        var description: String { "fds=\(descriptors) segment_fds=\(segmentDescriptors) segment_maps=\(segmentMappings)" }
    }

    static func counts(_ pid: pid_t) throws -> Counts {
        let fds = try #require(ProcStats.descriptorTargets(pid), "socket-server \(pid) is gone")
        let maps = try #require(ProcStats.mapsLines(pid, containing: "memfd:socket-server-client"))
        return Counts(descriptors: fds.count,
                      segmentDescriptors: fds.filter { $0.hasPrefix("/memfd:socket-server-client") }.count,
                      segmentMappings: maps.count)
    }

    @Test func killedClientWithFiftyConnections() throws {
        let s = Sockets()
        let server = SharedServer.server
        let port = TestPorts.next()
        let l = try s.listener(port: port, backlog: 64)

        // The baseline, once earlier tests' connections have finished closing (counts stable).
        var baseline = try Self.counts(server.pid)
        var stableReads = 0
        waitUntil(timeout: 5, interval: 0.1) {
            guard let now = try? Self.counts(server.pid) else { return false }
            stableReads = now == baseline ? stableReads + 1 : 0
            baseline = now
            return stableReads >= 3
        }

        let peer = try ChildProcess(TestBinaries.path("tcp-peer"),
                                    ["hold", "--socket-path", server.socketPath, "--host", "127.0.0.1", "--port", "\(port)", "--connections", "50"])
        defer { peer.terminate() }
        let ready = peer.waitForLine(containing: "ready", timeout: 30)
        try #require(ready == "ready connections=50", "tcp-peer hold: \(ready ?? "no output")\n\(peer.logTail())")

        var accepted: [Int32] = []
        for _ in 0..<50 {
            let fd = try s.accept(l)
            #expect(sko_fcntl(fd, F_SETFL, O_NONBLOCK) == 0)
            accepted.append(fd)
        }
        let during = try Self.counts(server.pid)
        // Each connection is two sockets in the server (the peer's and ours), two eventfds each.
        #expect(during.descriptors >= baseline.descriptors + 200, "while connected: \(during), before: \(baseline)")
        #expect(during.segmentMappings == baseline.segmentMappings + 1, "while connected: \(during), before: \(baseline)")

        peer.kill(SIGKILL)
        let exit = try #require(peer.wait(timeout: 10), "tcp-peer survived SIGKILL")
        #expect(exit.status == 128 + SIGKILL)

        // Every peer socket sees a reset or EOF, within a bound.
        let told = waitUntil(timeout: 10) {
            accepted.allSatisfy { pollEvents($0, Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) != 0 }
        }
        #expect(told, "not every peer socket became readable within 10 s after the kill")
        var outcomes: [String: Int] = [:]
        for fd in accepted {
            let r = recv(fd, flags: Int32(MSG_DONTWAIT))
            let outcome = r.rc == 0 ? "eof" : r.rc < 0 ? errnoName(r.errno) : "\(r.rc) bytes"
            outcomes[outcome, default: 0] += 1
            #expect(r.rc == 0 || (r.rc == -1 && r.errno == ECONNRESET), "peer socket after the kill: \(outcome)")
        }
        print("peers of the killed client saw: \(outcomes)")
        for fd in accepted { s.close(fd) }

        // The server let go of the dead client's session, segment and sockets (and of ours).
        var after = try Self.counts(server.pid)
        let released = waitUntil(timeout: 10, interval: 0.05) {
            guard let now = try? Self.counts(server.pid) else { return false }
            after = now
            return now.descriptors <= baseline.descriptors && now.segmentDescriptors <= baseline.segmentDescriptors
                && now.segmentMappings == baseline.segmentMappings
        }
        print("socket-server \(server.pid): before \(baseline); with 50 connections \(during); after the kill \(after)")
        #expect(released, "server still holds resources 10 s after the kill: \(after), before: \(baseline)")
    }
}

}

/// A slow reader throttles a fast writer: flow control end to end, through the server, with the
/// server's memory bounded while 64 MiB go through.
@Suite
struct SlowReader {
    @Test func slowReaderThrottlesFastWriter() throws {
        let server = try ServerProcess(tag: "tcp-slow")
        defer { server.stop() }
        let port = TestPorts.next()
        let total = 64 << 20
        let common = ["--socket-path", server.socketPath, "--host", "127.0.0.1", "--port", "\(port)", "--bytes", "\(total)", "--seed", "77"]
        let baseline = try #require(ProcStats.residentBytes(server.pid))

        let sink = try ChildProcess(TestBinaries.path("tcp-peer"), ["sink"] + common + ["--chunk", "65536", "--pause-us", "3000"], name: "tcp-peer-sink")
        defer { sink.terminate() }
        try #require(sink.waitForLine(containing: "listening", timeout: 30) != nil, "sink: \(sink.logTail())")
        let source = try ChildProcess(TestBinaries.path("tcp-peer"), ["source"] + common, name: "tcp-peer-source")
        defer { source.terminate() }

        var peak = baseline
        let deadline = Deadline(seconds: 180)
        while sink.isRunning && !deadline.expired {
            if let rss = ProcStats.residentBytes(server.pid) { peak = max(peak, rss) }
            usleep(20_000)
        }
        let sinkResult = try #require(sink.wait(timeout: 1), "the slow reader did not finish within 180 s")
        let sourceResult = try #require(source.wait(timeout: 30), "the writer did not finish after the reader")
        print("slow reader: \(sinkResult.output); writer: \(sourceResult.output); server RSS \(baseline >> 20) MiB -> peak \(peak >> 20) MiB")
        #expect(sinkResult.status == 0, "sink: \(sinkResult.output)\n\(sink.logTail())")
        #expect(ChildProcess.fields(sinkResult.output)["received"] == "\(total)")
        #expect(ChildProcess.fields(sinkResult.output)["mismatches"] == "0")
        #expect(sourceResult.status == 0, "source: \(sourceResult.output)\n\(source.logTail())")
        #expect(ChildProcess.fields(sourceResult.output)["sent"] == "\(total)")
        #expect(peak - baseline < 200 << 20, "server RSS grew by \((peak - baseline) >> 20) MiB while a slow reader was fed 64 MiB")
    }
}
