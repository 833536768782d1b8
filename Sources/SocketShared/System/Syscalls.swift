#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` (a libc call returning -1 + errno on failure), retrying EINTR.
/// - Throws: `SharedError.system` for every errno.
@inline(__always)
@discardableResult
public func syscall<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws(SharedError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = errno
        if err == EINTR { continue }
        throw SharedError.system(name, Errno(err))
    }
}

/// Waits until `fd` reports one of `events`, or `timeoutMilliseconds` pass (-1 = forever).
/// - Returns: the returned events, or 0 on timeout.
public func pollOne(_ fd: Int32, events: Int16, timeoutMilliseconds: Int32) throws(SharedError) -> Int16 {
    var pfd = pollfd(fd: fd, events: events, revents: 0)
    let n = try syscall("poll") { poll(&pfd, 1, timeoutMilliseconds) }
    return n == 0 ? 0 : pfd.revents
}

/// Monotonic time in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// `POLLRDHUP` (Linux; hidden behind _GNU_SOURCE in Glibc's Swift module).
public let POLLRDHUP_: Int16 = 0x2000
