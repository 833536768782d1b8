import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// A level-triggered epoll loop keyed by small integer tokens. Single-threaded: only the server's
/// stack thread uses it.
final class EventLoop {
    private let epfd: Int32
    private var events = [epoll_event](repeating: epoll_event(), count: 256)

    init() throws(SharedError) {
        epfd = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    deinit { close(epfd) }

    /// Watches `fd` for input (and hang-up/error, which epoll always reports).
    func add(_ fd: Int32, token: UInt64) throws(SharedError) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
        event.data.u64 = token
        try syscall("epoll_ctl(ADD)") { epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) }
    }

    /// Watches `fd` for output too (or no longer), besides input.
    func modify(_ fd: Int32, token: UInt64, writable: Bool) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        event.data.u64 = token
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event)
    }

    /// Stops watching `fd`. Call before closing it.
    func remove(_ fd: Int32) {
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
    }

    /// Waits up to `timeoutMilliseconds` (-1 = forever) and returns the ready tokens with their events.
    func wait(timeoutMilliseconds: Int32) -> [(token: UInt64, events: UInt32)] {
        let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, Int32($0.count), timeoutMilliseconds) }
        guard n > 0 else { return [] }
        return (0..<Int(n)).map { (events[$0].data.u64, events[$0].events) }
    }
}
