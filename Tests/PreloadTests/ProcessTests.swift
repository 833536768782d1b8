import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Threads and processes under the library: the C programs in Tests/preload-programs, compiled by
/// the test and run under the launcher (each also runs on the kernel, where it must pass too).
@Suite struct ProcessTests {
    static func compile(_ name: String) throws -> String {
        let source = try TestBinaries.packageRoot() + "/Tests/preload-programs/\(name).c"
        let binary = TestNames.uniquePath("preload-\(name)", suffix: "bin")
        let cc = try ChildProcess.run("cc", ["-O1", "-Wall", "-Werror", "-pthread", source, "-o", binary], name: "cc-\(name)", timeout: 120)
        try #require(cc.succeeded, "\(cc)")
        return binary
    }

    /// Runs `program PORT` on the kernel, then under the launcher; both must exit 0.
    static func runBoth(_ name: String, expecting lines: [String]) throws {
        let binary = try compile(name)
        defer { unlink(binary) }
        let kernel = try ChildProcess.run(binary, ["\(TestPorts.next())"], name: "\(name)-kernel", timeout: 60)
        #expect(kernel.succeeded, "on the kernel: \(kernel)")
        let o = try Offload(name)
        defer { o.finish() }
        let stack = try ChildProcess.run(Offload.launcher, ["--socket-path", o.server.socketPath, "--", binary, "\(TestPorts.next())"],
                                         name: "\(name)-stack", timeout: 60)
        #expect(stack.succeeded, "under the library: \(stack)")
        for line in lines { #expect(stack.output.contains(line), "missing \"\(line)\": \(stack)") }
        #expect(o.server.log.contains("client="), "no session on the stack's server:\n\(o.server.log)")
    }

    @Test("Four threads on one TCP connection (two writers, two readers): 40,000 records intact; shutdown(SHUT_RD) from another thread wakes a blocked recv")
    func threads() throws {
        try Self.runBoth("threads", expecting: ["records 40000/40000 intact, 0 corrupt, 0 missing", "(recv returned 0)"])
    }

    @Test("After fork: the child closing its inherited listener leaves the parent's open; the child's own socket works; its use of the inherited one is refused (EBADF)")
    func fork() throws {
        try Self.runBoth("fork", expecting: ["child: getsockopt on the inherited listener: -1 EBADF", "parent: 10 bytes \"from child\", child exit 0",
                                             "parent: its listener still accepts: yes"])
    }
}
