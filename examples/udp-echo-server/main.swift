// udp-echo-server: echoes every datagram back to its sender, through the socket server's stack.
import ArgumentParser
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct UDPEchoServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udp-echo-server",
        abstract: "Echo UDP datagrams through the socket server's userspace stack.",
        discussion: "Prints 'listening on ADDRESS' for each socket once it is bound, then echoes until SIGINT or SIGTERM. Without --address it serves both 0.0.0.0 and ::."
    )

    @Option(help: "UDP port to listen on (0 picks a free port).")
    var port: UInt16 = 7007

    @Option(help: ArgumentHelp("Local address to bind (repeatable).", valueName: "ip"))
    var address: [String] = []

    @Option(help: ArgumentHelp("The socket server's path (default: $SOCKET_SERVER_PATH, ...).", valueName: "path"))
    var socketPath: String?

    @Option(help: ArgumentHelp("Datagram transport to ask for: auto, process-vm or shared-memory.", valueName: "mode"))
    var transport: String = "auto"

    func validate() throws {
        for a in address where SocketAddress(host: a, port: 0) == nil { throw ValidationError("--address \(a) is not an IP address") }
        guard DatagramTransport(name: transport) != nil else { throw ValidationError("--transport must be auto, process-vm or shared-memory") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        try Socket.configure(serverPath: socketPath, transport: DatagramTransport(name: transport)!)
        let addresses = address.isEmpty ? [SocketAddress.ipv4Any(port: port), .ipv6Any(port: port)]
                                        : address.map { SocketAddress(host: $0, port: port)! }
        var sockets: [Socket] = []
        for a in addresses {
            let s = try Socket(a.family, .datagram, nonBlocking: true)
            // IPv6 sockets are dual-stack by default, as on Linux: serving 0.0.0.0 and :: side by
            // side needs the IPv6 one to be IPv6-only (else its bind would take the IPv4 port too).
            if a.family == .inet6 { try s.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, 1) }
            try s.bind(to: a)
            print("listening on \(try s.localAddress)")
            sockets.append(s)
        }
        print("transport \(try Socket.datagramTransport())")
        fflush(nil)
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var pfds = sockets.map { pollfd(fd: $0.fileDescriptor, events: Int16(POLLIN), revents: 0) }
        while true {
            let n = poll(&pfds, nfds_t(pfds.count), -1)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SocketError("poll", .current) }
            for (i, pfd) in pfds.enumerated() where pfd.revents != 0 {
                // Drain: the descriptor may report readable once more after the last datagram.
                while true {
                    let (count, from): (Int, SocketAddress?)
                    do {
                        (count, from) = try buffer.withUnsafeMutableBytes { try sockets[i].receive(into: $0) }
                    } catch let error as SocketError where error.errno.rawValue == EAGAIN {
                        break
                    }
                    guard let from else { continue }
                    try buffer.withUnsafeBytes { try echo(UnsafeRawBufferPointer(rebasing: $0[0..<count]), to: from, on: sockets[i]) }
                }
            }
        }
    }

    /// How long one echo may wait for room in a full send ring before it is dropped.
    static let sendWaitMilliseconds: UInt64 = 1000

    /// Sends one echo. Under a flood the send ring fills and `sendto` says EAGAIN: wait for room
    /// (POLLOUT, at most `sendWaitMilliseconds`), then drop the echo as UDP would, and go on serving.
    /// An echo the stack refuses for this peer (unreachable, ...) is dropped too.
    /// - Throws: only when the socket server is gone (ENETDOWN): nothing more can be served.
    func echo(_ bytes: UnsafeRawBufferPointer, to peer: SocketAddress, on socket: Socket) throws {
        let deadline = monotonicNanoseconds() + Self.sendWaitMilliseconds * 1_000_000
        var roomReported = false
        while true {
            let failure: SocketError
            do {
                try socket.send(bytes, to: peer)
                return
            } catch {
                failure = error
            }
            if failure.errno.rawValue == ENETDOWN { throw failure }
            guard failure.errno.rawValue == EAGAIN else { return }
            // Room for one buffer is not always room for this datagram: then look again shortly.
            if roomReported { usleep(1000) }
            let now = monotonicNanoseconds()
            guard now < deadline else { return }
            var pfd = pollfd(fd: socket.fileDescriptor, events: Int16(POLLOUT), revents: 0)
            roomReported = sko_poll(&pfd, 1, Int32((deadline - now) / 1_000_000) + 1) > 0
        }
    }
}
