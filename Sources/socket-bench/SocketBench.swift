import ArgumentParser
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct SocketBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-bench",
        abstract: "Measure the socket-offload stack side by side with the kernel's sockets.",
        subcommands: [Run.self, WorkerCommand.self, RingPeer.self],
        defaultSubcommand: Run.self
    )
}

/// One measured case: a workload with its parameters, run on both sides.
struct Case {
    let workload: String
    let label: String
    let arguments: [String]
    /// Stack-side datagram transport (UDP cases); nil = the server's default.
    let transport: String?
    /// Metrics shown, with whether larger is better.
    let metrics: [(String, Bool)]
    /// Runs on the kernel too (false: stack-only rows such as the ring).
    let kernel: Bool
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run every workload (default).",
        discussion: """
        Each workload runs over the kernel's sockets on 127.0.0.1 and over the stack (through \
        socket-server), alternating kernel and stack runs, --repetitions times each, every run in a fresh \
        child process. The table shows the median of each side and the ratio stack/kernel (for latencies \
        lower is better; for rates higher is better). Workloads: UDP and TCP ping-pong (half round trip), \
        TCP stream throughput (1 and --connections), UDP message rate with loss, TCP connection rate, \
        fan-out (--clients receive --bytes each from one server, verified), the shared-memory ring between \
        two processes against memcpy, and the UDP workloads through each datagram transport. Starts its own \
        socket-server (found next to this executable) unless --socket-path is given. Build with \
        `swift build -c release` first: debug figures mean little.
        """
    )

    @Flag(help: "Run every workload briefly (a smoke test of the instrument, not a measurement).")
    var quick = false

    @Option(help: "Runs per side and workload.")
    var repetitions: Int?

    @Option(help: ArgumentHelp("Message size for the ping-pong workloads.", valueName: "bytes"))
    var size: Int = 64

    @Option(help: "Connections of the multi-connection stream workload.")
    var connections: Int = 4

    @Option(help: "Clients of the fan-out workload.")
    var clients: Int = 10

    @Option(help: ArgumentHelp("Bytes each fan-out client receives (suffixes K, M, G).", valueName: "size"))
    var bytes: String = "10M"

    @Option(help: ArgumentHelp("Use this running socket-server instead of starting one.", valueName: "path"))
    var socketPath: String?

    @Option(help: ArgumentHelp("Also write the results as JSON to this file.", valueName: "file"))
    var json: String?

    @Option(help: ArgumentHelp("Only these workloads (comma-separated names from the table).", valueName: "names"))
    var only: String?

    func validate() throws {
        guard parseBytes(bytes) != nil else { throw ValidationError("--bytes takes a number with an optional K, M or G") }
        guard (1...65_507).contains(size), connections >= 1, clients >= 1 else { throw ValidationError("--size, --connections, --clients out of range") }
    }

    func cases() -> [Case] {
        let q = quick
        let pings = q ? 2000 : 50_000
        let streamBytes = q ? 8 << 20 : 512 << 20
        let rateCount = q ? 20_000 : 500_000
        let connects = q ? 200 : 5000
        let fanBytes = q ? min(parseBytes(bytes)!, 1 << 20) : parseBytes(bytes)!
        let latency = [("half_rtt_p50_us", false), ("half_rtt_p99_us", false), ("half_rtt_p99.9_us", false)]
        var list: [Case] = [
            Case(workload: "udp-pingpong", label: "UDP ping-pong \(size) B", arguments: ["--count", "\(pings)", "--size", "\(size)"], transport: nil, metrics: latency, kernel: true),
            Case(workload: "tcp-pingpong", label: "TCP ping-pong \(size) B", arguments: ["--count", "\(pings)", "--size", "\(size)"], transport: nil, metrics: latency, kernel: true),
            Case(workload: "tcp-stream", label: "TCP stream, 1 connection", arguments: ["--connections", "1", "--bytes", "\(streamBytes)"], transport: nil, metrics: [("throughput_MBps", true)], kernel: true),
            Case(workload: "tcp-stream", label: "TCP stream, \(connections) connections", arguments: ["--connections", "\(connections)", "--bytes", "\(streamBytes / connections)"], transport: nil, metrics: [("throughput_MBps", true)], kernel: true),
            Case(workload: "udp-rate", label: "UDP message rate 64 B", arguments: ["--count", "\(rateCount)", "--size", "64"], transport: nil, metrics: [("received_per_s", true), ("loss_pct", false)], kernel: true),
            Case(workload: "tcp-connect-rate", label: "TCP connection rate", arguments: ["--count", "\(connects)"], transport: nil, metrics: [("connections_per_s", true)], kernel: true),
            Case(workload: "fan-out", label: "Fan-out \(clients) clients x \(fanBytes >> 20) MiB", arguments: ["--clients", "\(clients)", "--bytes", "\(fanBytes)"], transport: nil, metrics: [("aggregate_MBps", true)], kernel: true),
        ]
        for transport in ["process-vm", "shared-memory"] {
            list.append(Case(workload: "udp-pingpong", label: "UDP ping-pong \(size) B [\(transport)]", arguments: ["--count", "\(pings)", "--size", "\(size)"], transport: transport, metrics: latency, kernel: true))
            list.append(Case(workload: "udp-rate", label: "UDP message rate 64 B [\(transport)]", arguments: ["--count", "\(rateCount)", "--size", "64"], transport: transport, metrics: [("received_per_s", true), ("loss_pct", false)], kernel: true))
        }
        for chunk in [64, 1024, 65536] {
            list.append(Case(workload: "ring", label: "Ring vs memcpy, \(chunk) B", arguments: ["--bytes", "\(q ? 16 << 20 : (chunk == 64 ? 256 << 20 : 2 << 30))", "--size", "\(chunk)"], transport: nil, metrics: [("ring_MBps", true), ("memcpy_MBps", true)], kernel: false))
        }
        if let only {
            let names = Set(only.split(separator: ",").map(String.init))
            list = list.filter { names.contains($0.workload) }
        }
        return list
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let reps = repetitions ?? (quick ? 1 : 5)
        var server: ChildProcess?
        var path = socketPath ?? ""
        if socketPath == nil {
            path = "/tmp/socket-bench-\(getpid()).sock"
            let serverBinary = ChildProcess.executable.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/") + "/socket-server"
            server = ChildProcess(["--socket-path", path, "--log-level", "error"], executable: serverBinary)
            var waited = 0
            while access(path, F_OK) != 0 && waited < 100 { usleep(50_000); waited += 1 }
            guard access(path, F_OK) == 0 else { fatal("socket-server did not start") }
        }
        defer {
            if let server {
                kill(server.pid, SIGTERM)
                _ = server.finish()
            }
        }
        var rows: [(label: String, metric: String, kernel: Double?, stack: Double, higherIsBetter: Bool)] = []
        for c in cases() {
            var kernelRuns: [Figures] = [], stackRuns: [Figures] = []
            for _ in 0..<reps {
                if c.kernel { kernelRuns.append(runWorker(c, api: "kernel", path: path)) }
                stackRuns.append(runWorker(c, api: "stack", path: path))
            }
            for (metric, higher) in c.metrics {
                let k = c.kernel ? median(kernelRuns.compactMap { value($0, metric) }) : nil
                let s = median(stackRuns.compactMap { value($0, metric) })
                rows.append((c.label, metric, k, s, higher))
            }
            if c.workload == "ring" {
                let ring = median(stackRuns.compactMap { value($0, "ring_MBps") })
                let copy = median(stackRuns.compactMap { value($0, "memcpy_MBps") })
                rows.append((c.label, "ring/memcpy", nil, copy > 0 ? ring / copy : 0, true))
            }
            // Progress on stderr so a long run shows life.
            var line = "done: \(c.label)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        print("| workload | metric | kernel | stack | stack/kernel |")
        print("|---|---|---:|---:|---:|")
        for r in rows {
            let k = r.kernel.map { format($0) } ?? "—"
            let ratio = r.kernel.map { $0 > 0 ? format(r.stack / $0) : "—" } ?? "—"
            print("| \(r.label) | \(r.metric) | \(k) | \(format(r.stack)) | \(ratio) |")
        }
        print("\nrepetitions: \(reps) per side (median shown); ratios: for *_us and loss lower is better, for rates higher is better; — where the kernel's figure is 0 (no ratio).")
        if let json {
            var text = "{\n  \"repetitions\": \(reps),\n  \"quick\": \(quick),\n  \"results\": [\n"
            text += rows.map { r in
                "    {\"workload\": \"\(r.label)\", \"metric\": \"\(r.metric)\", \"kernel\": \(r.kernel.map { jsonNumber($0) } ?? "null"), \"stack\": \(jsonNumber(r.stack)), \"ratio\": \(r.kernel.map { $0 > 0 ? jsonNumber(r.stack / $0) : "null" } ?? "null")}"
            }.joined(separator: ",\n")
            text += "\n  ]\n}\n"
            guard let f = fopen(json, "w") else { fatal("cannot write \(json)") }
            fputs(text, f)
            fclose(f)
        }
    }

    func runWorker(_ c: Case, api: String, path: String) -> Figures {
        var args = ["worker", c.workload, "--api", api, "--socket-path", path] + c.arguments
        if let t = c.transport, api == "stack" { args += ["--transport", t] }
        let (status, output) = ChildProcess(args).finish()
        guard status == 0, let line = output.split(separator: "\n").first(where: { $0.hasPrefix("RESULT ") }) else {
            fatal("\(c.label) on \(api) failed (status \(status)): \(output)")
        }
        return fields(String(line)).compactMap { k, v in Double(v).map { (k, $0) } }
    }
}

