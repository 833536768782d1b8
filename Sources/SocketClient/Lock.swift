#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex on the heap, for state that is not Sendable by type (pointers into the segment).
final class Lock: @unchecked Sendable {
    // @unchecked Sendable: the mutex is the synchronization; it lives at a fixed heap address.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
