import CShims
import SocketShared
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Builds the client socket for a stream channel (a fresh TCP socket or an accepted connection).
func makeStreamSocket(_ connection: ServerConnection, _ info: ChannelInfo, domain: Int32, type: Int32, fd: Int32, stackFD: Int32) throws(Errno) -> ClientSocket {
    try StreamSocket(connection: connection, info: info, domain: domain, type: type, fd: fd, stackFD: stackFD)
}

/// Client side of a TCP socket: two byte rings. We produce into the send ring and consume the
/// receive ring. Connection state comes from the channel's event bits, set by the server.
final class StreamSocket: ClientSocket, @unchecked Sendable {
    // @unchecked Sendable: `receiveRing` is used under receiveLock, `sendRing` under sendLock,
    // `state` is a Mutex, the rest is atomic.
    private let receiveRing: StreamRingConsumer
    private let sendRing: StreamRingProducer

    /// Linux's socket states as the app sees them. A failed attempt is `.connecting` with the
    /// channel's error bit set (Linux: SS_CONNECTING over a socket in CLOSE): the next connect
    /// reports the error (or ECONNABORTED) and the socket is `.fresh` again.
    enum State { case fresh, connecting, connected, listening }
    private let state = Mutex<State>(.fresh)
    /// The connection's error (reset, refused...) was reported once (by a call or SO_ERROR);
    /// later calls see EOF / EPIPE, and POLLERR is gone.
    private let errorReported = Atomic<Bool>(false)
    /// The directions the app shut (1: SHUT_RD, 2: SHUT_WR), as Linux's sk_shutdown: a shutdown
    /// of an unconnected socket fails with ENOTCONN and is recorded all the same.
    private let localShutdown = Atomic<UInt8>(0)
    /// A non-blocking connect whose outcome the app has not learnt from `connect`: once it has
    /// completed, the next connect returns 0 (then EISCONN), as on Linux.
    private let connectOutcomePending = Atomic<Bool>(false)

    private static let shutRead: UInt8 = 1
    private static let shutWrite: UInt8 = 2

    override init(connection: ServerConnection, info: ChannelInfo, domain: Int32, type: Int32, fd: Int32, stackFD: Int32) throws(Errno) {
        guard info.kind == .stream, info.receiveSize > 0, info.sendSize > 0 else { throw Errno(EPROTO) }
        let view = try ChannelView(connection: connection, info: info)
        receiveRing = view.streamConsumer(receive: true, capacity: Int(info.receiveSize))
        sendRing = view.streamProducer(receive: false, capacity: Int(info.sendSize))
        try super.init(connection: connection, info: info, domain: domain, type: type, fd: fd, stackFD: stackFD)
        if view.events & CSHIMS_EV_CONNECTED != 0 { state.withLock { $0 = .connected } }
    }

    /// After exec: the old image's socket was listening.
    func adoptListening() { state.withLock { $0 = .listening } }

    /// The current state, advanced from `.connecting` by the server's event bits.
    private func currentState() -> State {
        state.withLock { s in
            if s == .connecting {
                let events = view.events
                if events & CSHIMS_EV_CONNECTED != 0 { s = .connected }
            }
            return s
        }
    }

    /// The connection's error, reported once; nil when there is none (or it was reported).
    private func takeError() -> Errno? {
        guard view.events & CSHIMS_EV_ERROR != 0 else { return nil }
        guard !errorReported.exchange(true, ordering: .acquiringAndReleasing) else { return nil }
        let code = view.pendingError
        return Errno(code != 0 ? code : ECONNRESET)
    }

    private var failed: Bool { view.events & CSHIMS_EV_ERROR != 0 }

    /// SO_ERROR: the pending error, taken (0 when there is none).
    override func takeSocketError() -> Int32? { takeError()?.rawValue ?? 0 }

    /// The socket is unconnected again (a failed attempt reported, a disconnect, a listener shut
    /// down). Bytes left in the receive ring belonged to the old connection: they are dropped.
    private func becomeFresh(errorTaken: Bool) {
        state.withLock { $0 = .fresh }
        localShutdown.store(0, ordering: .relaxed)
        connectOutcomePending.store(false, ordering: .relaxed)
        errorReported.store(errorTaken, ordering: .relaxed)
        receiveLock.withLock {
            if let n = try? receiveRing.available(), n > 0 { receiveRing.consume(n) }
        }
    }

    /// The outcome of a failed attempt, for the connect that learns of it: the error, or
    /// ECONNABORTED when SO_ERROR (or another call) took it first (Linux's sock_error path).
    private func failedAttempt() -> Errno {
        let err = takeError() ?? Errno(ECONNABORTED)
        becomeFresh(errorTaken: true)
        return err
    }

