import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 9, "a scribbler test": clients that write over every field of their own segment while they
/// send and receive, one after another with different seeds, while an honest client runs verified
/// TCP and UDP echoes through the same server.
@Suite("Scribbler", .serialized)
struct ScribblerTests {
    static let tcpEchoPort: UInt16 = 7601
    static let udpEchoPort: UInt16 = 7602
    /// Rounds and seconds per scribbler (the first half random values, the second targeted ones).
    static let rounds = 400
    static let seconds = 12

    /// The seeds: $SCRIBBLER_SEED replays one run (its first scribbler gets that seed); otherwise
    /// they come from the clock and are printed.
    static func seeds(_ n: Int) -> [UInt64] {
        let base = getenv("SCRIBBLER_SEED").flatMap { UInt64(String(cString: $0)) } ?? UInt64(wallClockSeconds()) * 1000
        return (0..<n).map { base &+ UInt64($0) }
    }

    static func wallClockSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec)
    }

    @Test("scribblers over their own segments: the server lives, the honest client's bytes are intact, descriptors return")
    func scribblers() throws {
        let server = try Hardening.server()
        defer { server.stop() }
        let tcpEcho = try Hardening.echoServer("tcp-echo-server", server, port: Self.tcpEchoPort)
        defer { tcpEcho.terminate() }
        let udpEcho = try Hardening.echoServer("udp-echo-server", server, port: Self.udpEchoPort)
        defer { udpEcho.terminate() }
        let baseline = Hardening.settledDescriptors(server)
        try #require(baseline > 0, "cannot read /proc/\(server.pid)/fd")

        let runs: [(seed: UInt64, transport: String)] = zip(Self.seeds(4), ["shared-memory", "process-vm", "shared-memory", "process-vm"]).map { ($0, $1) }
        print("Scribbler seeds: \(runs.map { "\($0.seed) (\($0.transport))" }.joined(separator: ", ")); replay with SCRIBBLER_SEED=<seed>")
        for run in runs {
            let what = "scribbler seed \(run.seed) (\(run.transport))"
            let scribbler = try Hardening.scribbler("scribble", server, [
                "--seed", String(run.seed), "--transport", run.transport, "--rounds", String(Self.rounds),
                "--seconds", String(Self.seconds), "--tcp-echo-port", String(Self.tcpEchoPort), "--udp-echo-port", String(Self.udpEchoPort)])
            defer { scribbler.terminate() }

            // The honest client, again and again while the scribbler runs (bounded in runs and time).
            var honest = 0
            let deadline = Deadline(seconds: Double(Self.seconds) + 30)
            while scribbler.isRunning && honest < 40 && !deadline.expired && server.process.isRunning {
                let tcp = try Hardening.tcpEcho(server, port: Self.tcpEchoPort)
                #expect(tcp.ok, "honest TCP echo during \(what): \(tcp)\n\(Hardening.death(server))")
                let udp = try Hardening.udpEcho(server, port: Self.udpEchoPort)
                #expect(udp.ok, "honest UDP echo during \(what): \(udp)\n\(Hardening.death(server))")
                honest += 1
                if !tcp.ok || !udp.ok { break }
            }
            let (status, output) = scribbler.finish(timeout: max(5, deadline.remainingSeconds))
            let done = output.last { $0.hasPrefix("done ") }.map { ChildProcess.fields($0) } ?? [:]
            let sessions = output.filter { $0.hasPrefix("session") }
            print("\(what): \(status.map { "\($0)" } ?? "killed after the timeout"), \(done), honest echo runs: \(honest), \(sessions.count) session lines")
            if case .signaled? = status {
                // The client library trapped on the corruption: where (a client-side finding, not a failure here).
                let frames = scribbler.logTail(maxBytes: 60_000).split(separator: "\n").filter { $0.contains(" at /work") || $0.contains("Fatal error") || $0.contains("runtime failure") }
                print("\(what) died in:\n\(frames.prefix(8).joined(separator: "\n"))")
            }
            #expect(!output.contains { $0.hasPrefix("error") }, "\(what) could not set up: \(scribbler.diagnostics)")
            // The scribbler may die of its own corruption (the library trapping on it) but must not
            // lose its server.
            #expect(!output.contains { $0.hasPrefix("server-gone") }, "\(what) lost the server: \(output)\n\(Hardening.death(server))")
            #expect(server.process.isRunning, "\(what): \(Hardening.death(server))\nlast mutations:\n\(scribbler.logTail(maxBytes: 1500))")
            guard server.process.isRunning else { break }

            // The server still serves the honest client after the scribbler is gone, and holds no
            // descriptor of the scribbler's sessions.
            let tcp = try Hardening.tcpEcho(server, port: Self.tcpEchoPort)
            #expect(tcp.ok, "honest TCP echo after \(what): \(tcp)")
            let udp = try Hardening.udpEcho(server, port: Self.udpEchoPort)
            #expect(udp.ok, "honest UDP echo after \(what): \(udp)")
            let after = Hardening.descriptorsReturn(server, to: baseline)
            #expect(after == baseline, "server descriptors after \(what): \(after), baseline \(baseline)\n\(server.log)")
        }
        #expect(tcpEcho.isRunning && udpEcho.isRunning, "an echo server died: \(tcpEcho.diagnostics)\n\(udpEcho.diagnostics)")
        Hardening.expectAliveAndCleanStop(server, "after the scribblers")
    }
}
