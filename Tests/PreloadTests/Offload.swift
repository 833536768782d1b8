import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One test's stack and the unmodified programs it runs on it: a `socket-server` of its own, a
/// directory for the data files, and every program started under `socket-offload-run` (which sets
/// LD_PRELOAD and SOCKET_SERVER_PATH, then execs the program: the program keeps the launcher's pid).
///
/// Ownership: `finish()` (call it in a `defer`) kills every program still running, stops the server
/// (a server that does not stop cleanly is a failure of the test) and removes the directory.
final class Offload {
    let server: ServerProcess
    let directory: TestDirectory
    private var programs: [ChildProcess] = []

    static var launcher: String { TestBinaries.path("socket-offload-run") }

    /// The tools the tests run: a missing one is a failure (`scripts/setup.sh` installs them all).
    static let requiredTools = ["nc", "socat", "curl", "ss", "sha256sum", "head", "iperf3", "sockperf", "cc"]

    init(_ tag: String, serverArguments: [String] = []) throws {
        let missing = Self.requiredTools.filter { !Self.inPath($0) } + (access(Self.python, X_OK) == 0 ? [] : [Self.python])
        guard missing.isEmpty else { throw TestSupportError("PreloadTests: \(missing.joined(separator: ", ")) not installed (run scripts/setup.sh)") }
        directory = try TestDirectory("sko-preload-\(tag)")
        server = try ServerProcess(tag: "preload-\(tag)", arguments: serverArguments)
    }

    /// Debian's Python (package python3), not whatever `python3` in PATH wraps (pyenv's shim is a
    /// bash script that would run under the launcher too).
    static let python = "/usr/bin/python3"

    static func inPath(_ tool: String) -> Bool {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        return path.split(separator: ":").contains { access("\($0)/\(tool)", X_OK) == 0 }
    }

    /// Where a program's stdin comes from.
    enum Input {
        /// /dev/null.
        case null
        /// A pipe the test writes (`writeLine`, `closeInput`).
        case pipe
        /// A file, opened by a shell that then execs the launcher (same pid).
        case file(String)
    }

    /// Starts `program` (its name and arguments) under the launcher, on this test's server; stderr
    /// goes to the program's log (`errorOutput`, `logTail`).
    func start(_ program: [String], name: String, input: Input = .null,
               stdout: ChildProcess.Output = .pipe) throws -> ChildProcess {
        let launched = [Self.launcher, "--socket-path", server.socketPath, "--"] + program
        let p: ChildProcess
        switch input {
        case .null, .pipe:
            p = try ChildProcess(Self.launcher, Array(launched.dropFirst()), name: name,
                                 stdin: input.isPipe ? .pipe : .null, stdout: stdout)
        case .file(let path):
            p = try ChildProcess("/bin/sh", ["-c", "f=$1; shift; exec \"$@\" < \"$f\"", "sh", path] + launched,
                                 name: name, stdout: stdout)
        }
        programs.append(p)
        return p
    }

    func finish() {
        for p in programs.reversed() { p.terminate() }
        server.stop()
    }

    // MARK: waiting