    // MARK: connect, listen, accept

    override func connect(to address: SocketAddress) throws(Errno) {
        if address.family == .unspecified {
            // Disconnect (Linux's tcp_disconnect): a connection is reset, an attempt abandoned.
            _ = try request(.connect(handle: info.handle, address: address))
            becomeFresh(errorTaken: false)
            gate.release()
            return
        }
        switch currentState() {
        case .connected:
            if connectOutcomePending.exchange(false, ordering: .relaxed) { return }
            throw Errno(EISCONN)
        case .connecting:
            if failed { throw failedAttempt() }
            throw Errno(EALREADY)
        case .listening: throw Errno(EISCONN)
        case .fresh: break
        }
        errorReported.store(false, ordering: .relaxed)
        localShutdown.store(0, ordering: .relaxed)
        // Unwritable until the server reports the outcome (POLLOUT then means "connect finished").
        eventLock.withLock { gate.block() }
        let reply: Reply
        do {
            (reply, _) = try connection.request(.connect(handle: info.handle, address: address)).self
        } catch {
            gate.release()
            throw error
        }
        switch reply {
        case .error(EINPROGRESS), .ok:
            state.withLock { $0 = .connecting }
        case .error(let err):
            gate.release()
            throw Errno(err)
        default:
            gate.release()
            throw Errno(EPROTO)
        }
        if nonBlocking.load(ordering: .relaxed) {
            connectOutcomePending.store(true, ordering: .relaxed)
            throw Errno(EINPROGRESS)
        }
        let deadline = self.deadline(sendTimeout.load(ordering: .relaxed))
        while true {
            if currentState() == .connected { return }
            if failed { throw failedAttempt() }
            try checkServer()
            do {
                try waitFor(Int16(POLLOUT), until: deadline)
            } catch where error.rawValue == EAGAIN {
                // SO_SNDTIMEO elapsed: the connect goes on in the background.
                connectOutcomePending.store(true, ordering: .relaxed)
                throw Errno(EINPROGRESS)
            }
        }
    }

    func listen(backlog: Int32) throws(Errno) {
        let s = currentState()
        guard s == .fresh || s == .listening else { throw Errno(EINVAL) }
        _ = try request(.listen(handle: info.handle, backlog: backlog))
        state.withLock { $0 = .listening }
    }

