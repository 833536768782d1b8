// tcp-echo-server: echoes every byte back on each connection, serving many clients from one thread
// with poll(2) on the socket descriptors.
import ArgumentParser
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

@main
struct TCPEchoServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcp-echo-server",
        abstract: "Echo TCP streams through the socket server's userspace stack.",
        discussion: """
        Prints 'listening on ADDRESS' once each listener is bound, then serves every connection from \
        one thread with poll(2) until SIGINT or SIGTERM. Without --address it listens on 0.0.0.0 and ::. \
        When a client stops reading its echoes, the server stops reading from that client (backpressure) \
        instead of buffering without bound. A client's half-close (FIN) is echoed after its data.
        """
    )

    @Option(help: "TCP port to listen on (0 picks a free port).")
    var port: UInt16 = 7008

    @Option(help: ArgumentHelp("Local address to listen on (repeatable).", valueName: "ip"))
    var address: [String] = []

    @Option(help: "Listen backlog.")
    var backlog: Int32 = 1024

    @Option(help: ArgumentHelp("The socket server's path (default: $SOCKET_SERVER_PATH, ...).", valueName: "path"))
    var socketPath: String?

    func validate() throws {
        for a in address where SocketAddress(host: a, port: 0) == nil { throw ValidationError("--address \(a) is not an IP address") }
    }

    final class Connection {
        let socket: Socket
        var pending: [UInt8] = []
        var pendingStart = 0
        var peerDone = false
        init(_ socket: Socket) { self.socket = socket }
        var hasPending: Bool { pendingStart < pending.count }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        try Socket.configure(serverPath: socketPath)
        let addresses = address.isEmpty ? [SocketAddress.ipv4Any(port: port), .ipv6Any(port: port)]
                                        : address.map { SocketAddress(host: $0, port: port)! }
        var listeners: [Socket] = []
        for a in addresses {
            let s = try Socket(a.family, .stream, nonBlocking: true)
            // IPv6 sockets are dual-stack by default, as on Linux: serving 0.0.0.0 and :: side by
            // side needs the IPv6 one to be IPv6-only (else its bind would take the IPv4 port too).
            if a.family == .inet6 { try s.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, 1) }
            try s.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, 1)
            try s.bind(to: a)
            try s.listen(backlog: backlog)
            print("listening on \(try s.localAddress)")
            listeners.append(s)
        }
        fflush(nil)
        var connections: [Int32: Connection] = [:]
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            var pfds = listeners.map { pollfd(fd: $0.fileDescriptor, events: Int16(POLLIN), revents: 0) }
            for (fd, c) in connections {
                // Backpressure: while echoes are pending, wait for room to write, not for more input.
                pfds.append(pollfd(fd: fd, events: Int16(c.hasPending ? POLLOUT : POLLIN), revents: 0))
            }
            let n = poll(&pfds, nfds_t(pfds.count), -1)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SocketError("poll", .current) }
            for pfd in pfds where pfd.revents != 0 {
                if let listener = listeners.first(where: { $0.fileDescriptor == pfd.fd }) {
                    while let (s, _) = try? listener.accept(nonBlocking: true) {
                        connections[s.fileDescriptor] = Connection(s)
                    }
                    continue
                }
                guard let c = connections[pfd.fd] else { continue }
                if serve(c, &buffer) == false {
                    c.socket.close()
                    connections.removeValue(forKey: pfd.fd)
                }
            }
        }
    }

    /// Writes what fits; 0 when the send ring is full.
    func tryWrite(_ socket: Socket, _ bytes: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        do {
            return try socket.write(bytes)
        } catch where error.errno.rawValue == EAGAIN {
            return 0
        }
    }

    /// Reads what is there and writes what can be written. Returns false when the connection is done.
    func serve(_ c: Connection, _ buffer: inout [UInt8]) -> Bool {
        do {
            if c.hasPending {
                let n = try c.pending.withUnsafeBytes { try tryWrite(c.socket, UnsafeRawBufferPointer(rebasing: $0[c.pendingStart...])) }
                c.pendingStart += n
                if !c.hasPending { c.pending.removeAll(keepingCapacity: true); c.pendingStart = 0 }
            }
            while !c.hasPending && !c.peerDone {
                let n = try buffer.withUnsafeMutableBytes { try c.socket.read(into: $0) }
                if n == 0 {
                    c.peerDone = true
                    break
                }
                let written = try buffer.withUnsafeBytes { try tryWrite(c.socket, UnsafeRawBufferPointer(rebasing: $0[..<n])) }
                if written < n { c.pending.append(contentsOf: buffer[written..<n]) }
            }
            if c.peerDone && !c.hasPending {
                try? c.socket.shutdown(Int32(SHUT_WR))
                return false
            }
            return true
        } catch let error as SocketError where error.errno.rawValue == EAGAIN {
            return true
        } catch {
            return false
        }
    }
}
