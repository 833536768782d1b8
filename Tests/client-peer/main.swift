// client-peer: a second SocketClient process for the SocketClientTests failure tests: one the test
// can SIGKILL while it holds sockets, leave blocked in recvfrom while the server dies, or run as
// another user. Each mode prints what the test checks, one "key=value ..." line at a time, and
// exits 0 when it ran to the end (a failure to even get there is exit status 2 with "error: ...").
//
// Usage: client-peer MODE --socket-path PATH [--transport auto|process-vm|shared-memory] [--uid UID] [ARGS]
//   hold-sockets N     open and bind N UDP sockets to 127.0.0.1:0, print "ready", then sleep until killed
//   blocked-recv PORT  bind 127.0.0.1:PORT, print "ready", block in recvfrom; when it returns print
//                      "recv=RESULT errno=N"; then, on the same descriptor, "again=RESULT errno=N"
//                      (recvfrom MSG_DONTWAIT), "send=RESULT errno=N" (sendto) and "fionread=RESULT
//                      errno=N"; then try sko_socket and print "socket=FD errno=N"; then wait for a
//                      line on stdin and, if it is "reconnect", make a round trip on PORT (below) and
//                      print its line
//   blocked-send PORT  a TCP connection to itself (127.0.0.1:PORT) whose send side is filled until
//                      EAGAIN; print "ready", wait in the application's own poll(2) for POLLOUT (no
//                      timeout); print "poll=REVENTS" when it returns, then "send=RESULT errno=N"
//   polled-recv PORT   like blocked-recv, but first waits in the application's own poll(2) on the
//                      descriptor (no timeout); prints "poll=REVENTS" when poll returns, then recv
//   round-trip PORT    socket (printing "socket-errno=N" and exiting 0 if that fails), bind
//                      127.0.0.1:PORT, send a datagram to itself, receive it, print
//                      "round-trip=ok transport=T" (or "round-trip=failed ...")
//   --uid UID          drop to that uid (and gid) first; needs root
import CShims
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

func say(_ line: String) {
    print(line)
    fflush(nil)
}

var args = Array(CommandLine.arguments.dropFirst())
guard !args.isEmpty else { fail("usage: client-peer MODE --socket-path PATH [--transport T] [--uid UID] [ARGS]") }
let mode = args.removeFirst()

@MainActor func option(_ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    let value = args[i + 1]
    args.removeSubrange(i...(i + 1))
    return value
}

guard let socketPath = option("--socket-path") else { fail("--socket-path is required") }
let transportName = option("--transport") ?? "auto"
guard let transport = DatagramTransport(name: transportName) else { fail("bad --transport \(transportName)") }
if let uidText = option("--uid") {
    guard let uid = UInt32(uidText) else { fail("bad --uid \(uidText)") }
    guard setgroups(0, nil) == 0, setgid(uid) == 0, setuid(uid) == 0 else { fail("cannot become uid \(uid): \(Errno.current)") }
}

// A dead server must show up as an errno, never as SIGPIPE: do NOT ignore SIGPIPE here (the library
// must not need the application's help; the test checks we exit normally).
do {
    try Socket.configure(serverPath: socketPath, transport: transport)
} catch {
    fail("configure: \(error)")
}

func loopback(_ port: UInt16) -> sockaddr_in {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return a
}

func bind(_ fd: Int32, _ port: UInt16) -> Int32 {
    var a = loopback(port)
    return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
}

/// A datagram to itself on 127.0.0.1:PORT and back: "round-trip=ok transport=T", "round-trip=failed
/// ..." or, when even sko_socket fails, "socket-errno=N".
func roundTrip(_ port: UInt16) -> String {
    let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { return "socket-errno=\(errno)" }
    defer { _ = sko_close(fd) }
    guard bind(fd, port) == 0 else { return "round-trip=failed bind errno=\(errno)" }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    guard sko_setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
        return "round-trip=failed SO_RCVTIMEO errno=\(errno)"
    }
    let message = Array("round trip from pid \(getpid())".utf8)
    var to = loopback(port)
    let sent = withUnsafePointer(to: &to) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_sendto(fd, message, message.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard sent == message.count else { return "round-trip=failed send=\(sent) errno=\(errno)" }
    var buffer = [UInt8](repeating: 0, count: 2048)
    let n = sko_recv(fd, &buffer, buffer.count, 0)
    guard n == message.count, Array(buffer[..<n]) == message else { return "round-trip=failed recv=\(n) errno=\(n < 0 ? errno : 0)" }
    let t = (try? Socket.datagramTransport()).map { "\($0)" } ?? "?"
    return "round-trip=ok transport=\(t)"
}