    func accept(flags: Int32) throws(Errno) -> (StreamSocket, SocketAddress) {
        guard currentState() == .listening else { throw Errno(EINVAL) }
        let dontWait = nonBlocking.load(ordering: .relaxed)
        let deadline = self.deadline(receiveTimeout.load(ordering: .relaxed))
        while true {
            try checkServer()
            let (reply, fds) = try connection.request(.accept(handle: info.handle, flags: flags))
            switch reply {
            case .accepted(_, let peer):
                let s = try makeSocket(connection, reply, fds, domain: domain, type: type)
                guard let stream = s as? StreamSocket else { throw Errno(EPROTO) }
                stream.nonBlocking.store(flags & Int32(SOCK_NONBLOCK.rawValue) != 0, ordering: .relaxed)
                if view.pendingAccepts == 0 { _ = try acknowledgeAndRecheck({ view.pendingAccepts > 0 }) }
                return (stream, peer)
            case .error(EAGAIN):
                for fd in fds { Glibc.close(fd) }
                if try acknowledgeAndRecheck({ view.pendingAccepts > 0 }) { continue }
                if dontWait {
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                try waitFor(Int16(POLLIN), until: deadline)
            case .error(let err):
                for fd in fds { Glibc.close(fd) }
                // EINVAL: the listener was shut down (it is an unconnected socket now).
                if err == EINVAL { state.withLock { if $0 == .listening { $0 = .fresh } } }
                throw Errno(err)
            default:
                for fd in fds { Glibc.close(fd) }
                throw Errno(EPROTO)
            }
        }
    }

    // MARK: send

    override func send(_ buffers: [UnsafeRawBufferPointer], to address: SocketAddress?, flags: Int32) throws(Errno) -> Int {
        let length = buffers.reduce(0) { $0 + $1.count }
        let dontWait = flags & Int32(MSG_DONTWAIT) != 0 || nonBlocking.load(ordering: .relaxed)
        let deadline = self.deadline(sendTimeout.load(ordering: .relaxed))
        return try sendLock.withLock { () throws(Errno) -> Int in
            var remaining = buffers.filter { $0.count > 0 }
            var total = 0
            while true {
                if let err = takeError() {
                    if total > 0 { return total }
                    throw err
                }
                if localShutdown.load(ordering: .relaxed) & Self.shutWrite != 0 || failed || view.events & CSHIMS_EV_WRITE_SHUT != 0 {
                    if total > 0 { return total }
                    throw Errno(EPIPE)
                }
                switch currentState() {
                case .connected: break
                case .connecting:
                    if dontWait {
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                    try waitFor(Int16(POLLOUT), until: deadline)
                    continue
                case .fresh, .listening:
                    throw Errno(EPIPE)
                }
                if length == 0 { return 0 }
                let n: Int
                do { n = try sendRing.write(remaining) } catch { throw Errno(EPROTO) }
                if n > 0 {
                    total += n
                    toStack.notify()
                    if total == length { return total }
                    remaining = Self.advance(remaining, by: n)
                    continue
                }
                try checkServer()
                if try blockUntilRoom({ () throws(Errno) -> Bool in
                    do { return try sendRing.freeSpace() > 0 } catch { throw Errno(EPROTO) }
                }) { continue }
                if dontWait {
                    if total > 0 { return total }
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                do throws(Errno) {
                    try waitFor(Int16(POLLOUT), until: deadline)
                } catch {
                    if error.rawValue == EAGAIN && total > 0 { return total }
                    throw error
                }
            }
        }
    }

    private static func advance(_ buffers: [UnsafeRawBufferPointer], by n: Int) -> [UnsafeRawBufferPointer] {
        var skip = n
        var out: [UnsafeRawBufferPointer] = []
        for b in buffers {
            if skip >= b.count { skip -= b.count; continue }
            out.append(UnsafeRawBufferPointer(rebasing: b[skip...]))
            skip = 0
        }
        return out
    }

    // MARK: receive

    override func receive(_ buffers: [UnsafeMutableRawBufferPointer], flags: Int32) throws(Errno) -> (count: Int, full: Int, from: SocketAddress?, truncated: Bool) {
        let peek = flags & Int32(MSG_PEEK) != 0
        let waitAll = flags & Int32(MSG_WAITALL) != 0 && !peek
        let dontWait = flags & Int32(MSG_DONTWAIT) != 0 || nonBlocking.load(ordering: .relaxed)
        let deadline = self.deadline(receiveTimeout.load(ordering: .relaxed))
        let wanted = buffers.reduce(0) { $0 + $1.count }
        let n = try receiveLock.withLock { () throws(Errno) -> Int in
            switch currentState() {
            case .listening: throw Errno(ENOTCONN)
            case .fresh:
                if localShutdown.load(ordering: .relaxed) & Self.shutRead != 0 { return 0 }
                throw Errno(ENOTCONN)
            case .connecting, .connected: break
            }
            var total = 0
            while true {
                let available: Int
                do { available = try receiveRing.available() } catch { throw Errno(EPROTO) }
                if available > 0 && total < wanted {
                    let n: Int
                    do { n = try receiveRing.read(into: Self.advance(buffers, by: total), peek: peek) } catch { throw Errno(EPROTO) }
                    total += n
                    if !peek {
                        if view.takeStackWants(CSHIMS_WANTS_RX_PROGRESS) != 0 { toStack.notify() }
                        // Drained: clear the descriptor's readability now (it stays readable at EOF
                        // or on an error), so poll reports POLLIN exactly while there is data.
                        if try readable() == false { _ = try acknowledgeAndRecheck(readable) }
                    }
                    if !waitAll || total == wanted { return total }
                    continue
                }
                // A 0-byte read waits like any other (Linux's target is one byte), and returns 0.
                if wanted == 0 && available > 0 { return 0 }
                let events = view.events
                if events & CSHIMS_EV_ERROR != 0 {
                    if total > 0 { return total }
                    if let err = takeError() { throw err }
                    return 0
                }
                if events & CSHIMS_EV_READ_EOF != 0 || localShutdown.load(ordering: .relaxed) & Self.shutRead != 0 { return total }
                if total > 0 && !waitAll { return total }
                try checkServer()
                if try acknowledgeAndRecheck(readable) { continue }
                if dontWait {
                    if total > 0 { return total }
                    try checkServerBeforeEAGAIN()
                    throw Errno(EAGAIN)
                }
                do throws(Errno) {
                    try waitFor(Int16(POLLIN), until: deadline)
                } catch {
                    if error.rawValue == EAGAIN && total > 0 { return total }
                    throw error
                }
            }
        }
        return (n, n, nil, false)
    }

    /// Whether a read would not block: data, end of stream or an error.
    private func readable() throws(Errno) -> Bool {
        do { return try receiveRing.available() > 0 || view.events & (CSHIMS_EV_READ_EOF | CSHIMS_EV_ERROR) != 0 } catch { throw Errno(EPROTO) }
    }

    private static func advance(_ buffers: [UnsafeMutableRawBufferPointer], by n: Int) -> [UnsafeMutableRawBufferPointer] {
        var skip = n
        var out: [UnsafeMutableRawBufferPointer] = []
        for b in buffers {
            if skip >= b.count { skip -= b.count; continue }
            out.append(UnsafeMutableRawBufferPointer(rebasing: b[skip...]))
            skip = 0
        }
        return out
    }

    override var waitsForRoomWithGate: Bool { currentState() == .connected }

    /// Readiness as Linux's tcp_poll computes it: POLLHUP once both directions are shut (or the
    /// socket is in CLOSE), POLLIN|POLLRDHUP once the read side is (the peer's FIN or our SHUT_RD),
    /// POLLERR while an error waits to be taken, POLLOUT while a third of the send ring is free
    /// (Linux's sk_stream_is_writeable; the server releases the writability gate by the same rule),
    /// and RDNORM/WRNORM alongside IN/OUT.
    override func readiness() -> Int16 {
        if connection.isDead { return super.readiness() }
        let events = view.events
        let failed = events & CSHIMS_EV_ERROR != 0
        let shut = localShutdown.load(ordering: .relaxed)
        let state = currentState()
        var r: Int16 = 0
        switch state {
        case .listening:
            if view.pendingAccepts > 0 { r |= Int16(POLLIN) }
        case .fresh:
            r |= Int16(POLLOUT | POLLHUP) // CLOSE
            if shut & Self.shutRead != 0 { r |= Int16(POLLIN) | POLLRDHUP_ }
        case .connecting:
            // A failed attempt: CLOSE with both directions shut (tcp_done).
            if failed { r |= Int16(POLLIN | POLLOUT | POLLHUP) | POLLRDHUP_ }
        case .connected:
            let readClosed = failed || events & CSHIMS_EV_READ_EOF != 0 || shut & Self.shutRead != 0
            let writeClosed = failed || events & CSHIMS_EV_WRITE_SHUT != 0 || shut & Self.shutWrite != 0
            if receiveRing.sharedAvailable() > 0 || readClosed { r |= Int16(POLLIN) }
            if readClosed { r |= POLLRDHUP_ }
            if (readClosed && writeClosed) || events & CSHIMS_EV_HUP != 0 { r |= Int16(POLLHUP) }
            if writeClosed || 3 * sendRing.sharedFreeSpace() >= Int(info.sendSize) { r |= Int16(POLLOUT) }
        }
        if failed && !errorReported.load(ordering: .relaxed) && state != .fresh { r |= Int16(POLLERR) }
        if r & Int16(POLLIN) != 0 { r |= Int16(POLLRDNORM) }
        if r & Int16(POLLOUT) != 0 { r |= Int16(POLLWRNORM) }
        return r
    }

    override func bytesUnsent() throws(Errno) -> Int {
        if currentState() == .listening { throw Errno(EINVAL) }
        return Int(info.sendSize) - sendRing.sharedFreeSpace()
    }

    override func bytesReadable() throws(Errno) -> Int {
        if currentState() == .listening { throw Errno(EINVAL) }
        do { return try receiveRing.available() } catch { throw Errno(EPROTO) }
    }

    /// Linux's inet_shutdown, state by state.
    override func shutdown(_ how: Int32) throws(Errno) {
        let bits: UInt8 = how == SHUT_RD ? Self.shutRead : how == SHUT_WR ? Self.shutWrite : Self.shutRead | Self.shutWrite
        switch currentState() {
        case .fresh:
            localShutdown.bitwiseOr(bits, ordering: .relaxed)
            throw Errno(ENOTCONN)
        case .listening:
            // SHUT_RD stops listening (a blocked accept fails with EINVAL); SHUT_WR does nothing.
            _ = try request(.shutdown(handle: info.handle, how: how))
            if how != SHUT_WR { state.withLock { $0 = .fresh } }
            return
        case .connecting:
            if failed { // CLOSE
                localShutdown.bitwiseOr(bits, ordering: .relaxed)
                throw Errno(ENOTCONN)
            }
            // The attempt is abandoned.
            _ = try request(.shutdown(handle: info.handle, how: how))
            becomeFresh(errorTaken: false)
            gate.release()
            return
        case .connected:
            if failed { // reset: CLOSE
                localShutdown.bitwiseOr(bits, ordering: .relaxed)
                throw Errno(ENOTCONN)
            }
        }
        if bits & Self.shutWrite != 0 { _ = try request(.shutdown(handle: info.handle, how: Int32(SHUT_WR))) }
        localShutdown.bitwiseOr(bits, ordering: .relaxed)
        // Readers blocked on this socket return 0 now.
        if bits & Self.shutRead != 0 { signalLocally() }
    }
}
