// scribbler: the hostile and greedy clients of the HardeningTests. Each mode is one SocketClient
// process doing what a careless or malicious application could; it prints "key=value" lines the
// test checks and exits 0 when it ran to the end ("error: ..." and exit status 2 when it could not
// even set up; exit status 3 when the server is gone).
//
// Usage: scribbler MODE --socket-path PATH [--transport auto|process-vm|shared-memory] [OPTIONS]
//   scribble  --seed S [--rounds N] [--seconds T] [--tcp-echo-port P] [--udp-echo-port P]
//             [--stream-ring-size B] [--datagram-ring-items N] [--datagram-slot-size B]
//       Opens TCP connections to itself and to the TCP echo server, UDP sockets talking to each
//       other and to the UDP echo server, and while it sends and receives on them writes over every
//       field of its own shared segment: random values for the first half of the rounds, then
//       targeted bad ones (ring indices moved back, forward and past the end, lengths past the end,
//       huge counts, flipped flags, notifier counters). When the server ends the session it starts
//       a new one. Prints "seed=", one "session=" line per session, "session-ended=" when one is
//       ended, and "done rounds= mutations= sessions= ended=". Every mutation goes to stderr.
//       The ring geometry options must match the server's (defaults: the server's defaults).
//   udp-many  [--count N]
//       Opens up to N UDP sockets, stopping at the first error; prints "opened=K errno=E", then
//       sends a datagram between a few of them and prints "verified=V of=W", then "ready", and
//       holds the sockets until its standard input closes.
//   flood     --port P [--host H] [--attempts N] [--seconds T]
//       Opens TCP connections to H:P (127.0.0.1 by default) and holds them idle, until N attempts,
//       T seconds, its own socket limit or 50 failures in a row; prints "held=K attempts=A
//       refused=R reset=S timeouts=T other=O socket-errno=E", then "ready", and holds the connections
//       until its standard input closes.
import CShims
import SocketClient
import SocketShared
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never { HelperOutput.fail(message) }

func say(_ line: String) { HelperOutput.say(line) }

/// Writes to stderr (the test keeps it as a log): the mutations, for replaying a failure.
func log(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard !arguments.isEmpty else { fail("usage: scribbler scribble|udp-many|flood --socket-path PATH [OPTIONS]") }
let mode = arguments.removeFirst()
let options: [String: String] = {
    var options: [String: String] = [:]
    var i = 0
    while i < arguments.count {
        guard arguments[i].hasPrefix("--"), i + 1 < arguments.count else { fail("bad argument \(arguments[i])") }
        options[String(arguments[i].dropFirst(2))] = arguments[i + 1]
        i += 2
    }
    return options
}()

func option(_ name: String) -> String {
    guard let v = options[name] else { fail("--\(name) is required") }
    return v
}

func intOption(_ name: String, _ fallback: Int) -> Int {
    guard let text = options[name] else { return fallback }
    guard let v = Int(text) else { fail("--\(name) takes a number") }
    return v
}

let socketPath = option("socket-path")
let transportName = options["transport"] ?? "auto"
guard let transport = DatagramTransport(name: transportName) else { fail("bad --transport \(transportName)") }
guard sko_configure(socketPath, Int32(transport.rawValue)) == 0 else { fail("sko_configure: \(Errno.current)") }
// A dead peer must be an errno, never a signal.
signal(SIGPIPE, SIG_IGN)

switch mode {
case "scribble":
    Scribbler(socketPath: socketPath, seed: UInt64(option("seed")) ?? 0, transport: transport,
              rounds: intOption("rounds", 400), seconds: intOption("seconds", 20),
              tcpEchoPort: UInt16(intOption("tcp-echo-port", 0)), udpEchoPort: UInt16(intOption("udp-echo-port", 0)),
              geometry: .init(streamRing: intOption("stream-ring-size", 128 * 1024),
                              datagramItems: intOption("datagram-ring-items", 128),
                              slotSize: intOption("datagram-slot-size", 2048))).run()
case "udp-many":
    openManyDatagramSockets(count: intOption("count", 4096))
case "flood":
    guard let port = UInt16(option("port")) else { fail("bad --port") }
    flood(host: options["host"] ?? "127.0.0.1", port: port, attempts: intOption("attempts", 3000),
          seconds: intOption("seconds", 20))
default:
    fail("unknown mode \(mode)")
}
exit(0)
