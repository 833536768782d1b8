// tcp-peer: the second client process of the TCP tests. Each mode plays one side of a TCP exchange
// through the socket server and prints result lines ("key=value ...") the test checks.
//
//   tcp-peer hold   --socket-path P --host H --port N --connections K
//       connects K times, prints "ready connections=K", then sleeps until killed.
//   tcp-peer sink   --socket-path P --host H --port N --bytes B --seed S [--chunk C] [--pause-us U]
//       listens, prints "listening", accepts one connection and reads B bytes, C at a time with a
//       pause of U microseconds between reads (a slow reader), checks them against the pattern
//       (seed S), prints "read=N" after every MiB and at the end "received=B mismatches=M"; exits 0
//       only if all B bytes matched.
//   tcp-peer source --socket-path P --host H --port N --bytes B --seed S
//       connects and writes B bytes of the pattern as fast as the connection takes them, prints
//       "written=B" when the last write has returned, then half-closes, waits for the peer's FIN
//       and prints "sent=B end=R" (R: what the read after the FIN returned, 0 for end of stream).
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

let args = Array(CommandLine.arguments.dropFirst())
guard let mode = args.first else { fail("usage: tcp-peer hold|sink|source --option value ...") }
let options: [String: String] = {
    var options: [String: String] = [:]
    var i = 1
    while i + 1 < args.count {
        guard args[i].hasPrefix("--") else { fail("unexpected argument \(args[i])") }
        options[String(args[i].dropFirst(2))] = args[i + 1]
        i += 2
    }
    if i != args.count { fail("option \(args[i]) needs a value") }
    return options
}()

func option(_ name: String) -> String {
    guard let v = options[name] else { fail("--\(name) is required") }
    return v
}
func intOption(_ name: String, _ fallback: Int? = nil) -> Int {
    if options[name] == nil, let fallback { return fallback }
    guard let v = Int(option(name)) else { fail("--\(name) takes a number") }
    return v
}

do {
    try Socket.configure(serverPath: option("socket-path"))
} catch {
    fail("configure: \(error)")
}
guard let port = UInt16(option("port")), let address = SocketAddress(host: option("host"), port: port) else {
    fail("bad --host/--port")
}

switch mode {
case "hold":
    let count = intOption("connections")
    var sockets: [Socket] = []
    for n in 0..<count {
        do {
            let s = try Socket(address.family, .stream)
            try s.connect(to: address)
            sockets.append(s)
        } catch {
            fail("connection \(n): \(error)")
        }
    }
    print("ready connections=\(sockets.count)")
    fflush(nil)
    while true { pause() }

case "sink":
    let total = intOption("bytes")
    let seed = UInt64(intOption("seed"))
    let chunk = intOption("chunk", 64 << 10)
    let pause = intOption("pause-us", 0)
    let connection: Socket
    do {
        let listener = try Socket(address.family, .stream)
        try listener.bind(to: address)
        try listener.listen(backlog: 4)
        print("listening")
        fflush(nil)
        connection = try listener.accept().socket
        listener.close()
    } catch {
        fail("listen/accept: \(error)")
    }
    var buffer = [UInt8](repeating: 0, count: chunk)
    var received = 0
    var mismatches = 0
    while received < total {
        let n: Int
        do {
            n = try buffer.withUnsafeMutableBytes { try connection.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<min(chunk, total - received)])) }
        } catch {
            fail("read after \(received) bytes: \(error)")
        }
        if n == 0 { break }
        if cshims_check_pattern(buffer, n, seed, UInt64(received)) != n { mismatches += 1 }
        if (received + n) >> 20 != received >> 20 {
            print("read=\(received + n)")
            fflush(nil)
        }
        received += n
        if pause > 0 { usleep(useconds_t(pause)) }
    }
    // Expect the writer's FIN after the last byte.
    let extra = (try? buffer.withUnsafeMutableBytes { try connection.read(into: $0) }) ?? -1
    print("received=\(received) mismatches=\(mismatches) after_end=\(extra)")
    fflush(nil)
    connection.close()
    exit(received == total && mismatches == 0 && extra == 0 ? 0 : 1)

case "source":
    let total = intOption("bytes")
    let seed = UInt64(intOption("seed"))
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    do {
        let s = try Socket(address.family, .stream)
        try s.connect(to: address)
        var sent = 0
        while sent < total {
            let n = min(buffer.count, total - sent)
            cshims_fill_pattern(&buffer, n, seed, UInt64(sent))
            var done = 0
            while done < n {
                done += try buffer.withUnsafeBytes { try s.write(UnsafeRawBufferPointer(rebasing: $0[done..<n])) }
            }
            sent += n
        }
        print("written=\(sent)")
        fflush(nil)
        try s.shutdown(Int32(SHUT_WR))
        // The peer closes after reading everything: wait for its FIN so that our close is clean.
        let end = try buffer.withUnsafeMutableBytes { try s.read(into: $0) }
        print("sent=\(sent) end=\(end)")
        fflush(nil)
        s.close()
    } catch {
        fail("source: \(error)")
    }

default:
    fail("unknown mode \(mode)")
}
