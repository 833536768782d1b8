// net-peer: the stack-side end of the network tests' bulk transfers, through SocketClient.
//
//   net-peer tcp-sink SERVER_PATH ADDRESS PORT OUTPUT_FILE
//       listens on ADDRESS:PORT, prints "listening on ADDRESS", accepts one connection, writes
//       every byte it receives to OUTPUT_FILE until end of stream, closes, prints "bytes=N".
//   net-peer tcp-source SERVER_PATH HOST PORT INPUT_FILE
//       connects to HOST:PORT, sends INPUT_FILE, shuts down its sending side, waits for the peer's
//       end of stream (so every byte is known to have been delivered), prints "bytes=N".
//   net-peer udp-send SERVER_PATH HOST PORT TTL:TOS[:echo]
//       sends one 100-byte datagram to HOST:PORT from a socket with IP_TTL TTL and IP_TOS TOS (for
//       an IPv6 HOST: IPV6_UNICAST_HOPS TTL, TOS ignored), prints "sent=N"; with ":echo" waits up
//       to 5 s for the datagram to come back and prints "sent=N echoed=M" (M: -1 for none).
//   net-peer udp-refused SERVER_PATH HOST PORT connected|unconnected
//       sends one datagram to HOST:PORT (where nothing listens) from a socket connected there, or
//       with sendto, then prints what a recv waiting up to 2 s says: "recv=N" or "recv=errno:E".
//
// The tests hash both files with sha256sum; the kernel-side peer hashes what it sends or receives.
// Exit status 0 on success; 2 with an "error: ..." line otherwise.
import SocketClient
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    print("error: \(message)")
    fflush(nil)
    exit(2)
}

func openFile(_ path: String, _ flags: Int32) -> Int32 {
    let fd = open(path, flags | O_CLOEXEC, 0o644)
    if fd < 0 { fail("open \(path): \(Errno.current)") }
    return fd
}

func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { fail("write: \(Errno.current)") }
        done += n
    }
}

let args = Array(CommandLine.arguments.dropFirst())
guard args.count == 5, let port = UInt16(args[3]) else {
    fail("usage: net-peer tcp-sink|tcp-source|udp-send|udp-refused SERVER_PATH ADDRESS PORT FILE|TTL:TOS|connected")
}
signal(SIGPIPE, SIG_IGN)
let (mode, serverPath, host, path) = (args[0], args[1], args[2], args[4])
guard let address = SocketAddress(host: host, port: port) else { fail("\(host) is not a numeric IP address") }
var buffer = [UInt8](repeating: 0, count: 256 << 10)

do {
    try Socket.configure(serverPath: serverPath)
    switch mode {
    case "tcp-sink":
        let listener = try Socket(address.family, .stream)
        try listener.setOption(level: SOL_SOCKET, name: SO_REUSEADDR, 1)
        try listener.bind(to: address)
        try listener.listen(backlog: 1)
        print("listening on \(try listener.localAddress)")
        fflush(nil)
        let (connection, _) = try listener.accept()
        listener.close()
        let out = openFile(path, O_WRONLY | O_CREAT | O_TRUNC)
        var total = 0
        while true {
            let n = try buffer.withUnsafeMutableBytes { try connection.read(into: $0) }
            if n == 0 { break }
            buffer.withUnsafeBytes { writeAll(out, UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            total += n
        }
        close(out)
        connection.close()
        print("bytes=\(total)")
    case "tcp-source":
        let input = openFile(path, O_RDONLY)
        let connection = try Socket(address.family, .stream)
        try connection.connect(to: address)
        var total = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { fail("read \(path): \(Errno.current)") }
            if n == 0 { break }
            var sent = 0
            while sent < n {
                sent += try buffer.withUnsafeBytes { try connection.write(UnsafeRawBufferPointer(rebasing: $0[sent..<n])) }
            }
            total += n
        }
        close(input)
        try connection.shutdown(Int32(SHUT_WR))
        // The peer closes once it has read everything: its end of stream confirms delivery.
        var extra = 0
        while true {
            let n = try buffer.withUnsafeMutableBytes { try connection.read(into: $0) }
            if n == 0 { break }
            extra += n
        }
        connection.close()
        if extra != 0 { fail("the receiver sent \(extra) unexpected bytes") }
        print("bytes=\(total)")
    case "udp-send":
        let fields = path.split(separator: ":")
        let values = fields.prefix(2).compactMap { Int32($0) }
        guard values.count == 2 else { fail("udp-send wants TTL:TOS[:echo]") }
        let s = try Socket(address.family, .datagram)
        if address.family == .inet6 {
            try s.setOption(level: Int32(IPPROTO_IPV6), name: IPV6_UNICAST_HOPS, values[0])
        } else {
            try s.setOption(level: Int32(IPPROTO_IP), name: IP_TTL, values[0])
            try s.setOption(level: Int32(IPPROTO_IP), name: IP_TOS, values[1])
        }
        let sent = try s.send([UInt8](repeating: 0x55, count: 100), to: address)
        if fields.count == 3 && fields[2] == "echo" {
            try s.setTimeouts(receive: 5000, send: nil)
            let echoed = (try? s.receive(maxBytes: 2048).bytes.count) ?? -1
            print("sent=\(sent) echoed=\(echoed)")
        } else {
            print("sent=\(sent)")
        }
    case "udp-refused":
        let s = try Socket(address.family, .datagram)
        try s.setTimeouts(receive: 2000, send: nil)
        if path == "connected" {
            try s.connect(to: address)
            _ = try s.send([1, 2, 3])
        } else {
            _ = try s.send([1, 2, 3], to: address)
        }
        do {
            print("recv=\(try s.receive(maxBytes: 16).bytes.count)")
        } catch {
            print("recv=errno:\(error.errno.rawValue)")
        }
    default:
        fail("unknown mode \(mode)")
    }
} catch {
    fail("\(error)")
}
fflush(nil)
