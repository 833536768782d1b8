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
        let stable = waitUntil(timeout: 10, interval: 0.1) {
            guard let now = try? Self.counts(server.pid) else { return false }
            stableReads = now == baseline ? stableReads + 1 : 0
            baseline = now
            return stableReads >= 3
        }
        try #require(stable, "the server's counts did not settle within 10 s: \(baseline)")

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
            return now == baseline
        }
        print("socket-server \(server.pid): before \(baseline); with 50 connections \(during); after the kill \(after)")
        #expect(released, "server still holds resources 10 s after the kill: \(after), before: \(baseline)")
    }
}

}

/// A slow reader throttles a fast writer: flow control end to end, through the server. While 64 MiB
/// go through, the writer is held back (when its last write returns, the reader has already taken
/// all but a few MiB) and the server's memory grows by far less than the transfer.
@Suite
struct SlowReader {
    /// What may be between the writer and the reader when the writer's last write returns: the two
    /// 128 KiB rings, lwIP's send buffer and window (64 KiB each), the reader's 64 KiB chunk, and
    /// the 1 MiB steps in which the reader reports progress, with room to spare; a server that
    /// buffered for a slow reader would leave tens of MiB here.
    static let inFlightBound = 8 << 20
    /// Server growth allowed (RSS): well under the 64 MiB transfer.
    static let memoryBound = 16 << 20

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
        var readSoFar = 0
        var readWhenWriterDone: Int?
        func drainSink() {
            while let line = sink.readLine(timeout: 0) {
                if let n = ChildProcess.fields(line)["read"].flatMap({ Int($0) }) { readSoFar = n }
            }
        }
        let deadline = Deadline(seconds: 180)
        while sink.isRunning && !deadline.expired {
            if let rss = ProcStats.residentBytes(server.pid) { peak = max(peak, rss) }
            if readWhenWriterDone == nil, let line = source.readLine(timeout: 0.02), line.hasPrefix("written=") {
                drainSink()
                readWhenWriterDone = readSoFar
            } else {
                drainSink()
            }
        }
        let sinkResult = try #require(sink.wait(timeout: 1), "the slow reader did not finish within 180 s")
        let sourceResult = try #require(source.wait(timeout: 30), "the writer did not finish after the reader")
        // (The loop above read most of the sink's lines: its transcript has them all.)
        let reader = ChildProcess.fields(sink.transcript.joined(separator: "\n"))
        print("slow reader: \(sink.transcript.last ?? ""); writer: \(sourceResult.output); read when the writer was done: \(readWhenWriterDone.map { "\($0 >> 20) MiB" } ?? "-"); server RSS \(baseline >> 20) MiB -> peak \(peak >> 20) MiB")
        #expect(sinkResult.status == 0, "sink: \(sinkResult.output)\n\(sink.logTail())")
        #expect(reader["received"] == "\(total)", "sink: \(sink.transcript.suffix(3))")
        #expect(reader["mismatches"] == "0", "sink: \(sink.transcript.suffix(3))")
        #expect(sourceResult.status == 0, "source: \(sourceResult.output)\n\(source.logTail())")
        #expect(ChildProcess.fields(sourceResult.output)["end"] == "0", "the writer did not see the reader's FIN: \(sourceResult.output)")
        let read = try #require(readWhenWriterDone, "the writer never reported its last write")
        #expect(total - read <= Self.inFlightBound,
                "when the writer's last write returned the reader had taken \(read) of \(total) bytes: \((total - read) >> 20) MiB were buffered for it")
        #expect(peak - baseline < Self.memoryBound, "server RSS grew by \((peak - baseline) >> 20) MiB while a slow reader was fed 64 MiB")
    }
}
