import CShims
#if canImport(Glibc)
import Glibc
#endif

/// One direction of wake-ups between producer and consumer: an eventfd plus a pair of shared
/// counters (`cshims_notify_state`) that let the producer skip the `eventfd_write` syscall while the
/// consumer is known to have a wake-up pending.
///
/// Protocol (no lost wake-ups):
/// - Producer: publish data (release), then `notify()`. `notify` issues a full fence, and writes
///   the eventfd only if `posted == acked` (the consumer has taken in every earlier signal), after
///   winning a CAS that advances `posted`.
/// - Consumer: consume until empty, then `acknowledge()` (drains the eventfd, sets `acked = posted`,
///   full fence), then check for data once more. If some arrived in between, `undoAcknowledge()`
///   so the eventfd stays readable. Otherwise sleep in `wait`.
/// The fences make it a Dekker pair: either the producer sees the new `acked` and writes the eventfd,
/// or the consumer's re-check sees the data.
///
/// The eventfd's counter is therefore non-zero whenever the consumer has something to look at, which
/// is what makes the app's socket descriptor (the stack->app eventfd) pollable.
///
/// The notifier does not own its descriptor.
public struct Notifier {
    private let state: UnsafeMutableRawPointer
    public let fd: Int32

    /// - Parameters:
    ///   - state: a `cshims_notify_state` in shared memory.
    ///   - fd: the eventfd of this direction (non-blocking).
    public init(state: UnsafeMutableRawPointer, fd: Int32) {
        self.state = state
        self.fd = fd
    }

    private var posted: UnsafeMutableRawPointer { state + Int(CSHIMS_NOTIFY_POSTED) }
    private var acked: UnsafeMutableRawPointer { state + Int(CSHIMS_NOTIFY_ACKED) }

    /// Producer: wakes the consumer unless it already has a wake-up pending.
    /// - Returns: true when it wrote the eventfd.
    ///
    /// The counters are in shared memory, so the peer can rewrite them at will: the CAS loop is
    /// bounded, and after that many lost races we write the eventfd anyway (a spare wake-up costs
    /// the consumer one empty look; the producer never spins on a peer that keeps moving `posted`).
    @discardableResult
    public func notify() -> Bool {
        cshims_fence_seq_cst()
        for _ in 0..<Self.maximumRaces {
            let p = cshims_load_seq_cst_u64(posted)
            let a = cshims_load_seq_cst_u64(acked)
            if p != a { return false }
            if cshims_cas_u64(posted, p, p &+ 1) { break }
        }
        // EAGAIN only if the counter is saturated (the writability block): already readable.
        _ = cshims_eventfd_write(fd, 1)
        return true
    }

    /// CAS attempts before `notify` stops racing (only a peer rewriting `posted` loses this often).
    static let maximumRaces = 64

    /// Consumer: takes in every signal so far. Re-check for work afterwards (see the type's doc).
    /// - Parameter drain: false leaves the eventfd counter alone (while it holds the writability block).
    public func acknowledge(drain: Bool = true) {
        // Drain before publishing `acked`: a signal written after the drain is then one the producer
        // sent after seeing our new `acked`, and it stays in the counter.
        if drain {
            var value: UInt64 = 0
            _ = cshims_eventfd_read(fd, &value)
        }
        cshims_store_seq_cst_u64(acked, cshims_load_seq_cst_u64(posted))
        cshims_fence_seq_cst()
    }

    /// Consumer: found work after `acknowledge()`; makes the eventfd readable again so that a poller
    /// sees the work that is still there. Unconditional: a spare count costs one spurious wake-up,
    /// a missing one a hang.
    public func undoAcknowledge() {
        _ = cshims_eventfd_write(fd, 1)
    }

    /// True while a wake-up is pending (posted != acked).
    public var isPending: Bool {
        cshims_load_seq_cst_u64(posted) != cshims_load_seq_cst_u64(acked)
    }

    /// Sleeps until the eventfd is readable or `timeoutMilliseconds` pass (-1 = no limit).
    /// - Returns: true when woken, false on timeout.
    public func wait(timeoutMilliseconds: Int32) throws(SharedError) -> Bool {
        try pollOne(fd, events: Int16(POLLIN), timeoutMilliseconds: timeoutMilliseconds) != 0
    }

    /// Signals sent so far (diagnostics and tests).
    public var signalsPosted: UInt64 { cshims_load_acquire_u64(posted) }
}

/// The writability trick on the app's socket descriptor (the stack->app eventfd).
///
/// An eventfd polls writable while its counter is below `UInt64.max - 1`. When the app finds its send
/// ring full it pushes the counter to `UInt64.max - 1`, so `poll` stops reporting POLLOUT (the fd also
/// reads as readable meanwhile, so a reader may see a spurious POLLIN). Whoever frees ring space —
/// the stack, or the app itself on its re-check — wins a CAS on the channel's `blocked` flag, drains
/// the counter and writes 1 back, which makes the fd writable again and keeps it readable in case
/// data was pending (the reader re-checks and acknowledges).
public struct WritabilityGate {
    private let blocked: UnsafeMutableRawPointer
    public let fd: Int32

    /// - Parameters:
    ///   - channel: the `cshims_channel_header` in shared memory.
    ///   - appFD: the stack->app eventfd (the app's socket descriptor).
    public init(channel: UnsafeMutableRawPointer, appFD: Int32) {
        self.blocked = channel + Int(CSHIMS_CHANNEL_BLOCKED)
        self.fd = appFD
    }

    public static let blockValue: UInt64 = UInt64.max - 1

    public var isBlocked: Bool { cshims_load_acquire_u32(blocked) != 0 }

    /// App side: makes the descriptor unwritable. The caller must then re-check for space and call
    /// `release()` itself if space appeared (the stack may have freed it before seeing the flag).
    public func block() {
        if isBlocked { return }
        var value: UInt64 = 0
        while true {
            _ = cshims_eventfd_read(fd, &value)
            if cshims_eventfd_write(fd, Self.blockValue) == 0 { break }
            // A producer added a signal between our read and write: read again.
        }
        cshims_store_release_u32(blocked, 1)
        cshims_fence_seq_cst()
    }

    /// Either side: makes the descriptor writable again if it was blocked.
    /// - Parameter keepReadable: write a count back (the default) so that anything pending stays
    ///   visible. Pass false only when the caller knows there is nothing to read and no signal is
    ///   outstanding (a notify that found the descriptor blocked is then already acknowledged).
    /// - Returns: true when this call released the block.
    @discardableResult
    public func release(keepReadable: Bool = true) -> Bool {
        cshims_fence_seq_cst()
        guard cshims_load_acquire_u32(blocked) != 0, cshims_cas_u32(blocked, 1, 0) else { return false }
        var value: UInt64 = 0
        _ = cshims_eventfd_read(fd, &value)
        if keepReadable { _ = cshims_eventfd_write(fd, 1) }
        return true
    }
}

/// An eventfd owned by this process (`EFD_NONBLOCK | EFD_CLOEXEC`), closed exactly once.
public final class EventFD: @unchecked Sendable {
    // @unchecked Sendable: `fd` is immutable until close(), which only the owner calls.
    public private(set) var fd: Int32

    public init(initialValue: UInt32 = 0) throws(SharedError) {
        fd = try syscall("eventfd") { cshims_eventfd(initialValue) }
    }

    /// Adopts an eventfd received from a peer.
    public init(adopting fd: Int32) { self.fd = fd }

    /// Releases ownership without closing (the caller now owns the descriptor).
    public func take() -> Int32 {
        let taken = fd
        fd = -1
        return taken
    }

    public func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    deinit { close() }
}