    /// Waits until `program` has printed `text` on stderr (a listener's "Listening on"), at most 10 s.
    func awaitReady(_ program: ChildProcess, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try #require(program.waitForOutput(text, inErrorOutput: true, timeout: 10),
                     "\(program.name) did not print \"\(text)\" within 10 s\n\(Self.describe(program))\nserver log:\n\(server.log)",
                     sourceLocation: sourceLocation)
    }

    /// Waits until every one of `programs` has exited, as long as the `files` together keep growing.
    /// - Returns: nil when they all exited; else what went wrong (no growth for `stall` seconds, or
    ///   not done after `limit` seconds) with the byte count and where each program stands.
    func waitForExit(_ programs: [ChildProcess], growing files: [String], expectedBytes: Int,
                     stall: Double = 5, limit: Double = 40) -> String? {
        let deadline = Deadline(seconds: limit)
        var lastBytes = -1
        var lastChange = Deadline.now()
        while programs.contains(where: \.isRunning) {
            let bytes = files.map(Self.size).reduce(0, +)
            if bytes != lastBytes {
                lastBytes = bytes
                lastChange = Deadline.now()
            } else if Double(Deadline.now() - lastChange) / 1e9 >= stall || deadline.expired {
                let why = deadline.expired ? "not done after \(limit) s" : "stalled: no byte moved for \(stall) s"
                return "\(why), at \(bytes) of \(expectedBytes) bytes\n"
                    + programs.map(Self.describe).joined(separator: "\n") + "\nserver log:\n\(server.log)"
            }
            usleep(10_000)
        }
        return nil
    }

    /// A program's state for a failure message: its exit status, or where it sleeps (/proc wchan and
    /// syscall number: 7 is poll on x86_64), and its stderr.
    static func describe(_ p: ChildProcess) -> String {
        let state: String
        if let status = p.poll() {
            state = "\(status)"
        } else {
            let wchan = ProcStats.readFile("/proc/\(p.pid)/wchan") ?? "?"
            let syscall = ProcStats.readFile("/proc/\(p.pid)/syscall")?.split(separator: " ").first.map(String.init) ?? "?"
            state = "running, in \(wchan) (syscall \(syscall))"
        }
        return "[\(p.name) pid \(p.pid): \(state)] stderr: \(p.logTail(maxBytes: 800))"
    }

    static func size(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    // MARK: data

    /// A file of `bytes` random bytes (from /dev/urandom) in the test's directory.
    func randomFile(_ name: String, bytes: Int) throws -> String {
        let path = directory.file(name)
        // Not ChildProcess.run: its result holds the whole stdout file as a string.
        let head = try ChildProcess("head", ["-c", "\(bytes)", "/dev/urandom"], stdout: .file(path))
        defer { head.terminate() }
        let status = head.finish(timeout: 30).status
        guard status == .exited(0), Self.size(path) == bytes else {
            throw TestSupportError("cannot make \(path): \(status.map { "\($0)" } ?? "killed after 30 s"), \(Self.size(path)) bytes: \(head.logTail())")
        }
        return path
    }

    /// SHA-256 of a file, by sha256sum.
    static func sha256(_ path: String) throws -> String {
        let r = try ChildProcess.run("sha256sum", [path], timeout: 30)
        let hash = String(r.output.split(separator: " ").first ?? "")
        guard r.succeeded, hash.count == 64 else { throw TestSupportError("sha256sum \(path): \(r)") }
        return hash
    }

    /// Expects `received` to hold the same bytes as `source`: sizes and SHA-256 equal.
    static func expectSameBytes(_ source: String, _ received: String, _ what: String,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (got, sent) = (size(received), size(source))
        guard got == sent else {
            Issue.record("\(what): \(got) bytes received of \(sent)", sourceLocation: sourceLocation)
            return
        }
        #expect(try sha256(received) == sha256(source), "\(what): SHA-256 of the received bytes differs",
                sourceLocation: sourceLocation)
    }

    // MARK: proof that the traffic went through the stack

    /// The kernel's listening sockets on `port` (`ss -Hn -tl` or `-ul`): a stack listener is not one.
    static func kernelListeners(port: String, udp: Bool = false) throws -> String {
        let r = try ChildProcess.run("ss", ["-Hn", udp ? "-ul" : "-tl", "sport = :\(port)"], timeout: 10)
        guard r.succeeded else { throw TestSupportError("ss: \(r)") }
        return r.output.trimmingWhitespace
    }

    /// Expects no kernel socket listening on `port`.
    static func expectNotInKernel(port: String, udp: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let listeners = try kernelListeners(port: port, udp: udp)
        #expect(listeners.isEmpty, "the kernel has a \(udp ? "UDP" : "TCP") socket on port \(port): \(listeners)",
                sourceLocation: sourceLocation)
    }

    /// Expects the server's log to show a session of each program (a client with the program's pid).
    func expectSessions(_ programs: [ChildProcess], sourceLocation: SourceLocation = #_sourceLocation) {
        for p in programs {
            let seen = waitUntil(timeout: 5) { server.process.logTail(maxBytes: 1 << 20).contains("client=\(p.pid) ") }
            #expect(seen, "no session of \(p.name) (pid \(p.pid)) in the server's log:\n\(server.log)",
                    sourceLocation: sourceLocation)
        }
    }
}

extension Offload.Input {
    var isPipe: Bool { if case .pipe = self { true } else { false } }
}

extension String {
    var trimmingWhitespace: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
