import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A child process of a network test, started with `posix_spawn` (as `Tests/SocketSharedTests/PeerProcess.swift`
/// does), with its stdin on /dev/null and its stdout and stderr in files of the test's directory, so
/// that a chatty child can never block on a full pipe and its output is still there after it died.
///
/// Ownership: the object owns the child until `wait` reaps it; `deinit` kills and reaps a child that
/// is still running, so no test leaves processes behind.
final class NetworkProcess {
    let pid: pid_t
    let label: String
    let stdoutPath: String
    let stderrPath: String
    private(set) var exitStatus: Int32?

    /// The directory of the test bundle; the package's executables (socket-server, the examples,
    /// net-peer) are built next to it by `swift build --build-tests`.
    static let binDirectory: String = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "./x"
        return exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    }()

    /// Path of one of the package's executables.
    static func product(_ name: String) -> String { binDirectory + "/" + name }

    /// Starts `arguments[0]` (a path, or a name looked up in `PATH`).
    /// - Parameters:
    ///   - label: names the output files (`label.out`, `label.err`) in `directory`.
    ///   - stdoutPath: send stdout to this file instead (e.g. a data file).
    init(_ arguments: [String], label: String, directory: String, stdoutPath: String? = nil) throws {
        self.label = label
        self.stdoutPath = stdoutPath ?? "\(directory)/\(label).out"
        self.stderrPath = "\(directory)/\(label).err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, self.stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, self.stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The test runner may block or ignore signals; children start with the defaults.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, environ)
        guard rc == 0 else { throw SpawnError(command: arguments.joined(separator: " "), code: rc) }
        self.pid = pid
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            _ = wait(timeoutSeconds: 5)
        }
    }

    /// Reaps the child if it has exited; true when it has.
    @discardableResult
    func poll() -> Bool {
        if exitStatus != nil { return true }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return false }
        exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return true
    }

    /// Waits for the child to exit, at most `timeoutSeconds`; then kills it (SIGKILL) and returns nil.
    @discardableResult
    func wait(timeoutSeconds: Double) -> Int32? {
        let deadline = monotonicSeconds() + timeoutSeconds
        while !poll() {
            if monotonicSeconds() > deadline {
                kill(pid, SIGKILL)
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                exitStatus = 128 + SIGKILL
                return nil
            }
            usleep(5_000)
        }
        return exitStatus
    }

    func signal(_ signal: Int32) {
        if exitStatus == nil { kill(pid, signal) }
    }

    /// Stops the child with `signal`, then SIGKILL if it is still there after `graceSeconds`.
    /// - Returns: the exit status after the signal, or nil when it had to be killed.
    @discardableResult
    func stop(_ signal: Int32 = SIGTERM, graceSeconds: Double = 5) -> Int32? {
        if let exitStatus { return exitStatus }
        kill(pid, signal)
        return wait(timeoutSeconds: graceSeconds)
    }

    var output: String { readTextFile(stdoutPath) }
    var errorOutput: String { readTextFile(stderrPath) }

    /// Waits until stdout (or stderr with `inErrorOutput`) contains `text`; false if the child exits
    /// first or `timeoutSeconds` pass.
    func waitForOutput(_ text: String, inErrorOutput: Bool = false, timeoutSeconds: Double = 10) -> Bool {
        let deadline = monotonicSeconds() + timeoutSeconds
        while monotonicSeconds() < deadline {
            if (inErrorOutput ? errorOutput : output).contains(text) { return true }
            if poll() { return (inErrorOutput ? errorOutput : output).contains(text) }
            usleep(10_000)
        }
        return false
    }

    /// What to show when a check about this process fails.
    var transcript: String {
        "[\(label) pid \(pid) status \(exitStatus.map(String.init) ?? "running")]\nstdout: \(output.suffix(3000))\nstderr: \(errorOutput.suffix(3000))"
    }

    /// Runs a command to completion (bounded) and returns its status and output.
    static func run(_ arguments: [String], label: String, directory: String, timeoutSeconds: Double = 30) throws -> Result {
        let p = try NetworkProcess(arguments, label: label, directory: directory)
        let status = p.wait(timeoutSeconds: timeoutSeconds)
        return Result(command: arguments.joined(separator: " "), status: status, output: p.output, errorOutput: p.errorOutput)
    }

    struct Result: CustomStringConvertible {
        let command: String
        /// nil: killed after the timeout.
        let status: Int32?
        let output: String
        let errorOutput: String
        var succeeded: Bool { status == 0 }
        var description: String {
            "$ \(command)\nstatus: \(status.map(String.init) ?? "killed after timeout")\nstdout: \(output.suffix(3000))\nstderr: \(errorOutput.suffix(3000))"
        }
    }
}

struct SpawnError: Error, CustomStringConvertible {
    let command: String
    let code: Int32
    var description: String { "cannot start \(command): \(String(cString: strerror(code)))" }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func readTextFile(_ path: String) -> String {
    guard let f = fopen(path, "rb") else { return "" }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n <= 0 { break }
        bytes += chunk[..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

func writeTextFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "wb") else { throw SpawnError(command: "write \(path)", code: errno) }
    defer { fclose(f) }
    let bytes = Array(text.utf8)
    guard fwrite(bytes, 1, bytes.count, f) == bytes.count else { throw SpawnError(command: "write \(path)", code: errno) }
}

/// Parses "key=value key=value ..." (the helpers' result lines); later lines win.
func resultFields(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for line in text.split(separator: "\n") {
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
        }
    }
    return result
}
