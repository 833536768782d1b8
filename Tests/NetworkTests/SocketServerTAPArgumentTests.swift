import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// socket-server's TAP options on the command line: bad ones stop it before it starts, with the
/// reason and exit status 1 (as its --help documents).
@Suite("socket-server: TAP arguments")
struct SocketServerTAPArgumentTests {
    /// Runs socket-server with `arguments` (bounded) in a scratch directory.
    func runServer(_ arguments: [String]) throws -> ChildProcess.Result {
        var template = Array("/tmp/skonet-args-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestSupportError("mkdtemp: errno \(errno)") }
        let directory = String(cString: made)
        defer { _ = try? TestCommand.run(["rm", "-rf", directory], label: "rm", directory: directory) }
        return try TestCommand.run([TestBinaries.path("socket-server"), "--socket-path", "\(directory)/s.sock"] + arguments,
                                      label: "socket-server", directory: directory, timeoutSeconds: 20)
    }

    @Test("a --tap name longer than 15 characters: clear message, exit status 1")
    func tapNameTooLong() throws {
        let r = try runServer(["--tap", "sixteen-chars-xx", "--address", "10.77.99.2/24"])
        #expect(r.status == .exited(1), "\(r)")
        #expect(r.errorOutput.contains("--tap name must have 1 to 15 characters"), "\(r)")
        #expect(!r.errorOutput.contains("listening on"), "\(r)")
    }

    @Test("--gateway, --mac or --mtu before any --tap is rejected", arguments: [
        ["--gateway", "10.77.99.1", "--tap", "sko99"],
        ["--mac", "02:00:00:00:00:01", "--tap", "sko99"],
        ["--mtu", "1400", "--tap", "sko99"],
    ])
    func perTAPOptionBeforeTap(arguments: [String]) throws {
        let r = try runServer(arguments)
        #expect(r.status == .exited(1), "\(r)")
        #expect(r.errorOutput.contains("configure a TAP interface: put them after its --tap NAME"), "\(r)")
    }

    @Test("a 15-character --tap name is accepted, and the device is created when missing",
          .enabled(if: TAPNetwork.available, "needs root and /dev/net/tun"))
    func tapNameOfFifteenCharacters() throws {
        let net = try TAPNetwork.make("tapname", subnet: 10)
        defer { net.teardown() }
        let name = "fifteen-chars-x"
        try #require(name.utf8.count == 15)
        let server = try net.startKernel([TestBinaries.path("socket-server"), "--socket-path", net.socketPath,
                                          "--tap", name, "--address", "10.77.10.2/24"], label: "socket-server-15")
        #expect(server.waitForOutput("listening on \(net.socketPath)", inErrorOutput: true, timeout: 20), "\(server.diagnostics)")
        let link = try net.runKernel(["ip", "link", "show", "dev", name], timeoutSeconds: 10)
        #expect(link.succeeded, "\(link)")
        #expect(server.stop(SIGTERM, grace: 10) == .exited(0), "\(server.diagnostics)")
    }
}
