#if canImport(Glibc)
import Glibc
#endif

/// A helper program (the socket server, an example, a test peer, a system tool) running as a child
/// of the test process. By default its stdin is /dev/null, its stdout a pipe the test reads line by
/// line with a deadline, and its stderr a log file of its own; each can be redirected (`Input`,
/// `Output`), and descriptors of the test can be installed as its fds 3, 4, 5...
///
/// Every wait is bounded by the caller's timeout (`.infinity` for none).
///
/// Cleanup: `terminate()` (also run at deinit) kills the program with SIGKILL, reaps it, closes our
/// descriptors and removes the log. In case the test process itself dies first (a crash, a kill),
/// the program is *tethered*: it is started by a small `/bin/sh` that forks a watcher and then execs
/// the program (so the program is our own child, with its real pid and exit status). The watcher
/// holds the read end of a socket whose other end only the test process has; when that end closes
/// without the "reaped" line we write once we have reaped the program, the watcher removes the
/// orphan files and the log and kills the program. So no helper outlives the test process, whatever
/// happens to it.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked Sendable: used by one test at a time; the state below is only touched by the
    // owning test.

    /// How a child process ended. (Nested: Swift Testing has a top-level `ExitStatus` of its own.)
    public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        /// Decodes a `waitpid` status.
        public init(waitStatus status: Int32) {
            self = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        }

        /// The shell's number for it: the exit code, or 128 + the signal.
        public var code: Int32 {
            switch self {
            case .exited(let code): return code
            case .signaled(let signal): return 128 + signal
            }
        }

        public var description: String {
            switch self {
            case .exited(let code): return "exit status \(code)"
            case .signaled(let signal): return "killed by signal \(signal)"
            }
        }
    }

    /// Where the child's stdin comes from.
    public enum Input: Sendable {
        /// /dev/null.
        case null
        /// A pipe the test writes with `writeLine(_:)`.
        case pipe
    }

    /// Where the child's stdout or stderr goes.
    public enum Output: Sendable {
        /// A pipe the test reads with `readLine(timeout:)` (stdout only).
        case pipe
        /// A log file of the child's own under /tmp, removed by `terminate()` (stderr only).
        case log
        /// A file the test names (and removes); truncated first unless `append`.
        case file(String, append: Bool = false)
        /// The test process's own.
        case inherit
        /// /dev/null.
        case null
    }

    /// The program's process id: for kill(2) and /proc.
    public let pid: pid_t
    /// A short name for messages.
    public let name: String
    /// Where stdout goes when it is a file.
    public let stdoutPath: String?
    /// Where stderr goes when it is a file (`.log` or `.file`).
    public let stderrPath: String?
    /// Every stdout line read so far (for failure messages).
    public private(set) var transcript: [String] = []
    /// How the program ended, once it has been reaped.
    public private(set) var status: ExitStatus?

    private let ownsStderrFile: Bool
    private var stdoutFD: Int32
    private var stdinFD: Int32
    private var tetherFD: Int32
    private var buffered: [UInt8] = []
    private var stdoutEOF: Bool
    private var terminated = false

    /// The highest fd a passed descriptor may land on; the tether sits on the next one.
    private static let tetherTarget: Int32 = 9

    /// Starts `executable` with `arguments`.
    /// - Parameters:
    ///   - executable: a path (see `TestBinaries.path(_:)`), or a name looked up in `PATH`.
    ///   - name: used in the log file name and messages (default: the executable's last component).
    ///   - stdin, stdout, stderr: where the standard descriptors go.
    ///   - descriptors: installed as the child's fds 3, 4, 5... (at most 6), in this order.
    ///   - orphanFiles: files (paths without spaces) the watcher removes, with the log, if the test
    ///     process dies first, e.g. a server's socket file. Normally the test removes them itself.
    public init(_ executable: String, _ arguments: [String], name: String? = nil,
                stdin: Input = .null, stdout: Output = .pipe, stderr: Output = .log,
                descriptors: [Int32] = [], orphanFiles: [String] = []) throws(TestSupportError) {
        let name = name ?? String(executable.split(separator: "/").last ?? "child")
        self.name = name
        guard let path = Self.resolve(executable) else {
            throw TestSupportError("\(executable) is not an executable (build with `swift build --build-tests`)")
        }
        guard descriptors.count <= Int(Self.tetherTarget) - 3 else {
            throw TestSupportError("at most \(Self.tetherTarget - 3) descriptors can be passed to \(name)")
        }
        switch stdout {
        case .file(let p, _): stdoutPath = p
        case .log: throw TestSupportError("stdout cannot be a log file")
        default: stdoutPath = nil
        }
        switch stderr {
        case .file(let p, _): stderrPath = p
        case .log: stderrPath = TestNames.uniquePath(name, suffix: "log")
        case .pipe: throw TestSupportError("stderr cannot be a pipe")
        default: stderrPath = nil
        }
        if case .log = stderr { ownsStderrFile = true } else { ownsStderrFile = false }

        // socketpair rather than pipe: SOCK_CLOEXEC makes the descriptors close-on-exec atomically, so
        // helpers that other tests spawn at the same moment cannot inherit them (an inherited write
        // end would keep our reads from ever seeing EOF).
        var ours: [Int32] = []    // kept by us
        var theirs: [Int32] = []  // the child's ends, closed here once it is started
        defer { theirs.forEach { _ = close($0) } }
        func cleanup() { ours.forEach { _ = close($0) } }
        guard let tether = Self.socketPair() else { // [0]: ours (held), [1]: the watcher's
            throw TestSupportError("socketpair: errno \(errno)")
        }
        ours.append(tether[0]); theirs.append(tether[1])
        var out: [Int32]? = nil
        if case .pipe = stdout {
            guard let p = Self.socketPair() else { // [0]: ours (read), [1]: the child's stdout
                cleanup()
                throw TestSupportError("socketpair: errno \(errno)")
            }
            ours.append(p[0]); theirs.append(p[1]); out = p
        }
        var input: [Int32]? = nil
        if case .pipe = stdin {
            guard let p = Self.socketPair() else { // [0]: the child's stdin, [1]: ours (write)
                cleanup()
                throw TestSupportError("socketpair: errno \(errno)")
            }
            _ = shutdown(p[0], Int32(SHUT_WR)); _ = shutdown(p[1], Int32(SHUT_RD))
            ours.append(p[1]); theirs.append(p[0]); input = p
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // First move the passed descriptors and the tether above every descriptor involved, so that
        // installing fd 3 cannot clobber a source that happens to be fd 4 (or the tether).
        let sources = descriptors + [tether[1]]
        let scratch = max(Self.tetherTarget, (sources + ours + theirs).max() ?? 0) + 1
        for (i, fd) in sources.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, scratch + Int32(i)) }
        if let input { posix_spawn_file_actions_adddup2(&actions, input[0], 0) } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if let out { posix_spawn_file_actions_adddup2(&actions, out[1], 1) } else { Self.redirect(&actions, 1, stdout) }
        if ownsStderrFile, let stderrPath {
            posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        } else {
            Self.redirect(&actions, 2, stderr)
        }
        for i in descriptors.indices { posix_spawn_file_actions_adddup2(&actions, scratch + Int32(i), 3 + Int32(i)) }
        posix_spawn_file_actions_adddup2(&actions, scratch + Int32(descriptors.count), Self.tetherTarget)
        // Nothing else of ours: descriptors without close-on-exec (the test runner's output pipe, ...)
        // held by a long-lived helper would keep their readers waiting for EOF.
        Self.addCloseFrom(&actions, Self.tetherTarget + 1)
        // The spawning thread's signal mask and handlers are the test runner's (most signals blocked):
        // the helpers get an empty mask and default dispositions.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        // The shell forks the watcher (holding only the tether, fd 9), then becomes the program. The
        // watcher waits on the tether: a line means the test reaped the program (nothing to do); EOF without one means the
        // test process is gone, so it removes the files and kills the program ($$: the shell's pid,
        // which is the program's). $1 is the space-separated list of files, the rest the command.
        let script = """
            files=$1
            shift
            ( if ! read -r _ <&9; then rm -f -- $files; kill -9 $$; fi ) </dev/null >/dev/null 2>&1 3<&- 4<&- 5<&- 6<&- 7<&- 8<&- &
            exec 9<&-
            exec "$@"
            """
        let logFile: [String] = if case .log = stderr, let log = stderrPath { [log] } else { [] }
        let files = (logFile + orphanFiles)
            .filter { !$0.contains(" ") }.joined(separator: " ")
        let argv = (["/bin/sh", "-c", script, "sh", files, path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/bin/sh", &actions, &attributes, argv, environ)
        guard rc == 0 else {
            cleanup()
            throw TestSupportError("posix_spawn /bin/sh for \(name): errno \(rc)")
        }
        pid = child
        tetherFD = tether[0]
        stdoutFD = out?[0] ?? -1
        stdoutEOF = out == nil
        stdinFD = input?[1] ?? -1
    }

    private static func redirect(_ actions: inout posix_spawn_file_actions_t, _ fd: Int32, _ output: Output) {
        switch output {
        case .file(let path, let append):
            posix_spawn_file_actions_addopen(&actions, fd, path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0o644)
        case .null:
            posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_WRONLY, 0)
        case .inherit, .pipe, .log:
            break
        }
    }

    /// `executable` if it is a path to an executable, else the first executable of that name in `PATH`.
    private static func resolve(_ executable: String) -> String? {
        if executable.contains("/") { return access(executable, X_OK) == 0 ? executable : nil }
        let search = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        for dir in search.split(separator: ":") where access("\(dir)/\(executable)", X_OK) == 0 {
            return "\(dir)/\(executable)"
        }
        return nil
    }

    /// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34+), looked up at run time because the
    /// Glibc module does not declare it.
    private static func addCloseFrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return }
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, lowest)
    }

    private static func socketPair() -> [Int32]? {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { return nil }
        return fds
    }

    deinit { terminate() }

    // MARK: input

    /// Writes `line` and a newline to the child's stdin (`stdin: .pipe`).
    public func writeLine(_ line: String) {
        guard stdinFD >= 0 else { return }
        let bytes = Array((line + "\n").utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(stdinFD, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            done += n
        }
    }

    /// Closes the child's stdin (it reads end of file).
    public func closeInput() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
    }

    // MARK: output

    /// The next line of stdout, waiting at most `timeout` seconds; nil at end of output or timeout.
    public func readLine(timeout: Double) -> String? {
        let deadline = Deadline(seconds: timeout)
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                transcript.append(line)
                return line
            }
            if stdoutEOF {
                guard !buffered.isEmpty else { return nil }
                let line = String(decoding: buffered, as: UTF8.self)
                buffered = []
                transcript.append(line)
                return line
            }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&pfd, 1, deadline.remainingMilliseconds)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { stdoutEOF = true; continue }
            buffered += chunk[..<n]
        }
    }

    /// Reads lines until one satisfies `match` (returned), or nil after `timeout` seconds or at EOF.
    /// Skipped lines are appended to `skipped`.
    public func waitForLine(timeout: Double, skipped: inout [String], _ match: (String) -> Bool) -> String? {
        let deadline = Deadline(seconds: timeout)
        while !deadline.expired || !buffered.isEmpty {
            guard let line = readLine(timeout: deadline.remainingSeconds) else { return nil }
            if match(line) { return line }
            skipped.append(line)
        }
        return nil
    }

    public func waitForLine(timeout: Double, _ match: (String) -> Bool) -> String? {
        var skipped: [String] = []
        return waitForLine(timeout: timeout, skipped: &skipped, match)
    }

    /// Reads lines until one contains `text` (returned), or nil after `timeout` seconds or at EOF.
    /// Skipped lines are appended to `skipped`.
    public func waitForLine(containing text: String, timeout: Double, skipped: inout [String]) -> String? {
        waitForLine(timeout: timeout, skipped: &skipped) { $0.contains(text) }
    }

    public func waitForLine(containing text: String, timeout: Double) -> String? {
        waitForLine(timeout: timeout) { $0.contains(text) }
    }

    /// The stdout file's contents ("" unless stdout went to a file).
    public var output: String { stdoutPath.flatMap { TestFiles.read($0) } ?? "" }

    /// The stderr file's contents ("" unless stderr went to a file or the log).
    public var errorOutput: String { stderrPath.flatMap { TestFiles.read($0) } ?? "" }

    /// The last `maxBytes` of the program's stderr file or log (for failure messages).
    public func logTail(maxBytes: Int = 2000) -> String {
        guard let stderrPath else { return "" }
        let fd = open(stderrPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        _ = lseek(fd, max(0, size - off_t(maxBytes)), SEEK_SET)
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        let n = read(fd, &bytes, maxBytes)
        return n > 0 ? String(decoding: bytes[..<n], as: UTF8.self) : ""
    }

    /// Waits until the stdout file (or with `inErrorOutput` the stderr file) contains `text`; false
    /// if the program exits first without printing it, or `timeout` seconds pass.
    public func waitForOutput(_ text: String, inErrorOutput: Bool = false, timeout: Double = 10) -> Bool {
        let deadline = Deadline(seconds: timeout)
        while !deadline.expired {
            if (inErrorOutput ? errorOutput : output).contains(text) { return true }
            if !isRunning { return (inErrorOutput ? errorOutput : output).contains(text) }
            usleep(10_000)
        }
        return false
    }

    /// What the program printed so far, and its stderr: for the comment of a failed expectation.
    public var diagnostics: String {
        let out = stdoutPath != nil ? String(output.suffix(3000)) : transcript.joined(separator: "\n")
        return "[\(name) pid \(pid) \(status.map { "\($0)" } ?? "running")]\nstdout:\n\(out)\nstderr:\n\(logTail(maxBytes: 4000))"
    }

    // MARK: lifetime

    /// Reaps the program if it has exited (without waiting): its status, or nil while it runs.
    @discardableResult
    public func poll() -> ExitStatus? {
        if let status { return status }
        var raw: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &raw, WNOHANG) } while r < 0 && errno == EINTR
        if r == pid { reaped(raw) }
        return status
    }

    /// True while the program has not exited.
    public var isRunning: Bool { poll() == nil }

    /// Records the status and tells the watcher (the pid is free from now on: it must not kill it).
    private func reaped(_ raw: Int32) {
        status = ExitStatus(waitStatus: raw)
        if tetherFD >= 0 {
            _ = Glibc.send(tetherFD, "reaped\n", 7, Int32(MSG_NOSIGNAL))
            close(tetherFD)
            tetherFD = -1
        }
    }

    /// Waits up to `timeout` seconds for the program to exit, without reading its output; nil when it
    /// is still running at the deadline (it is left running).
    @discardableResult
    public func waitForExit(timeout: Double) -> ExitStatus? {
        let deadline = Deadline(seconds: timeout)
        while true {
            if let s = poll() { return s }
            if deadline.expired { return nil }
            usleep(5_000)
        }
    }

    /// Waits up to `timeout` seconds for the program to exit, reading its remaining stdout.
    /// - Returns: its exit status (128 + signal when killed) and every line it printed that was not
    ///   read yet; nil when it is still running at the deadline (it is left running).
    public func wait(timeout: Double) -> (status: Int32, output: String)? {
        let deadline = Deadline(seconds: timeout)
        var lines: [String] = []
        while !stdoutEOF && !deadline.expired {
            if let line = readLine(timeout: deadline.remainingSeconds) { lines.append(line) }
        }
        while let line = readLine(timeout: 0) { lines.append(line) }
        while isRunning {
            if deadline.expired { return nil }
            usleep(10_000)
        }
        return (status!.code, lines.joined(separator: "\n"))
    }

    /// Waits for exit (bounded by `timeout` seconds) and collects the rest of stdout. On timeout the
    /// program is killed and the status is nil.
    public func finish(timeout: Double) -> (status: ExitStatus?, output: [String]) {
        let start = transcript.count
        let deadline = Deadline(seconds: timeout)
        while !deadline.expired {
            if readLine(timeout: min(0.1, deadline.remainingSeconds)) != nil { continue }
            if stdoutEOF { break }
            if poll() != nil { // exited: take what is left in the pipe, without waiting for EOF
                while readLine(timeout: 0.05) != nil {}
                break
            }
        }
        var s = waitForExit(timeout: max(0.05, deadline.remainingSeconds))
        if s == nil {
            kill(SIGKILL)
            waitForExit(timeout: 5)
            s = nil
        }
        return (s, Array(transcript[start...]))
    }

    /// Sends `signal` to the program, if it is still running.
    public func kill(_ signal: Int32 = SIGKILL) {
        if isRunning { _ = Glibc.kill(pid, signal) }
    }

    /// Sends `signal`, then SIGKILL if the program is still running after `grace` seconds.
    /// - Returns: how it ended on `signal` (or before), nil when it had to be killed.
    @discardableResult
    public func stop(_ signal: Int32 = SIGTERM, grace: Double = 5) -> ExitStatus? {
        if let status { return status }
        kill(signal)
        if let s = waitForExit(timeout: grace) { return s }
        kill(SIGKILL)
        reapBlocking()
        return nil
    }

    private func reapBlocking() {
        guard status == nil else { return }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        reaped(raw)
    }

    /// Kills the program (SIGKILL), reaps it, closes our descriptors and removes the log. Idempotent.
    public func terminate() {
        guard !terminated else { return }
        terminated = true
        kill(SIGKILL)
        reapBlocking()
        if stdoutFD >= 0 { close(stdoutFD); stdoutFD = -1 }
        closeInput()
        if ownsStderrFile, let stderrPath { unlink(stderrPath) }
    }

    // MARK: running to completion

    /// What a program run to completion did.
    public struct Result: CustomStringConvertible, Sendable {
        public let command: String
        /// nil: killed after the timeout.
        public let status: ExitStatus?
        public let output: String
        public let errorOutput: String
        public var succeeded: Bool { status == .exited(0) }
        public var description: String {
            "$ \(command)\nstatus: \(status.map { "\($0)" } ?? "killed after timeout")\nstdout: \(output.suffix(3000))\nstderr: \(errorOutput.suffix(3000))"
        }
    }

    /// Runs a program to completion, killing it after `timeout` seconds, and returns its status and
    /// output (from the pipe or the files, as directed).
    public static func run(_ executable: String, _ arguments: [String], name: String? = nil,
                           stdout: Output = .pipe, stderr: Output = .log, timeout: Double) throws(TestSupportError) -> Result {
        let p = try ChildProcess(executable, arguments, name: name, stdout: stdout, stderr: stderr)
        defer { p.terminate() }
        let (status, lines) = p.finish(timeout: timeout)
        let output = p.stdoutPath == nil ? lines.joined(separator: "\n") : p.output
        return Result(command: ([executable] + arguments).joined(separator: " "), status: status,
                      output: output, errorOutput: p.errorOutput)
    }

    /// Parses "key=value key=value" (on one line or several; later ones win) into a dictionary.
    public static func fields(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for part in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
        }
        return result
    }
}

public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