func value(_ figures: Figures, _ key: String) -> Double? { figures.first { $0.0 == key }?.1 }

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func format(_ x: Double) -> String {
    if x >= 1000 { return String(Int(x.rounded())) }
    if x >= 10 { return String((x * 10).rounded() / 10) }
    return String((x * 100).rounded() / 100)
}

func jsonNumber(_ x: Double) -> String { x.isFinite ? String(x) : "null" }

func parseBytes(_ text: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = text.uppercased().last, let unit = units[last] { return Int(text.dropLast()).map { $0 * unit } }
    return Int(text)
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "Run one workload once (used by run).", shouldDisplay: false)

    @Argument var workload: String
    @Option var api: String = "kernel"
    @Option var socketPath: String?
    @Option var transport: String?
    @Option var count: Int = 10_000
    @Option var size: Int = 64
    @Option var connections: Int = 1
    @Option var clients: Int = 10
    @Option var bytes: Int = 1 << 20

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        alarm(180) // a workload that hangs is killed (SIGALRM) and reported, never waited on forever
        let calls: SocketCalls = api == "stack" ? .stack : .kernel
        if api == "stack" {
            try Socket.configure(serverPath: socketPath, transport: transport.flatMap { DatagramTransport(name: $0) } ?? .auto)
        }
        let figures: Figures
        switch workload {
        case "udp-pingpong": figures = Workloads.udpPingPong(calls, count: count, size: size)
        case "tcp-pingpong": figures = Workloads.tcpPingPong(calls, count: count, size: size)
        case "tcp-stream": figures = Workloads.tcpStream(calls, connections: connections, bytes: bytes)
        case "udp-rate": figures = Workloads.udpRate(calls, count: count, size: size)
        case "tcp-connect-rate": figures = Workloads.tcpConnectRate(calls, count: count)
        case "fan-out": figures = Workloads.fanOut(calls, clients: clients, bytes: bytes)
        case "ring": figures = RingBenchmark.run(total: bytes, chunk: size)
        default: fatal("unknown workload \(workload)")
        }
        print("RESULT " + figures.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
    }
}

struct RingPeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring-peer", abstract: "Consumer side of the ring workload.", shouldDisplay: false)
    @Argument var total: Int
    @Argument var chunk: Int
    func run() throws { RingBenchmark.peer(total: total, chunk: chunk) }
}
