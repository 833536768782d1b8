#if canImport(Glibc)
import Glibc
#endif

/// An errno value with its system description.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }
    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(errno) }
    public var description: String {
        guard let text = strerror(rawValue) else { return "errno \(rawValue)" }
        return "\(String(cString: text)) (errno \(rawValue))"
    }
}

/// The error type of SocketShared: what failed, and why.
public struct SharedError: Error, Equatable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        /// A system call failed; `errno` says why.
        public static let systemCall = Code(name: "system call failed")
        /// Data read from shared memory broke an invariant (a peer scribbled on it).
        public static let corruptSharedState = Code(name: "corrupt shared state")
        /// A control message did not decode.
        public static let malformedMessage = Code(name: "malformed control message")
        /// The kernel refused cross-process memory access (ptrace permission).
        public static let notPermitted = Code(name: "cross-process memory access not permitted")
        /// The peer closed the connection.
        public static let peerClosed = Code(name: "peer closed")
        /// A request named something outside the allowed bounds.
        public static let outOfBounds = Code(name: "out of bounds")
        public var description: String { name }
    }

    public let code: Code
    /// What was being done, e.g. the name of the system call.
    public let operation: String
    public let errno: Errno?

    public init(_ code: Code, _ operation: String, errno: Errno? = nil) {
        self.code = code
        self.operation = operation
        self.errno = errno
    }

    /// A failed system call, capturing the current `errno`.
    public static func system(_ call: String, _ err: Errno = .current) -> SharedError {
        SharedError(.systemCall, call, errno: err)
    }

    public var description: String {
        if let errno { return "\(operation): \(code): \(errno)" }
        return "\(operation): \(code)"
    }
}
