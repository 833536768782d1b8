#if canImport(Glibc)
import Glibc
#endif

/// A helper program (the socket server, an example, a test peer) running as a child of the test
/// process, with its stdout on a pipe the test reads line by line and its stderr in a log file.
///
/// Cleanup: `terminate()` (also run at deinit) kills the program with SIGKILL, reaps it and removes
/// the log. In case the test process itself dies first (a crash, a kill), the program is *tethered*:
/// it runs under a small `/bin/sh` supervisor that holds the read end of a socket whose other end only
/// the test process has; when that end closes, the supervisor kills the program. So no helper
/// outlives the test process, whatever happens to it.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked Sendable: used by one test at a time; `terminated` and the buffer are only touched
    // by the owning test.

    /// The program's own process id (not the supervisor's): for kill(2) and /proc.
    public let pid: pid_t
    /// A short name for messages.
    public let name: String
    /// Where the program's stderr goes.
    public let logPath: String
    private let supervisorPID: pid_t
    private let stdoutFD: Int32
    private let tetherFD: Int32
    private var buffered: [UInt8] = []
    private var stdoutEOF = false
    private var exitStatus: Int32?
    private var terminated = false

    /// Starts `executable` with `arguments`.
    /// - Parameters:
    ///   - executable: an absolute path (see `TestBinaries.path(_:)`).
    ///   - name: used in the log file name and messages (default: the executable's last component).
    ///   - orphanFiles: files (paths without spaces) the supervisor removes, with the log, if the test
    ///     process dies first, e.g. a server's socket file. Normally the test removes them itself.
    public init(_ executable: String, _ arguments: [String], name: String? = nil, orphanFiles: [String] = []) throws(TestSupportError) {
        let name = name ?? String(executable.split(separator: "/").last ?? "child")
        self.name = name
        logPath = TestNames.uniquePath(name, suffix: "log")
        guard access(executable, X_OK) == 0 else {
            throw TestSupportError("\(executable) is not an executable (build with `swift build --build-tests`)")
        }
        // socketpair rather than pipe: SOCK_CLOEXEC makes the descriptors close-on-exec atomically, so
        // helpers that other tests spawn at the same moment cannot inherit them (an inherited write
        // end would keep our reads from ever seeing EOF). pipe2 is not visible to Swift here.
        let out = try Self.socketPair()   // [0]: ours (read), [1]: the child's stdout
        let tether = try Self.socketPair() // [0]: ours (held), [1]: the supervisor's stdin
        let pidPipe = try Self.socketPair() // [0]: ours (read), [1]: the supervisor reports the pid
        defer { close(out[1]); close(tether[1]) } // pidPipe[1] is closed below, before reading
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard log >= 0 else {
            let err = errno
            [out[0], tether[0], pidPipe[0]].forEach { _ = close($0) }
            throw TestSupportError("cannot create \(logPath): errno \(err)")
        }
        defer { close(log) }

        // The supervisor: starts the program, reports its pid on fd 4, waits for it and exits with its
        // status; a subshell waits for EOF on the tether (fd 3) and then removes the orphan files and
        // kills the program. (Asynchronous lists get /dev/null as stdin unless redirected, hence the
        // explicit fd 3.) $1 is the space-separated list of files, the rest the command.
        let script = """
            files=$1
            shift
            exec 3<&0 </dev/null
            "$@" 3<&- 4>&- &
            c=$!
            echo "$c" >&4
            exec 4>&-
            ( read -r _ <&3; rm -f -- $files; kill -9 "$c" 2>/dev/null ) &
            w=$!
            exec 3<&-
            wait "$c"
            rc=$?
            kill "$w" 2>/dev/null
            exit "$rc"
            """
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, tether[1], 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        posix_spawn_file_actions_adddup2(&actions, pidPipe[1], 4)
        // Nothing else of ours: descriptors without close-on-exec (the test runner's output pipe, ...)
        // held by a long-lived helper would keep their readers waiting for EOF.
        Self.addCloseFrom(&actions, 5)
        // The spawning thread's signal mask and handlers are the test runner's (most signals blocked):
        // the supervisor needs SIGCHLD to notice its program exit, and the helpers default signals.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let files = ([logPath] + orphanFiles).filter { !$0.contains(" ") }.joined(separator: " ")
        let argv = (["/bin/sh", "-c", script, "sh", files, executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var shell: pid_t = 0
        let rc = posix_spawn(&shell, "/bin/sh", &actions, &attributes, argv, environ)
        guard rc == 0 else {
            [out[0], tether[0], pidPipe[0]].forEach { _ = close($0) }
            unlink(logPath)
            throw TestSupportError("posix_spawn /bin/sh for \(name): errno \(rc)")
        }
        supervisorPID = shell
        stdoutFD = out[0]
        tetherFD = tether[0]
        // The program's pid: one line on the pid pipe, which closes right after.
        close(pidPipe[1])
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(pidPipe[0], &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            text += chunk[..<n]
        }
        close(pidPipe[0])
        let digits = String(decoding: text, as: UTF8.self).filter(\.isNumber)
        guard let child = pid_t(digits), child > 0 else {
            Glibc.kill(shell, SIGKILL)
            var status: Int32 = 0
            while waitpid(shell, &status, 0) < 0 && errno == EINTR {}
            close(out[0]); close(tether[0]); unlink(logPath)
            throw TestSupportError("the supervisor of \(name) did not report a pid")
        }
        pid = child
    }

    /// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34+), looked up at run time because the
    /// Glibc module does not declare it.
    private static func addCloseFrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return }
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, lowest)
    }

    private static func socketPair() throws(TestSupportError) -> [Int32] {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw TestSupportError("socketpair: errno \(errno)")
        }
        return fds
    }

    deinit { terminate() }

    // MARK: output

    /// The next line of stdout, waiting at most `timeout` seconds; nil at end of output or timeout.
    public func readLine(timeout: Double) -> String? {
        let deadline = Deadline(seconds: timeout)
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                return line
            }
            if stdoutEOF {
                guard !buffered.isEmpty else { return nil }
                defer { buffered = [] }
                return String(decoding: buffered, as: UTF8.self)
            }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, deadline.remainingMilliseconds)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { stdoutEOF = true; continue }
            buffered += chunk[..<n]
        }
    }

    /// Reads lines until one contains `text` (returned), or nil after `timeout` seconds or at EOF.
    /// Skipped lines are appended to `skipped`.
    public func waitForLine(containing text: String, timeout: Double, skipped: inout [String]) -> String? {
        let deadline = Deadline(seconds: timeout)
        while !deadline.expired || !buffered.isEmpty {
            guard let line = readLine(timeout: deadline.remainingSeconds) else { return nil }
            if line.contains(text) { return line }
            skipped.append(line)
        }
        return nil
    }

    public func waitForLine(containing text: String, timeout: Double) -> String? {
        var skipped: [String] = []
        return waitForLine(containing: text, timeout: timeout, skipped: &skipped)
    }

    /// The last `maxBytes` of the program's stderr (for failure messages).
    public func logTail(maxBytes: Int = 2000) -> String {
        let fd = open(logPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        _ = lseek(fd, max(0, size - off_t(maxBytes)), SEEK_SET)
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        let n = read(fd, &bytes, maxBytes)
        return n > 0 ? String(decoding: bytes[..<n], as: UTF8.self) : ""
    }

    // MARK: lifetime

    /// True while the program has not exited (it may be a zombie awaiting its supervisor).
    public var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let r = waitpid(supervisorPID, &status, WNOHANG)
        if r == supervisorPID {
            exitStatus = Self.decode(status)
            return false
        }
        return true
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
        return (exitStatus!, lines.joined(separator: "\n"))
    }

    /// Sends `signal` to the program (not to its supervisor).
    public func kill(_ signal: Int32 = SIGKILL) {
        if isRunning { _ = Glibc.kill(pid, signal) }
    }

    /// Kills the program (SIGKILL), reaps it, closes our descriptors and removes the log. Idempotent.
    public func terminate() {
        guard !terminated else { return }
        terminated = true
        kill(SIGKILL)
        if exitStatus == nil {
            var status: Int32 = 0
            while waitpid(supervisorPID, &status, 0) < 0 && errno == EINTR {}
            exitStatus = Self.decode(status)
        }
        close(stdoutFD)
        close(tetherFD)
        unlink(logPath)
    }

    private static func decode(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Parses "key=value key=value" into a dictionary.
    public static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for part in line.split(separator: " ") {
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
