import TestSupport

extension ServerProcess {
    /// A socket server the way these tests start one: logging at info level, in a fresh directory of
    /// its own (reachable by a client of another uid) unless `socketPath` is given, ready once it
    /// accepts connections (10 s at most), stopped with SIGTERM (SIGKILL after 5 s).
    convenience init(_ arguments: [String] = [], socketPath: String? = nil, logPath: String? = nil) throws {
        var directory: TestDirectory? = nil
        var socketPath = socketPath, logPath = logPath
        if socketPath == nil {
            let dir = try TestDirectory("sko-server")
            directory = dir
            socketPath = dir.file("server.sock")
            logPath = logPath ?? dir.file("server.log")
        }
        try self.init(tag: "server", arguments: ["--log-level", "info"] + arguments, socketPath: socketPath,
                      logPath: logPath ?? socketPath! + ".log", directory: directory, timeout: 10,
                      readiness: .accepting, stopGrace: 5)
    }
}
