import TestSupport
import Testing

/// Python's http.server serving files and curl fetching them, both under the launcher.
@Suite struct HTTPTests {
    static let mebibyte = 1 << 20

    @Test("curl fetches 1 MiB and 100 MiB files from python3 -m http.server, SHA-256 equal")
    func oneAndHundredMiB() throws {
        let web = try FileServer("http-big", files: [("one.bin", Self.mebibyte), ("hundred.bin", 100 * Self.mebibyte)])
        defer { web.stack.finish() }
        try web.fetch("one.bin", copies: 1)
        try web.fetch("hundred.bin", copies: 1)
        web.expectSessions()
    }

    /// http.server listens with a backlog of 5 (socketserver's request_queue_size): connections beyond
    /// it must wait until it accepts (Linux drops their SYNs and the clients send them again), not be
    /// refused.
    @Test("20 curls at once fetch a 1 MiB file from python3 -m http.server, all SHA-256 equal")
    func twentyAtOnce() throws {
        let web = try FileServer("http-many", files: [("one.bin", Self.mebibyte)])
        defer { web.stack.finish() }
        try web.fetch("one.bin", copies: 20)
        web.expectSessions()
    }
}

/// A stack of the test's own with `python3 -m http.server` on it (127.0.0.1, a port of its own),
/// serving the test's directory, where random files are made first. `stack.finish()` stops it all.
final class FileServer {
    let stack: Offload
    let port = "\(TestPorts.next())"
    let http: ChildProcess
    private var curls: [ChildProcess] = []

    /// - Parameter files: names and sizes of the random files to serve.
    init(_ tag: String, files: [(String, Int)]) throws {
        stack = try Offload(tag)
        do {
            for (name, bytes) in files { _ = try stack.randomFile(name, bytes: bytes) }
            http = try stack.start([Offload.python, "-u", "-m", "http.server", port, "--bind", "127.0.0.1",
                                    "--directory", stack.directory.path], name: "http-server")
            try #require(http.waitForLine(containing: "Serving HTTP", timeout: 20) != nil,
                         "http.server did not start within 20 s\n\(Offload.describe(http))\nserver log:\n\(stack.server.log)")
            try Offload.expectNotInKernel(port: port)
        } catch {
            stack.finish()
            throw error
        }
    }

    /// Runs `copies` curls at once, each fetching the file `name` into a file of its own; expects each
    /// to exit 0 with the file's bytes.
    func fetch(_ name: String, copies: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let file = stack.directory.file(name)
        let outputs = (0..<copies).map { stack.directory.file("got-\($0)-\(name)") }
        let started = try outputs.enumerated().map { i, output in
            try stack.start(["curl", "-sS", "-o", output, "http://127.0.0.1:\(port)/\(name)"], name: "curl-\(i)", stdout: .null)
        }
        curls += started
        if let problem = stack.waitForExit(started, growing: outputs, expectedBytes: Offload.size(file) * copies, limit: 60) {
            Issue.record(Comment(rawValue: problem), sourceLocation: sourceLocation)
            return
        }
        for (curl, output) in zip(started, outputs) {
            #expect(curl.status == .exited(0), "\(Offload.describe(curl))", sourceLocation: sourceLocation)
            try Offload.expectSameBytes(file, output, "\(curl.name) fetching \(name)", sourceLocation: sourceLocation)
        }
    }

    /// Expects the server's log to show http.server's and every curl's session.
    func expectSessions(sourceLocation: SourceLocation = #_sourceLocation) {
        stack.expectSessions([http] + curls, sourceLocation: sourceLocation)
    }
}
