import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The tools around the library: the benchmark's smoke run and a C program linking the library.
@Suite("Tools")
struct ToolTests {
    /// `socket-bench --quick` runs every workload once (it starts its own socket-server) and every
    /// row of its table carries numbers: the stack's always, the kernel's except for the ring rows.
    @Test func benchmarkQuickRunProducesEveryField() throws {
        let json = TestNames.uniquePath("bench", suffix: "json")
        defer { unlink(json) }
        let bench = try ChildProcess(TestBinaries.path("socket-bench"), ["--quick", "--json", json], name: "socket-bench")
        let result = try #require(bench.wait(timeout: 600), "socket-bench --quick did not finish in 10 minutes")
        #expect(result.status == 0, "socket-bench failed: \(bench.logTail())")
        let rows = result.output.split(separator: "\n").filter { $0.hasPrefix("| ") && !$0.hasPrefix("| workload") }
        let workloads = ["UDP ping-pong", "TCP ping-pong", "TCP stream, 1 connection", "TCP stream, 4 connections",
                         "UDP message rate", "TCP connection rate", "Fan-out", "[process-vm]", "[shared-memory]", "Ring vs memcpy"]
        for w in workloads { #expect(rows.contains { $0.contains(w) }, "no row for \(w)") }
        for row in rows {
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: " ") }
            try #require(cells.count == 5, "malformed row \(row)")
            // A number, finite and not negative ("nan" and "inf" parse as Doubles: not enough).
            func measured(_ cell: String) -> Bool { Double(cell).map { $0.isFinite && $0 >= 0 } == true }
            #expect(measured(cells[3]), "stack value missing or not a measurement: \(row)")
            if !cells[0].hasPrefix("Ring") {
                #expect(measured(cells[2]), "kernel value missing or not a measurement: \(row)")
                // A ratio to a kernel figure of 0 (no loss on the kernel's side) is undefined: "—".
                let undefined = Double(cells[2]) == 0 && cells[4] == "—"
                #expect(measured(cells[4]) || undefined, "ratio missing or not a measurement: \(row)")
            }
        }
        let text = try #require(ProcStats.readFile(json), "no JSON written")
        #expect(text.contains("\"results\""))
        #expect(!text.contains("\"stack\": null"))
        #expect(!text.lowercased().contains("nan") && !text.contains("inf"), "a non-finite number in the JSON: \(text)")
    }

    /// A C program compiled against include/socket_offload.h and libSocketClientDynamic makes a UDP
    /// and a TCP round trip through a real server.
    @Test func cProgramLinksAndRuns() throws {
        let dir = TestBinaries.directory
        let root = try TestBinaries.packageRoot()
        let program = TestNames.uniquePath("c-client", suffix: "bin")
        defer { unlink(program) }
        let cc = try ChildProcess("cc", ["\(root)/examples/c-client/udp_tcp_hello.c", "-I\(root)/include", "-L\(dir)",
                                                  "-lSocketClientDynamic", "-Wl,-rpath,\(dir)", "-o", program], name: "cc")
        let built = try #require(cc.wait(timeout: 120))
        try #require(built.status == 0, "cc failed: \(cc.logTail())")
        // Against a default server, and against one that busy-polls (--busy-poll) between batches.
        for arguments in [[], ["--busy-poll", "200"]] {
            let server = try ServerProcess(tag: "c-client", arguments: arguments)
            defer { server.stop() }
            let run = try ChildProcess(program, [server.socketPath], name: "c-client")
            let result = try #require(run.wait(timeout: 30), "the C program hung (server \(arguments))")
            #expect(result.status == 0, "C program (server \(arguments)): \(run.logTail())")
            #expect(result.output.contains("udp ok"))
            #expect(result.output.contains("tcp ok"))
        }
    }
}

extension ToolTests {
    /// The server's Internet checksum (CStack/checksum.c, which replaces liblwip's) equals liblwip's
    /// own on 200,000 random buffers, offsets and lengths up to 66,000 bytes.
    @Test func checksumReplacementMatchesLwIP() throws {
        let root = try TestBinaries.packageRoot()
        let program = TestNames.uniquePath("checksum", suffix: "bin")
        defer { unlink(program) }
        let cc = try ChildProcess("cc", ["-O2", "-I\(root)/Sources/CStack/include", "-I/usr/include/lwip",
                                                  "\(root)/Tests/checksum-check/checksum_check.c", "\(root)/Sources/CStack/checksum.c",
                                                  "-Wl,--no-as-needed", "-llwip", "-ldl", "-o", program], name: "cc-checksum")
        let built = try #require(cc.wait(timeout: 120))
        try #require(built.status == 0, "cc failed: \(cc.logTail())")
        let run = try ChildProcess(program, [], name: "checksum-check")
        let result = try #require(run.wait(timeout: 120))
        #expect(result.status == 0 && result.output.contains("all equal"), "\(result.output) \(run.logTail())")
    }
}

private extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
    }
}
