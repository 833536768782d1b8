import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What a user sees when something is missing: no socket server, or a launcher command line that
/// cannot run anything. No server is started here.
@Suite struct LauncherTests {
    /// nc's first socket fails: the library says so in one line naming the path, and nc exits
    /// non-zero at once.
    @Test("No server: nc exits non-zero within 2 s, and one line says there is no socket server at the path",
          arguments: ["127.0.0.1", "::1"])
    func noServer(address: String) throws {
        let path = TestNames.uniquePath("preload-none", suffix: "sock")
        try #require(access(path, F_OK) != 0, "\(path) exists")
        let r = try ChildProcess.run(Offload.launcher, ["--socket-path", path, "--", "nc", "-N", address, "\(TestPorts.next())"],
                                     name: "nc-no-server", timeout: 2)
        #expect(r.status != nil && r.status != .exited(0), "\(r)")
        let lines = r.errorOutput.split(separator: "\n").filter { $0.contains("no socket server at \(path):") }
        #expect(lines.count == 1, "stderr should say once that there is no socket server at \(path)\n\(r)")
    }

    @Test("The launcher without a program exits non-zero and says so")
    func noProgram() throws {
        let r = try ChildProcess.run(Offload.launcher, ["--socket-path", "/tmp/unused.sock"], name: "launcher-no-program", timeout: 10)
        #expect(r.status != nil && r.status != .exited(0), "\(r)")
        #expect(r.errorOutput.contains("no program given"), "\(r)")
    }

    @Test("The launcher refuses --types foo")
    func badTypes() throws {
        let r = try ChildProcess.run(Offload.launcher, ["--types", "foo", "--", "true"], name: "launcher-bad-types", timeout: 10)
        #expect(r.status != nil && r.status != .exited(0), "\(r)")
        #expect(r.errorOutput.contains("--types"), "\(r)")
    }

    @Test("The launcher exits 127 when the program cannot be executed")
    func notExecutable() throws {
        let program = TestNames.uniquePath("preload-missing", suffix: "bin")
        let r = try ChildProcess.run(Offload.launcher, ["--", program], name: "launcher-missing", timeout: 10)
        #expect(r.status == .exited(127), "\(r)")
        #expect(r.errorOutput.contains("cannot execute \(program)"), "\(r)")
    }
}
