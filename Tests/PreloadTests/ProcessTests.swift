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

    /// Runs `program PORT ARGUMENTS` on the kernel, then under the launcher; both must exit 0 and
    /// print `lines`. Afterwards the stack's server holds no more descriptors and segment mappings
    /// than before the run (every socket shared across fork was closed, lingering sessions ended).
    static func runBoth(_ name: String, arguments: [String] = [], expecting lines: [String]) throws {
        let binary = try compile(name)
        defer { unlink(binary) }
        try runBoth(name, command: [binary], arguments: arguments, expecting: lines)
    }

    static func runBoth(_ name: String, command: [String], arguments: [String] = [], expecting lines: [String]) throws {
        let kernel = try ChildProcess.run(command[0], Array(command.dropFirst()) + ["\(TestPorts.next())"] + arguments,
                                          name: "\(name)-kernel", timeout: 90)
        #expect(kernel.succeeded, "on the kernel: \(kernel)")
        for line in lines { #expect(kernel.output.contains(line), "on the kernel, missing \"\(line)\": \(kernel)") }
        let o = try Offload(name)
        defer { o.finish() }
        let before = serverCounts(o.server.pid)
        let stack = try ChildProcess.run(Offload.launcher, ["--socket-path", o.server.socketPath, "--"] + command + ["\(TestPorts.next())"] + arguments,
                                         name: "\(name)-stack", timeout: 90)
        #expect(stack.succeeded, "under the library: \(stack)")
        for line in lines { #expect(stack.output.contains(line), "missing \"\(line)\": \(stack)") }
        #expect(o.server.log.contains("client="), "no session on the stack's server:\n\(o.server.log)")
        // The server lets go of everything (closing connections may take a moment to finish).
        var after = serverCounts(o.server.pid)
        for _ in 0..<50 where after != before {
            usleep(100_000)
            after = serverCounts(o.server.pid)
        }
        #expect(after == before, "the server's descriptors and segment mappings did not return to \(before): \(after)\n\(o.server.log)")
    }

    /// The server's open descriptors and client segment mappings.
    static func serverCounts(_ pid: pid_t) -> [Int] {
        [ProcStats.descriptorTargets(pid)?.count ?? -1, ProcStats.mapsLines(pid, containing: "socket-server-client")?.count ?? -1]
    }

    @Test("Four threads on one TCP connection (two writers, two readers): 40,000 records intact; shutdown(SHUT_RD) from another thread wakes a blocked recv")
    func threads() throws {
        try Self.runBoth("threads", expecting: ["records 40000/40000 intact, 0 corrupt, 0 missing", "(recv returned 0)"])
    }

    @Test("After fork: the child uses its inherited listener; its close leaves the parent's open; the child's own socket works")
    func fork() throws {
        try Self.runBoth("fork", expecting: ["child: getsockopt on the inherited listener: 0  SO_ACCEPTCONN 1", "parent: 10 bytes \"from child\", child exit 0",
                                             "parent: its listener still accepts: yes"])
    }

    @Test("Forking servers: a pre-fork server (4 workers accept from the listener the parent made and closed) and a fork-per-connection server (the parent closes each connection at once): 40 connections answered, each followed by EOF", arguments: ["prefork", "forking"])
    func prefork(mode: String) throws {
        try Self.runBoth("prefork", arguments: [mode], expecting: ["client: 40/40 answers right", "\(mode): ok"])
    }

    @Test("Sockets shared across fork live until their last holder lets go: a daemon's listener outlives its parent; a child that exits, holds, or closes its copy (Python)")
    func forkLifetimes() throws {
        let script = try TestBinaries.packageRoot() + "/Tests/preload-programs/fork_lifetimes.py"
        try Self.runBoth("fork-lifetimes", command: [Offload.python, script], arguments: ["\(TestPorts.next())"],
                         expecting: ["daemon: ok", "child exits untouched: ok", "child holds it: ok", "child closes its copy: ok"])
    }

    @Test("Across exec: the new program keeps every socket not marked close-on-exec (queued bytes, dup'ed descriptors, a listener, a connected non-blocking UDP socket); a close-on-exec one is closed in order (its peer reads EOF)")
    func exec() throws {
        try Self.runBoth("exec", expecting: ["bytes queued before the exec arrive after it: ok", "both descriptors of the dup'ed socket send: ok",
                                             "the close-on-exec end was closed in order: its peer reads EOF: ok",
                                             "the listener still listens and accepts: ok", "the UDP socket is still connected and non-blocking: ok"])
    }
}
