import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The differential conformance suite (Tests/conformance, C): every scenario runs on the kernel's
/// sockets and on the stack, each in its own child process, and every call's result is compared.
/// A difference fails the test unless Tests/conformance/documented.c lists it with its reason.
@Suite(.serialized) struct ConformanceTests {
    /// Compiles the suite against include/socket_offload.h and libSocketClientDynamic.
    static func build() throws -> String {
        let root = try TestBinaries.packageRoot()
        let dir = TestBinaries.directory
        let program = TestNames.uniquePath("conformance", suffix: "bin")
        let sources = ["conformance.c", "documented.c", "scenarios_tcp.c", "scenarios_udp.c", "scenarios_misc.c", "scenarios_preload.c"]
            .map { "\(root)/Tests/conformance/\($0)" }
        let cc = try ChildProcess("cc", ["-O1", "-g", "-Wall", "-Werror", "-Wno-unused-parameter"] + sources +
                                  ["-I\(root)/include", "-L\(dir)", "-lSocketClientDynamic", "-Wl,-rpath,\(dir)", "-lpthread", "-o", program],
                                  name: "cc-conformance")
        let built = try #require(cc.wait(timeout: 180), "cc hung")
        try #require(built.status == 0, "cc failed: \(cc.logTail())")
        return program
    }

    /// Runs every scenario against a fresh server with the given datagram transport (or through
    /// the preload library: libc's calls in a program started with LD_PRELOAD, which adds the
    /// select, epoll and dup scenarios), and checks that every difference is documented.
    @Test(arguments: ["auto", "shared-memory", "preload"])
    func kernelAndStackAgree(transport: String) throws {
        let program = try Self.build()
        defer { unlink(program) }
        let server = try ServerProcess(tag: "conformance")
        defer { server.stop() }
        // The two runs take different ports (the kernel keeps closed connections' ports in
        // TIME_WAIT for a minute); runs a minute apart move on too.
        let slot = (Int(time(nil)) / 60 % 2) * 3 + (transport == "auto" ? 0 : transport == "shared-memory" ? 1 : 2)
        var arguments = ["--server", server.socketPath, "--jobs", "3", "--port-base", "\(10_000 + slot * 2000)"]
        arguments += transport == "preload" ? ["--preload", TestBinaries.path("libsocket-offload-preload.so")] : ["--transport", transport]
        let run = try ChildProcess(program, arguments, name: "conformance")
        let result = try #require(run.wait(timeout: 600), "the conformance run hung")
        let output = result.output
        let summary = output.split(separator: "\n").first { $0.hasPrefix("conformance: ") && $0.contains("scenarios") }
        let line = try #require(summary.map(String.init), "no summary line:\n\(run.logTail())")
        print("[\(transport)] \(line)")
        // "conformance: N scenarios, M calls, K differences, D documented (T s)"
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        try #require(numbers.count >= 4, "unreadable summary: \(line)")
        let (scenarios, calls, differences, documented) = (numbers[0], numbers[1], numbers[2], numbers[3])
        #expect(scenarios >= 150, "only \(scenarios) scenarios")
        #expect(calls > scenarios * 5, "too few calls compared: \(calls)")
        #expect(!server.process.logTail().contains("crashed"), "the server crashed")
        #expect(server.process.isRunning, "the server died during the run")
        let undocumented = output.split(separator: "\n").filter { $0.hasPrefix("DIFFERENCE") || $0.hasPrefix("BROKEN") }
        #expect(result.status == 0 && differences == documented,
                "\(differences - documented) undocumented differences:\n\(output.split(separator: "\n").filter { !$0.hasPrefix("documented") }.joined(separator: "\n").suffix(6000))\n(\(undocumented.count) entries)")
    }
}
