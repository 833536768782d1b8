import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// Runs a program with its sockets on the stack: sets LD_PRELOAD to libsocket-offload-preload.so
/// (found next to this executable) and the server path, then replaces itself with the program.
@main
struct SocketOffloadRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-offload-run",
        abstract: "Run an unmodified program with its TCP and UDP sockets on the socket-offload stack.",
        discussion: """
            Sets LD_PRELOAD to libsocket-offload-preload.so (next to this executable; it loads \
            libSocketClientDynamic.so from the same directory) and SOCKET_SERVER_PATH, then executes \
            PROGRAM with ARGS. The program's AF_INET and AF_INET6 stream and datagram sockets are the \
            stack's; every other descriptor (files, pipes, AF_UNIX, netlink, raw sockets) stays the \
            kernel's, and so does the name resolver's traffic inside libc. Children the program \
            starts inherit the environment. Exit status: the program's; 127 when it cannot be \
            executed. With no server at the path, the program's first stack socket fails (ENOENT or \
            ECONNREFUSED) and the library says so in one line on standard error. Does not work for \
            static binaries, programs that make system calls without libc (Go), setuid programs \
            (the loader ignores LD_PRELOAD for them) and io_uring.
            """
    )

    @Option(help: ArgumentHelp("The server's socket path (default: $SOCKET_SERVER_PATH, else the server's default).", valueName: "path"))
    var socketPath: String?

    @Option(help: ArgumentHelp("Which sockets go to the stack: tcp, udp or tcp,udp; the others stay on the kernel.", valueName: "types"))
    var types: String = "tcp,udp"

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments (after --, or the first word not an option).", valueName: "program"))
    var command: [String] = []

    func validate() throws {
        // The launcher's own help, unless after "--" (then it is the program's).
        if command.first == "--help" || command.first == "-h" { throw CleanExit.helpRequest(self) }
        let words = command.first == "--" ? Array(command.dropFirst()) : command
        guard !words.isEmpty else { throw ValidationError("no program given") }
        let kinds = types.split(separator: ",").map(String.init)
        guard !kinds.isEmpty, kinds.allSatisfy({ $0 == "tcp" || $0 == "udp" }) else { throw ValidationError("--types must be tcp, udp or tcp,udp") }
    }

    func run() throws {
        let words = command.first == "--" ? Array(command.dropFirst()) : command
        let library = Self.directory() + "/libsocket-offload-preload.so"
        guard access(library, R_OK) == 0 else {
            printError("socket-offload-run: \(library) not found (build the socket-offload-preload product)")
            throw ExitCode(127)
        }
        let existing = getenv("LD_PRELOAD").map { String(cString: $0) } ?? ""
        setenv("LD_PRELOAD", existing.isEmpty ? library : library + ":" + existing, 1)
        if let socketPath { setenv("SOCKET_SERVER_PATH", socketPath, 1) }
        setenv("SOCKET_OFFLOAD_TYPES", types, 1)
        var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) }
        argv.append(nil)
        execvp(words[0], &argv)
        printError("socket-offload-run: cannot execute \(words[0]): \(String(cString: strerror(errno)))")
        throw ExitCode(127)
    }

    func printError(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// The directory of this executable.
    static func directory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "." }
        let path = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    }
}
