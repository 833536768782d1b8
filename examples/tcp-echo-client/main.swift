// tcp-echo-client: opens C connections to an echo server, sends B bytes on each and verifies the
// echo byte for byte; reports throughput, or round-trip percentiles with --ping-pong.
import ArgumentParser
import CShims
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct TCPEchoClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcp-echo-client",
        abstract: "Stream data to a TCP echo server through the socket server and verify every echoed byte.",
        discussion: """
        All connections run at once from one thread with poll(2). Each sends --bytes of a pattern \
        unique to the connection, keeping at most --window bytes unechoed, and checks the echo byte for \
        byte. With --ping-pong each connection instead sends --message-size bytes and waits for their \
        echo before sending the next, and round-trip percentiles are printed. Prints one line: \
        connections, bytes each way, seconds, throughput (MB/s of echoed payload) and, for ping-pong, \
        rtt_p50_us/rtt_p99_us. Exit status: 0 when every byte came back intact, 1 otherwise.
        """
    )

    @Argument(help: "Server address (numeric IPv4 or IPv6).")
    var host: String

    @Argument(help: "Server port.")
    var port: UInt16

    @Option(help: "Connections at once.")
    var connections: Int = 1

    @Option(help: ArgumentHelp("Bytes each connection sends (suffixes K, M, G).", valueName: "size"))
    var bytes: String = "1M"

    @Option(help: ArgumentHelp("Most unechoed bytes per connection (suffixes K, M).", valueName: "size"))
    var window: String = "64K"

    @Flag(help: "Send one message at a time and measure round trips.")
    var pingPong = false

    @Option(help: ArgumentHelp("Bytes per message with --ping-pong.", valueName: "bytes"))
    var messageSize: Int = 64

    @Option(help: ArgumentHelp("Give up after this many seconds without progress.", valueName: "s"))
    var timeout: Int = 30

    @Option(help: ArgumentHelp("The socket server's path (default: $SOCKET_SERVER_PATH, ...).", valueName: "path"))
    var socketPath: String?

    static func size(_ text: String) -> Int? {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        if let last = text.uppercased().last, let unit = units[last] { return Int(text.dropLast()).map { $0 * unit } }
        return Int(text)
    }

    func validate() throws {
        guard SocketAddress(host: host, port: port) != nil else { throw ValidationError("\(host) is not a numeric IP address") }
        guard let b = Self.size(bytes), b >= 0, let w = Self.size(window), w >= 1 else { throw ValidationError("bad --bytes or --window") }
        guard connections >= 1, messageSize >= 1, timeout >= 1 else { throw ValidationError("--connections, --message-size and --timeout must be positive") }
    }

    final class Flow {
        let socket: Socket
        let seed: UInt64
        var sent = 0
        var received = 0
        var lastSend: UInt64 = 0
        var done = false
        init(_ socket: Socket, seed: UInt64) { self.socket = socket; self.seed = seed }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        try Socket.configure(serverPath: socketPath)
        let server = SocketAddress(host: host, port: port)!
        let total = Self.size(bytes)!
        let limit = pingPong ? messageSize : Self.size(window)!
        var flows: [Flow] = []
        for i in 0..<connections {
            let s = try Socket(server.family, .stream)
            try s.connect(to: server)
            s.isNonBlocking = true
            flows.append(Flow(s, seed: UInt64(i) &* 0x9E37_79B9 &+ 17))
        }
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var rtts: [UInt64] = []
        var mismatches = 0
        let start = monotonicNanoseconds()
        var lastProgress = start
        while flows.contains(where: { !$0.done }) {
            var pfds: [pollfd] = []
            for f in flows where !f.done {
                var events = Int16(0)
                if f.received < f.sent { events |= Int16(POLLIN) }
                if f.sent < total && f.sent - f.received < limit { events |= Int16(POLLOUT) }
                pfds.append(pollfd(fd: f.socket.fileDescriptor, events: events, revents: 0))
            }
            let n = poll(&pfds, nfds_t(pfds.count), 1000)
            if n < 0 && errno == EINTR { continue }
            let now = monotonicNanoseconds()
            if now - lastProgress > UInt64(timeout) * 1_000_000_000 {
                print("error: no progress for \(timeout) s")
                throw ExitCode(1)
            }
            for pfd in pfds where pfd.revents != 0 {
                let f = flows.first { $0.socket.fileDescriptor == pfd.fd }!
                // Send: up to the window (or one message with --ping-pong).
                if f.sent < total && f.sent - f.received < limit {
                    let chunk = min(total - f.sent, limit - (f.sent - f.received), buffer.count)
                    cshims_fill_pattern(&buffer, chunk, f.seed, UInt64(f.sent))
                    do {
                        let w = try buffer.withUnsafeBytes { try f.socket.write(UnsafeRawBufferPointer(rebasing: $0[..<chunk])) }
                        if f.sent == f.received { f.lastSend = now }
                        f.sent += w
                        lastProgress = now
                    } catch let error as SocketError where error.errno.rawValue == EAGAIN {
                    }
                }
                // Receive and verify.
                while f.received < f.sent {
                    let r: Int
                    do {
                        r = try buffer.withUnsafeMutableBytes { try f.socket.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<min($0.count, f.sent - f.received)])) }
                    } catch let error as SocketError where error.errno.rawValue == EAGAIN {
                        break
                    }
                    guard r > 0 else {
                        print("error: connection closed after \(f.received) of \(total) bytes")
                        throw ExitCode(1)
                    }
                    if cshims_check_pattern(buffer, r, f.seed, UInt64(f.received)) != r { mismatches += 1 }
                    f.received += r
                    lastProgress = monotonicNanoseconds()
                    if pingPong && f.received == f.sent { rtts.append(lastProgress - f.lastSend) }
                }
                if f.received == total && f.sent == total {
                    f.done = true
                    f.socket.close()
                }
            }
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        let mb = Double(total * connections) / 1e6
        var line = "connections=\(connections) bytes=\(total) seconds=\(String(format3(seconds))) throughput_MBps=\(format3(mb / seconds)) mismatches=\(mismatches)"
        if pingPong && !rtts.isEmpty {
            rtts.sort()
            line += " rtt_p50_us=\(rtts[rtts.count / 2] / 1000) rtt_p99_us=\(rtts[min(rtts.count - 1, rtts.count * 99 / 100)] / 1000)"
        }
        print(line)
        if mismatches > 0 { throw ExitCode(1) }
    }
}

func format3(_ x: Double) -> String {
    let scaled = (x * 1000).rounded() / 1000
    return "\(scaled)"
}
