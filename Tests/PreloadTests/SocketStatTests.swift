import Foundation
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// socket-stat against a server whose sockets are in known states (Tests/preload-programs/
/// stat_states.py under the library): each report, as JSON, says what the program made.
@Suite struct SocketStatTests {
    static var tool: String { TestBinaries.path("socket-stat") }

    static func report(_ o: Offload, _ arguments: [String]) throws -> [String: Any] {
        let run = try ChildProcess.run(tool, arguments + ["--json", "--socket-path", o.server.socketPath], name: "socket-stat", timeout: 30)
        try #require(run.succeeded, "socket-stat \(arguments): \(run)")
        let object = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any]
        return try #require(object, "not a JSON object: \(run.output)")
    }

    @Test("socket-stat reports each socket's state, queues, addresses and pid, the clients, the interfaces, and counters that moved by what was sent and dropped")
    func knownStates() throws {
        let o = try Offload("stat", serverArguments: ["--datagram-ring-items", "64"])
        defer { o.finish() }
        let before = try Self.report(o, ["counters"])
        let port = Int(TestPorts.next())
        for k in 1...4 { _ = k; _ = TestPorts.next() } // PORT+1 ... PORT+4 are the program's too
        let script = try TestBinaries.packageRoot() + "/Tests/preload-programs/stat_states.py"
        let program = try o.start([Offload.python, script, "\(port)"], name: "stat-states", input: .pipe,
                                  stdout: .file(o.directory.file("stat-states.out")))
        defer { program.closeInput() }
        try #require(program.waitForOutput("ready", timeout: 20), "the program did not get ready: \(Offload.describe(program))")

        let sockets = try Self.report(o, ["sockets", "-a"])["sockets"] as? [[String: Any]] ?? []
        func socket(_ local: Int, peer: Bool? = nil, state: String? = nil) -> [String: Any]? {
            sockets.first { s in
                (s["local"] as? String) == "127.0.0.1:\(local)" && (peer == nil || (s["peer"] != nil && !(s["peer"] is NSNull)) == peer!)
                    && (state == nil || (s["state"] as? String) == state)
            }
        }
        func int(_ s: [String: Any]?, _ key: String) -> Int? { s?[key] as? Int }
        let listener = socket(port, peer: false)
        #expect(listener?["state"] as? String == "LISTEN", "listener: \(String(describing: listener))")
        #expect(int(listener, "recv_q") == 2 && int(listener, "send_q") == 4, "listener with 2 unaccepted connections, backlog 4: \(String(describing: listener))")
        #expect(int(listener, "pid") == Int(program.pid), "the owner's pid: \(String(describing: listener))")
        let unread = socket(port + 1, peer: true, state: "ESTAB")
        #expect(int(unread, "recv_q") == 1000, "1,000 bytes unread: \(String(describing: unread))")
        #expect((unread?["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)
        let closeWait = socket(port + 2, peer: true)
        #expect(closeWait?["state"] as? String == "CLOSE-WAIT", "the end whose peer shut down writing: \(String(describing: closeWait))")
        let finWait = sockets.first { ($0["peer"] as? String) == "127.0.0.1:\(port + 2)" }
        #expect(finWait?["state"] as? String == "FIN-WAIT-2", "the end that shut down writing: \(String(describing: finWait))")
        let udp = socket(port + 3)
        #expect(udp?["protocol"] as? String == "udp" && udp?["state"] as? String == "UNCONN" && int(udp, "recv_q") == 3,
                "3 datagrams queued: \(String(describing: udp))")
        let flooded = socket(port + 4)
        let queued = int(flooded, "recv_q") ?? -1
        #expect(queued > 0 && queued < 100, "a full ring: \(String(describing: flooded))")
        #expect(int(flooded, "receive_drops") == 100 - queued, "drops = sent - queued: \(String(describing: flooded))")
        let listed = try Self.report(o, ["sockets"])["sockets"] as? [[String: Any]] ?? []
        #expect(listed.count == sockets.count, "the report lists every socket (the filters are the tool's)")

        // Counters: exactly what the program sent (103 datagrams out and in on the loopback; drops
        // as the socket counted them) and 4 connections (one SYN each way per connection).
        let after = try Self.report(o, ["counters"])
        func counter(_ r: [String: Any], _ proto: String, _ key: String) -> Int {
            ((r["protocols"] as? [String: Any])?[proto] as? [String: Any])?[key] as? Int ?? -1
        }
        #expect(counter(after, "udp", "out") - counter(before, "udp", "out") == 103)
        #expect(counter(after, "udp", "in") - counter(before, "udp", "in") == 103)
        #expect(counter(after, "udp", "receive_ring_full_drops") - counter(before, "udp", "receive_ring_full_drops") == 100 - queued)
        #expect(counter(after, "tcp", "syn_out") - counter(before, "tcp", "syn_out") == 4)
        #expect(counter(after, "tcp", "syn_in") - counter(before, "tcp", "syn_in") == 4)
        #expect(counter(after, "tcp", "fin_out") - counter(before, "tcp", "fin_out") == 1, "one FIN: the half close")
        let lo = (after["interfaces"] as? [[String: Any]])?.first { $0["name"] as? String == "lo0" }
        // (A packet looped by a timer may be between its two counts at the moment of the report.)
        let (rx, tx) = (lo?["rx_packets"] as? Int ?? 0, lo?["tx_packets"] as? Int ?? 0)
        #expect(rx > 100 && abs(rx - tx) <= 2, "the loopback interface takes in what it sends: \(String(describing: lo))")

        let clients = try Self.report(o, ["clients"])["clients"] as? [[String: Any]] ?? []
        let me = clients.first { $0["pid"] as? Int == Int(program.pid) }
        #expect((me?["command_line"] as? String)?.contains("stat_states.py") == true, "clients: \(clients)")
        #expect(me?["sockets"] as? Int == sockets.count, "the program holds every socket: \(String(describing: me))")
        #expect(!clients.contains { ($0["command"] as? String) == "socket-stat" }, "socket-stat's own query is no client")

        let interfaces = try Self.report(o, ["interfaces"])["interfaces"] as? [[String: Any]] ?? []
        let addresses = interfaces.first { $0["name"] as? String == "lo0" }?["addresses"] as? [String] ?? []
        #expect(addresses.contains("127.0.0.1/8") && addresses.contains("::1"), "interfaces: \(interfaces)")

        // The table form says the same in ss's words.
        let table = try ChildProcess.run(Self.tool, ["-a", "-p", "--socket-path", o.server.socketPath], name: "socket-stat-table", timeout: 30)
        #expect(table.succeeded && table.output.contains("CLOSE-WAIT") && table.output.contains("FIN-WAIT-2")
                && table.output.contains("pid=\(program.pid)"), "\(table)")
    }

    @Test("socket-stat: no server is one line and exit 1; a user other than the server's gets EACCES")
    func refusals() throws {
        let missing = TestNames.uniquePath("stat-missing", suffix: "sock")
        let none = try ChildProcess.run(Self.tool, ["--socket-path", missing], name: "socket-stat-none", timeout: 30)
        #expect(none.status == .exited(1) && none.errorOutput.contains("no socket server at \(missing)"), "\(none)")
        // A malformed admin request (an unknown report) is answered EBADMSG; the same connection's
        // next request and the server are as before.
        let o1 = try Offload("stat-malformed")
        defer { o1.finish() }
        let script = """
            import socket, struct, sys
            def message(kind, body, rid):
                return struct.pack("<IHHII", 0x544B4353, 2, kind, len(body), rid) + body
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(sys.argv[1])
            s.send(message(18, bytes([99]), 7))            # admin, report 99: no such report
            reply = s.recv(600)
            kind, = struct.unpack_from("<H", reply, 6)
            err, = struct.unpack_from("<i", reply, 16)
            print("malformed:", hex(kind), err)
            s.send(message(18, bytes([1]), 8))             # admin, report sockets
            msg, fds, flags, addr = socket.recv_fds(s, 600, 1)
            kind, = struct.unpack_from("<H", msg, 6)
            print("then:", hex(kind), len(fds))
            """
        let raw = try ChildProcess.run(Offload.python, ["-c", script, o1.server.socketPath], name: "raw-admin", timeout: 30)
        #expect(raw.succeeded && raw.output.contains("malformed: 0x8001 \(EBADMSG)") && raw.output.contains("then: 0x8009 1"), "\(raw)")
        let after = try ChildProcess.run(Self.tool, ["--socket-path", o1.server.socketPath, "--json"], name: "socket-stat-after", timeout: 30)
        #expect(after.succeeded && after.output.contains("\"sockets\":[]"), "\(after)")

        guard getuid() == 0 else { return } // (running as another user needs root)
        let o = try Offload("stat-other", serverArguments: ["--allow-uid", "any"])
        defer { o.finish() }
        let other = try ChildProcess.run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Self.tool, "clients",
                                                     "--socket-path", o.server.socketPath], name: "socket-stat-nobody", timeout: 30)
        #expect(other.status == .exited(1) && other.errorOutput.contains("EACCES"), "\(other)")
    }

    /// The flows of a pcapng file as tcpdump reads it.
    static func summary(_ file: String, filter: [String] = []) throws -> (CaptureSummary, lines: Int) {
        let run = try ChildProcess.run("tcpdump", ["-n", "-S", "-tt", "-r", file] + filter, name: "tcpdump", timeout: 60)
        try #require(run.succeeded, "tcpdump -r \(file): \(run)")
        return (CaptureSummary(tcpdump: run.output), run.output.split(separator: "\n").count)
    }

    @Test("socket-stat capture: a live capture with a tcpdump filter holds only matching packets and every payload byte sent on that port; -c and a pipe into tcpdump; the flight recorder holds a transfer that ended before anyone asked")
    func captures() throws {
        let o = try Offload("stat-capture", serverArguments: ["--flight-recorder", "16M"])
        defer { o.finish() }
        let (port, other, udpPort) = (TestPorts.next(), TestPorts.next(), TestPorts.next())
        let file = o.directory.file("live.pcapng")
        let live = try ChildProcess(Self.tool, ["capture", "--socket-path", o.server.socketPath, "-w", file, "tcp", "port", "\(port)"], name: "capture-live")
        defer { live.terminate() }
        try #require(waitUntil(timeout: 10) { o.server.log.contains("live capture started") }, "no capture started: \(o.server.log)")

        // Three transfers at once: the filtered port, another TCP port, UDP.
        func transfer(_ p: UInt16, bytes: Int) throws -> (listener: ChildProcess, client: ChildProcess, source: String, received: String) {
            let source = try o.randomFile("source-\(p)", bytes: bytes)
            let received = o.directory.file("received-\(p)")
            let listener = try o.start(["nc", "-v", "-n", "-l", "127.0.0.1", "\(p)"], name: "nc-listen-\(p)", stdout: .file(received))
            try o.awaitReady(listener, "Listening on")
            let client = try o.start(["nc", "-n", "-N", "127.0.0.1", "\(p)"], name: "nc-\(p)", input: .file(source), stdout: .null)
            return (listener, client, source, received)
        }
        let watched = try transfer(port, bytes: 200 << 10)
        let unwatched = try transfer(other, bytes: 100 << 10)
        let udpListener = try o.start(["nc", "-u", "-v", "-n", "-l", "127.0.0.1", "\(udpPort)"], name: "nc-udp", stdout: .null)
        try o.awaitReady(udpListener, "Bound on")
        let piped = try ChildProcess("/bin/sh", ["-c", "\"$0\" capture --socket-path \"$1\" -c 5 -w - udp port \"$2\" | tcpdump -n -r -",
                                                 Self.tool, o.server.socketPath, "\(udpPort)"], name: "capture-pipe")
        defer { piped.terminate() }
        try #require(waitUntil(timeout: 10) { o.server.log.components(separatedBy: "live capture started").count == 3 }, "the piped capture did not start")
        let sender = try o.start(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo datagram-$i; sleep 0.05; done | nc -u -n -q 1 127.0.0.1 \(udpPort)"],
                                 name: "nc-udp-send", stdout: .null)
        for t in [watched, unwatched] {
            if let problem = o.waitForExit([t.client, t.listener], growing: [t.received], expectedBytes: Self.size(t.source)) {
                Issue.record(Comment(rawValue: problem))
                return
            }
            try Offload.expectSameBytes(t.source, t.received, "transfer")
        }
        _ = sender.finish(timeout: 20)
        let pipedResult = piped.finish(timeout: 20)
        #expect(pipedResult.status == .exited(0), "capture -c 5 | tcpdump: \(Offload.describe(piped))")
        let udpLines = pipedResult.output.filter { $0.contains("UDP") }
        #expect(udpLines.count == 5 && udpLines.allSatisfy { $0.contains(".\(udpPort):") }, "5 UDP packets to port \(udpPort): \(pipedResult.output)")

        usleep(300_000) // (the last ACKs)
        live.terminate()
        let (all, lines) = try Self.summary(file)
        #expect(lines > 0 && all.unparsed.isEmpty, "live capture: \(lines) packets, unparsed \(all.unparsed)")
        let (_, stray) = try Self.summary(file, filter: ["not", "tcp", "port", "\(port)"])
        #expect(stray == 0, "\(stray) packets in the capture do not match its filter")
        let sent = all.tcp.first { $0.key.destinationPort == Int(port) }?.value
        #expect(sent?.coverage == [0..<(200 << 10)], "every byte sent to port \(port): \(String(describing: sent?.coverage))")
        #expect(all.tcp.keys.allSatisfy { $0.sourcePort == Int(port) || $0.destinationPort == Int(port) })

        // The flight recorder: the other port's transfer, over before this request.
        let recorded = o.directory.file("recorded.pcapng")
        let dump = try ChildProcess.run(Self.tool, ["capture", "--recorded", "--socket-path", o.server.socketPath, "-w", recorded,
                                                    "--filter", "tcp port \(other)"], name: "capture-recorded", timeout: 30)
        try #require(dump.succeeded, "\(dump)")
        let (history, _) = try Self.summary(recorded)
        let earlier = history.tcp.first { $0.key.destinationPort == Int(other) }?.value
        #expect(earlier?.coverage == [0..<(100 << 10)] && earlier?.finOffset == 100 << 10,
                "the recorder holds the whole earlier transfer: \(String(describing: earlier?.coverage)) FIN \(String(describing: earlier?.finOffset))")
        #expect(history.tcp.keys.allSatisfy { $0.sourcePort == Int(other) || $0.destinationPort == Int(other) })

        // Errors in words: libpcap's for a bad filter, an unknown interface.
        let bad = try ChildProcess.run(Self.tool, ["capture", "--socket-path", o.server.socketPath, "-w", o.directory.file("bad"), "tcp", "port"],
                                       name: "capture-bad", timeout: 30)
        #expect(bad.status == .exited(1) && bad.errorOutput.contains("syntax error"), "\(bad)")
        let noInterface = try ChildProcess.run(Self.tool, ["capture", "--socket-path", o.server.socketPath, "--interface", "nosuch0",
                                                           "-w", o.directory.file("none")], name: "capture-nointerface", timeout: 30)
        #expect(noInterface.status == .exited(1) && noInterface.errorOutput.contains("no interface nosuch0"), "\(noInterface)")
    }

    static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : -1
    }

    /// Prometheus text parsed by Python's prometheus_client (Debian's python3-prometheus-client):
    /// every sample as "name{labels} value" lines, sorted.
    static func parsePrometheus(_ text: String, _ o: Offload) throws -> [String] {
        let input = o.directory.file("metrics-\(UInt64.random(in: 0...UInt64.max)).txt")
        try TestFiles.write(input, text)
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in family.samples:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                    print(f"{s.name}{{{labels}}} {s.value}")
            """
        let run = try ChildProcess.run(Offload.python, ["-c", script, input], name: "prometheus-parse", timeout: 30)
        try #require(run.succeeded, "prometheus_client did not parse it: \(run)\n\(text.prefix(2000))")
        return run.output.split(separator: "\n").map(String.init).sorted()
    }

    @Test("Metrics: socket-stat metrics and GET /metrics on --metrics-listen are Prometheus text (prometheus_client parses them), with the counters and a client's gauges; other paths get 404")
    func metrics() throws {
        let port = TestPorts.next()
        let o = try Offload("stat-metrics", serverArguments: ["--metrics-listen", "127.0.0.1:\(port)"])
        defer { o.finish() }
        let dataPort = TestPorts.next()
        let listener = try o.start(["nc", "-v", "-n", "-l", "127.0.0.1", "\(dataPort)"], name: "nc-listen", input: .pipe, stdout: .null)
        defer { listener.closeInput() }
        try o.awaitReady(listener, "Listening on")
        let sender = try o.start(["nc", "-n", "127.0.0.1", "\(dataPort)"], name: "nc-hold", input: .pipe, stdout: .null)
        defer { sender.closeInput() }
        sender.writeLine("hello")
        try #require(waitUntil(timeout: 10) { o.server.log.contains("client=\(sender.pid) ") }, "no session of the client")

        let http = try ChildProcess.run("curl", ["-s", "-f", "http://127.0.0.1:\(port)/metrics"], name: "curl-metrics", timeout: 30)
        try #require(http.succeeded, "\(http)")
        let samples = try Self.parsePrometheus(http.output, o)
        #expect(samples.contains { $0.hasPrefix("socket_server_packets_total{direction=\"out\",protocol=\"tcp\"}") && !$0.hasSuffix(" 0.0") },
                "TCP packets counted: \(samples)")
        #expect(samples.contains { $0.hasPrefix("socket_server_client_sockets{command=\"nc\",pid=\"\(sender.pid)\"} 1.0") }, "the client's socket gauge: \(samples)")
        #expect(samples.contains { $0.hasPrefix("socket_server_sockets{protocol=\"tcp\",state=\"LISTEN\"} 1.0") }, "the listener: \(samples)")

        let stat = try ChildProcess.run(Self.tool, ["metrics", "--socket-path", o.server.socketPath], name: "socket-stat-metrics", timeout: 30)
        try #require(stat.succeeded, "\(stat)")
        let names = Set(try Self.parsePrometheus(stat.output, o).map { $0.prefix { $0 != "{" } })
        #expect(names == Set(samples.map { $0.prefix { $0 != "{" } }), "socket-stat metrics has the same metrics as GET /metrics")

        // The values are the counters': compared at a moment when nothing moved (a delayed ACK may
        // still be on its way, so between two equal readings of the counters).
        func counterValues() throws -> [String] {
            let counters = try Self.report(o, ["counters"])
            return [("tcp", "in"), ("tcp", "out"), ("ip", "in"), ("ip", "out")].map { proto, direction in
                let value = ((counters["protocols"] as? [String: Any])?[proto] as? [String: Any])?[direction] as? Int ?? -1
                return "socket_server_packets_total{direction=\"\(direction)\",protocol=\"\(proto)\"} \(value).0"
            }
        }
        var matched = false
        for _ in 0..<20 where !matched {
            let before = try counterValues()
            let scrape = try ChildProcess.run("curl", ["-s", "-f", "http://127.0.0.1:\(port)/metrics"], name: "curl-metrics", timeout: 30)
            let now = try Self.parsePrometheus(scrape.output, o)
            if try counterValues() == before {
                #expect(before.allSatisfy { now.contains($0) }, "the metrics' packet counts are the counters' \(before): \(now.filter { $0.hasPrefix("socket_server_packets_total") })")
                matched = true
            } else {
                usleep(200_000)
            }
        }
        #expect(matched, "the counters never stood still for a scrape")

        let missing = try ChildProcess.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"], name: "curl-404", timeout: 30)
        #expect(missing.output == "404", "\(missing)")
    }
}
