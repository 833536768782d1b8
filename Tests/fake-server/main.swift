// fake-server: something listening where a socket server should be, for the client's authentication
// and timeout tests. It is not a socket server: it never says HELLO.
//
// Usage: fake-server PATH MODE [--uid UID] [--lifetime SECONDS]
//   --silent         accept connections and never read or answer them
//   --record FILE    accept connections, append every byte they send to FILE, answer nothing
//   --refuse ERRNO   accept, send an error reply with ERRNO and request id 0 (as a socket server
//                    refuses a client), close without reading
//   --never-accept   listen with a backlog of 0 and never accept: the first connection waits in
//                    the backlog, and every later connect(2) blocks (a server that is stuck)
//   --uid UID        become that uid (and gid) before listening: SO_PEERCRED then reports it to
//                    clients, as for a server run by that user (needs root; FILE is opened first)
//   --lifetime S     exit 0 after S seconds (default 120), so that a forgotten one goes away
//
// It prints "listening" once clients can connect, then per connection "accepted", and
// "closed bytes=N" when the client hangs up (N: the bytes it sent; 0 in --silent mode, which does
// not read). A failure to start is exit status 2 with "error: ...".
import CShims
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// Prints `line` at once: the test reads stdout line by line while we run.
func say(_ line: String) { print(line); fflush(nil) }

func fail(_ message: String) -> Never { say("error: \(message)"); exit(2) }

enum Mode {
    case silent
    case record(fd: Int32)
    case refuse(Int32)
    case neverAccept
}

let usage = "usage: fake-server PATH --silent|--record FILE|--refuse ERRNO|--never-accept [--uid UID] [--lifetime S]"
let arguments = Array(CommandLine.arguments.dropFirst())
guard let path = arguments.first else { fail(usage) }
var mode: Mode? = nil
var uid: UInt32? = nil
var lifetime = 120
var i = 1
while i < arguments.count {
    let name = arguments[i]
    let value = i + 1 < arguments.count ? arguments[i + 1] : ""
    i += name == "--silent" || name == "--never-accept" ? 1 : 2
    switch name {
    case "--silent": mode = .silent
    case "--never-accept": mode = .neverAccept
    case "--record":
        let fd = open(value, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { fail("cannot open \(value): \(Errno.current)") }
        mode = .record(fd: fd)
    case "--refuse":
        guard let err = Int32(value), err > 0 else { fail("bad --refuse \(value)") }
        mode = .refuse(err)
    case "--uid":
        guard let u = UInt32(value) else { fail("bad --uid \(value)") }
        uid = u
    case "--lifetime":
        guard let s = Int(value), s > 0 else { fail("bad --lifetime \(value)") }
        lifetime = s
    default: fail(usage)
    }
}
guard let mode else { fail(usage) }

if let uid {
    guard setgroups(0, nil) == 0, setgid(uid) == 0, setuid(uid) == 0 else { fail("cannot become uid \(uid): \(Errno.current)") }
}

let listener = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
guard listener >= 0 else { fail("socket: \(Errno.current)") }
var address = sockaddr_un()
address.sun_family = sa_family_t(AF_UNIX)
let pathBytes = Array(path.utf8)
guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else { fail("path too long: \(path)") }
withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
}
guard bound == 0 else { fail("bind \(path): \(Errno.current)") }
let backlog: Int32 = if case .neverAccept = mode { 0 } else { 64 }
guard listen(listener, backlog) == 0 else { fail("listen: \(Errno.current)") }
say("listening")
let end = monotonicNanoseconds() + UInt64(lifetime) * 1_000_000_000
if case .neverAccept = mode {
    while monotonicNanoseconds() < end { usleep(200_000) }
    exit(0)
}

/// One accepted connection and the bytes it sent.
struct Client {
    let fd: Int32
    var bytes = 0
}

var clients: [Client] = []
while monotonicNanoseconds() < end {
    // Silent clients are watched for hang-up only (POLLRDHUP), so their messages stay unread.
    let watched: Int16 = if case .silent = mode { POLLRDHUP_ } else { Int16(POLLIN) }
    var pfds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)] + clients.map { pollfd(fd: $0.fd, events: watched, revents: 0) }
    let n = poll(&pfds, nfds_t(pfds.count), 200)
    if n < 0 && errno != EINTR { fail("poll: \(Errno.current)") }
    guard n > 0 else { continue }
    if pfds[0].revents != 0 {
        let fd = accept(listener, nil, nil)
        if fd >= 0 {
            say("accepted")
            if case .refuse(let err) = mode {
                _ = try? DescriptorPassing.send(fd, ControlMessage(requestID: 0, .error(err)).encoded())
                close(fd)
                say("closed bytes=0")
            } else {
                clients.append(Client(fd: fd))
            }
        }
    }
    var closed: [Int] = []
    for (i, pfd) in pfds.dropFirst().enumerated() where pfd.revents != 0 {
        guard case .record(let file) = mode else {
            closed.append(i) // silent: the client hung up
            continue
        }
        do {
            guard let packet = try DescriptorPassing.receive(clients[i].fd, maxBytes: 65_536, nonBlocking: true) else { continue }
            packet.closeDescriptors()
            clients[i].bytes += packet.bytes.count
            _ = packet.bytes.withUnsafeBytes { write(file, $0.baseAddress, $0.count) }
        } catch {
            closed.append(i)
        }
    }
    for i in closed.reversed() {
        say("closed bytes=\(clients[i].bytes)")
        close(clients[i].fd)
        clients.remove(at: i)
    }
}
exit(0)
