import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// An unmodified program under the preload library (socket-offload-run) on the stack, with a kernel
/// program in the TAP peer namespace at the other end.
@Suite("TAP: a preloaded program and a kernel peer", .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
struct TAPPreloadTests {
    @Test("kernel nc to a preloaded socat echo server on the stack, IPv4 and IPv6")
    func kernelClientToPreloadedServer() throws {
        let net = try TAPNetwork.make("preload", subnet: 21)
        defer { net.teardown() }
        try net.startServer()
        // socat on the stack (its sockets through the preload library): an echo server on each family,
        // for one connection (socat's fork option would hand the connection to a child, which cannot
        // use an inherited stack socket yet: see the README).
        let v4 = try net.startStack("socket-offload-run", ["--socket-path", net.socketPath, "--", "socat", "TCP4-LISTEN:7040,reuseaddr", "PIPE"])
        let v6 = try net.startStack("socket-offload-run", ["--socket-path", net.socketPath, "--", "socat", "TCP6-LISTEN:7041,reuseaddr,ipv6only=1", "PIPE"])
        for (address, port) in [(net.stackIPv4, "7040"), (net.stackIPv6, "7041")] {
            // The listener may take a moment to appear: retry the kernel client for a few seconds.
            var result: ChildProcess.Result?
            for _ in 0..<20 {
                let (sent, echoed) = ("\(net.directory)/payload", "\(net.directory)/echoed")
                let r = try net.runKernel(["sh", "-c", "head -c 200000 /dev/urandom > \(sent); nc -N -w 10 \(address) \(port) < \(sent) > \(echoed); cmp \(sent) \(echoed) && echo same"], timeoutSeconds: 30)
                result = r
                if r.succeeded && r.output.contains("same") { break }
                usleep(250_000)
            }
            let r = try #require(result)
            #expect(r.succeeded && r.output.contains("same"), "kernel nc to \(address):\(port) through the preloaded socat: \(r)\n\(v4.logTail())\n\(v6.logTail())")
            if address == net.stackIPv4 {
                // socat's listeners are the stack's, not this namespace's kernel's.
                let ss = try TestCommand.run(["ss", "-Htln"], label: "ss", directory: net.directory, timeoutSeconds: 10)
                #expect(!ss.output.contains(":7041 "), "a listener is on the kernel: \(ss.output)")
            }
        }
        for socat in [v4, v6] {
            let status = socat.wait(timeout: 10)
            #expect(status?.status == 0, "socat after its connection: \(String(describing: status))\n\(socat.logTail())")
        }
    }
}
