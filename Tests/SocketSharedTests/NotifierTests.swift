import CShims
import Synchronization
import SocketShared
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Notifier")
struct NotifierTests {
    /// One million 8-byte messages through a 64-byte ring: both sides run out of work constantly and
    /// go to sleep on their eventfd, and random pauses shift the timing. A lost wake-up shows as a
    /// wait that times out while work is ready (counted on both sides) or as a hang (bounded by the
    /// 3 s wait, which fails the test).
    @Test func millionMessagesAcrossProcessesLoseNoWakeUp() throws {
        let count: UInt64 = 1_000_000
        let channel = try TestChannel(layout: ChannelLayout(kind: .stream, receiveSize: 64, sendSize: 0, slotBytes: 0))
        let peer = try PeerProcess.start(["notify-consume", "\(count)"], descriptors: channel.descriptors)
        let ring = channel.view.streamProducer(receive: true, capacity: 64)
        let wake = channel.peerNotifier, space = channel.ourNotifier
        var rng = TestRandom(state: 3)
        var next: UInt64 = 0, sleeps = 0
        while next < count {
            if try ring.freeSpace() < 8 {
                sleeps += 1
                try waitUntil(space) { try ring.freeSpace() >= 8 }
            }
            let batch = min(UInt64(1 + rng.below(8)), count - next)
            for _ in 0..<batch {
                guard try ring.freeSpace() >= 8 else { break }
                var message = next
                _ = try withUnsafeBytes(of: &message) { try ring.write($0) }
                next += 1
            }
            wake.notify()
            if rng.below(1000) == 0 { usleep(UInt32(rng.below(300))) }
        }
        let (status, output) = try #require(peer.wait(timeout: PeerProcess.timeout), "the peer did not finish within \(PeerProcess.timeout) s")
        #expect(status == 0, "peer: \(output)")
        let fields = ChildProcess.fields(output)
        #expect(fields["messages"] == "\(count)")
        #expect(fields["lost"] == "0")
        // Both sides really slept (otherwise the test proves nothing about wake-ups).
        #expect(sleeps > 0)
        #expect(Int(fields["sleeps"] ?? "0")! > 0)
        // Suppression: fewer eventfd writes than messages.
        #expect(wake.signalsPosted < count)
    }

    @Test func suppressesRedundantSignalsAndUndoKeepsReadable() throws {
        let segment = try SharedSegment.create(name: "notify", size: 1 << 16)
        let event = try EventFD()
        let notifier = Notifier(state: segment.base + 4096, fd: event.fd)
        #expect(notifier.notify())           // first signal writes the eventfd
        #expect(!notifier.notify())          // consumer has one pending: skipped
        #expect(try pollOne(event.fd, events: Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) != 0)
        notifier.acknowledge()
        #expect(try pollOne(event.fd, events: Int16(POLLIN), timeoutMilliseconds: 0) == 0)
        // The consumer found work after acknowledging: undo keeps the descriptor readable.
        notifier.undoAcknowledge()
        #expect(try pollOne(event.fd, events: Int16(POLLIN), timeoutMilliseconds: 0) & Int16(POLLIN) != 0)
        notifier.acknowledge()
        #expect(notifier.notify())           // acknowledged: the next signal is written again
        #expect(notifier.signalsPosted == 2)
    }

    /// The writability trick: an eventfd pushed to UINT64_MAX-1 polls unwritable; release restores
    /// POLLOUT and leaves it readable; only one of two racing releasers wins.
    @Test func blockTrickControlsPollOut() throws {
        let segment = try SharedSegment.create(name: "gate", size: 1 << 16)
        let event = try EventFD()
        let gate = WritabilityGate(channel: segment.base + 4096, appFD: event.fd)
        let out = Int16(POLLOUT), inn = Int16(POLLIN)
        #expect(try pollOne(event.fd, events: out | inn, timeoutMilliseconds: 0) == out)
        gate.block()
        #expect(gate.isBlocked)
        let blocked = try pollOne(event.fd, events: out | inn, timeoutMilliseconds: 0)
        #expect(blocked & out == 0)
        #expect(blocked & inn != 0)
        gate.block() // idempotent
        #expect(gate.release())
        #expect(!gate.release())
        #expect(!gate.isBlocked)
        #expect(try pollOne(event.fd, events: out | inn, timeoutMilliseconds: 0) == out | inn)
        // Blocking again on top of a pending readable count still blocks.
        _ = cshims_eventfd_write(event.fd, 3)
        gate.block()
        #expect(try pollOne(event.fd, events: out, timeoutMilliseconds: 0) & out == 0)
        // A poller waiting for POLLOUT is woken by the release from another thread.
        // (Proven blocked in poll before the release, so the wake-up is the release's doing.)
        let fd = event.fd
        let waiter = TestThread.start { (try? pollOne(fd, events: out, timeoutMilliseconds: 10_000)) ?? -1 }
        let tid = try #require(waiter.threadID(timeout: 5), "the poller thread did not start")
        let notBlocked = ProcStats.waitUntilBlocked(pid: getpid(), tid: tid, timeout: 5)
        #expect(notBlocked == nil, "\(notBlocked ?? "")")
        gate.release()
        #expect(waiter.join() == out)
    }
}

/// A joinable pthread running `body` (tests only), which publishes its kernel thread id.
final class TestThread: @unchecked Sendable {
    // @unchecked Sendable: `result` is written by the thread before it exits and read after join;
    // `tid` is atomic.
    private let body: @Sendable () -> Int16
    private var result: Int16 = -1
    private var thread = pthread_t()
    private let tid = Atomic<Int32>(0)

    static func start(_ body: @escaping @Sendable () -> Int16) -> TestThread {
        let t = TestThread(body)
        pthread_create(&t.thread, nil, { arg in
            let me = Unmanaged<TestThread>.fromOpaque(arg!).takeRetainedValue()
            me.tid.store(ProcStats.currentThreadID(), ordering: .releasing)
            me.result = me.body()
            return nil
        }, Unmanaged.passRetained(t).toOpaque())
        return t
    }

    private init(_ body: @escaping @Sendable () -> Int16) { self.body = body }

    /// The thread's kernel id, once it has started (nil after `timeout` seconds).
    func threadID(timeout: Double) -> pid_t? {
        var id: Int32 = 0
        waitUntil(timeout: timeout, interval: 0.001) {
            id = tid.load(ordering: .acquiring)
            return id != 0
        }
        return id != 0 ? id : nil
    }

    func join() -> Int16 {
        pthread_join(thread, nil)
        return result
    }
}
