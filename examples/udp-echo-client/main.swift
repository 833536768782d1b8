// udp-echo-client: sends numbered datagrams to an echo server, verifies every echo byte for byte,
// and reports loss, corruption and round-trip percentiles.
import ArgumentParser
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct UDPEchoClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udp-echo-client",
        abstract: "Send datagrams to a UDP echo server through the socket server and verify the echoes.",
        discussion: """
        Each datagram carries its sequence number and a payload derived from it; every echo is checked \
        byte for byte. Prints one line: sent, received, lost, corrupted, and round-trip p50/p99 in \
        microseconds. Exit status: 0 when every datagram came back intact, 1 otherwise.
        """
    )

    @Argument(help: "Server address (numeric IPv4 or IPv6).")
    var host: String

    @Argument(help: "Server port.")
    var port: UInt16

    @Option(help: "Datagrams to send.")
    var count: Int = 1000

    @Option(help: "Bytes per datagram (8 to 65507).")
    var size: Int = 64

    @Option(help: "Datagrams in flight at once.")
    var window: Int = 1

    @Option(help: ArgumentHelp("Milliseconds to wait for an echo before counting it lost.", valueName: "ms"))
    var timeout: Int = 1000

    @Option(help: ArgumentHelp("The socket server's path (default: $SOCKET_SERVER_PATH, ...).", valueName: "path"))
    var socketPath: String?

    @Option(help: ArgumentHelp("Datagram transport to ask for: auto, process-vm or shared-memory.", valueName: "mode"))
    var transport: String = "auto"

    func validate() throws {
        guard SocketAddress(host: host, port: port) != nil else { throw ValidationError("\(host) is not a numeric IP address") }
        guard (8...65_507).contains(size) else { throw ValidationError("--size must be between 8 and 65507") }
        guard count >= 1, window >= 1, timeout >= 1 else { throw ValidationError("--count, --window and --timeout must be positive") }
        guard DatagramTransport(name: transport) != nil else { throw ValidationError("--transport must be auto, process-vm or shared-memory") }
    }

    static func fill(_ buffer: inout [UInt8], sequence: UInt64) {
        withUnsafeBytes(of: sequence.littleEndian) { for i in 0..<8 { buffer[i] = $0[i] } }
        var x = sequence &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in 8..<buffer.count {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            buffer[i] = UInt8(truncatingIfNeeded: x)
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        try Socket.configure(serverPath: socketPath, transport: DatagramTransport(name: transport)!)
        let server = SocketAddress(host: host, port: port)!
        let socket = try Socket(server.family, .datagram)
        try socket.connect(to: server)
        try socket.setTimeouts(receive: timeout, send: timeout)
        var outgoing = [UInt8](repeating: 0, count: size)
        var expected = [UInt8](repeating: 0, count: size)
        var incoming = [UInt8](repeating: 0, count: 65_536)
        var sentAt = [UInt64](repeating: 0, count: count)
        var done = [Bool](repeating: false, count: count)
        var rtts: [UInt64] = []
        rtts.reserveCapacity(count)
        var sent = 0, received = 0, corrupted = 0, duplicates = 0, inFlight = 0
        while sent < count || inFlight > 0 {
            while sent < count && inFlight < window {
                Self.fill(&outgoing, sequence: UInt64(sent))
                sentAt[sent] = monotonicNanoseconds()
                try socket.send(outgoing)
                sent += 1
                inFlight += 1
            }
            let n: Int
            do {
                n = try incoming.withUnsafeMutableBytes { try socket.receive(into: $0).count }
            } catch let error as SocketError where error.errno.rawValue == EAGAIN {
                inFlight = 0 // everything outstanding is lost
                continue
            }
            let now = monotonicNanoseconds()
            guard n >= 8 else { corrupted += 1; continue }
            let sequence = incoming.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            guard sequence < UInt64(sent) else { corrupted += 1; continue }
            if done[Int(sequence)] { duplicates += 1; continue }
            Self.fill(&expected, sequence: sequence)
            if n != size || incoming[..<n].elementsEqual(expected) == false {
                corrupted += 1
            } else {
                received += 1
                rtts.append(now - sentAt[Int(sequence)])
            }
            done[Int(sequence)] = true
            inFlight = max(0, inFlight - 1)
        }
        rtts.sort()
        func percentile(_ p: Double) -> String {
            rtts.isEmpty ? "-" : String(rtts[min(rtts.count - 1, Int(Double(rtts.count) * p))] / 1000)
        }
        let lost = count - received - corrupted
        print("sent=\(sent) received=\(received) lost=\(lost) corrupted=\(corrupted) duplicates=\(duplicates) rtt_p50_us=\(percentile(0.5)) rtt_p99_us=\(percentile(0.99)) transport=\(try Socket.datagramTransport())")
        if lost != 0 || corrupted != 0 { throw ExitCode(1) }
    }
}