switch mode {
case "hold-sockets":
    guard let n = args.first.flatMap({ Int($0) }) else { fail("hold-sockets N") }
    var fds: [Int32] = []
    for i in 0..<n {
        let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { fail("socket \(i): \(Errno.current)") }
        guard bind(fd, 0) == 0 else { fail("bind \(i): \(Errno.current)") }
        fds.append(fd)
    }
    say("ready sockets=\(fds.count)")
    while true { pause() }

case "blocked-recv":
    guard let port = args.first.flatMap({ UInt16($0) }) else { fail("blocked-recv PORT") }
    let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { fail("socket: \(Errno.current)") }
    guard bind(fd, port) == 0 else { fail("bind: \(Errno.current)") }
    say("ready")
    var buffer = [UInt8](repeating: 0, count: 2048)
    let n = sko_recvfrom(fd, &buffer, buffer.count, 0, nil, nil)
    say("recv=\(n) errno=\(n < 0 ? errno : 0)")
    let again = sko_recvfrom(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT), nil, nil)
    say("again=\(again) errno=\(again < 0 ? errno : 0)")
    var to = loopback(port)
    let sent = withUnsafePointer(to: &to) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_sendto(fd, buffer, 10, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    say("send=\(sent) errno=\(sent < 0 ? errno : 0)")
    var queued: Int32 = 0
    let ioctlResult = sko_ioctl(fd, UInt(FIONREAD), &queued)
    say("fionread=\(ioctlResult) errno=\(ioctlResult < 0 ? errno : 0)")
    let socketFD = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    say("socket=\(socketFD) errno=\(socketFD < 0 ? errno : 0)")
    if readLine() == "reconnect" { say(roundTrip(port)) }
    exit(0)

case "blocked-send":
    guard let port = args.first.flatMap({ UInt16($0) }) else { fail("blocked-send PORT") }
    let listener = sko_socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard listener >= 0, bind(listener, port) == 0, sko_listen(listener, 1) == 0 else { fail("listen: \(Errno.current)") }
    let fd = sko_socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var to = loopback(port)
    let connected = withUnsafePointer(to: &to) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sko_connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard fd >= 0, connected == 0 else { fail("connect: \(Errno.current)") }
    let accepted = sko_accept4(listener, nil, nil, 0)
    guard accepted >= 0, sko_fcntl(fd, F_SETFL, O_NONBLOCK) == 0 else { fail("accept: \(Errno.current)") }
    let chunk = [UInt8](repeating: 7, count: 65536)
    // Full: EAGAIN that lasts (lwIP may still be moving bytes along for a moment).
    var quiet = 0
    for _ in 0..<10_000 where quiet < 20 {
        if sko_send(fd, chunk, chunk.count, 0) < 0 {
            guard errno == EAGAIN else { fail("send: \(Errno.current)") }
            quiet += 1
            usleep(10_000)
        } else {
            quiet = 0
        }
    }
    guard quiet >= 20 else { fail("the send side never stayed full") }
    var check = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
    guard poll(&check, 1, 0) == 0 else { fail("full, yet poll says \(check.revents)") }
    say("ready")
    var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
    while poll(&pfd, 1, -1) < 0 && errno == EINTR {}
    say("poll=\(pfd.revents)")
    let sent = sko_send(fd, chunk, chunk.count, 0)
    say("send=\(sent) errno=\(sent < 0 ? errno : 0)")
    exit(0)

case "polled-recv":
    guard let port = args.first.flatMap({ UInt16($0) }) else { fail("polled-recv PORT") }
    let fd = sko_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { fail("socket: \(Errno.current)") }
    guard bind(fd, port) == 0 else { fail("bind: \(Errno.current)") }
    say("ready")
    var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    while poll(&pfd, 1, -1) < 0 && errno == EINTR {}
    say("poll=\(pfd.revents)")
    var buffer = [UInt8](repeating: 0, count: 2048)
    let n = sko_recvfrom(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT), nil, nil)
    say("recv=\(n) errno=\(n < 0 ? errno : 0)")
    exit(0)

case "round-trip":
    guard let port = args.first.flatMap({ UInt16($0) }) else { fail("round-trip PORT") }
    say(roundTrip(port))
    exit(0)

default:
    fail("unknown mode \(mode)")
}
