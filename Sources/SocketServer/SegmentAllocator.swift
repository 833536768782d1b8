/// First-fit allocator of 64-byte-aligned ranges in a client's segment, with coalescing on free.
///
/// Its bookkeeping lives in the server's private memory only: a client cannot corrupt it by writing
/// to its segment.
struct SegmentAllocator {
    /// Free ranges, sorted by offset, never adjacent (coalesced).
    private var free: [(offset: Int, size: Int)]
    private(set) var allocated = 0
    let capacity: Int

    /// Manages [start, start + size).
    init(start: Int, size: Int) {
        free = [(start, size)]
        capacity = size
    }

    /// A range of `size` bytes (rounded up to 64), or nil when none is large enough.
    mutating func allocate(_ size: Int) -> Int? {
        let size = (size + 63) & ~63
        guard let i = free.firstIndex(where: { $0.size >= size }) else { return nil }
        let offset = free[i].offset
        if free[i].size == size {
            free.remove(at: i)
        } else {
            free[i] = (offset + size, free[i].size - size)
        }
        allocated += size
        return offset
    }

    /// Returns a range obtained from `allocate` (same size as asked).
    mutating func release(_ offset: Int, _ size: Int) {
        let size = (size + 63) & ~63
        allocated -= size
        let i = free.firstIndex(where: { $0.offset > offset }) ?? free.count
        free.insert((offset, size), at: i)
        if i + 1 < free.count, free[i].offset + free[i].size == free[i + 1].offset {
            free[i].size += free[i + 1].size
            free.remove(at: i + 1)
        }
        if i > 0, free[i - 1].offset + free[i - 1].size == free[i].offset {
            free[i - 1].size += free[i].size
            free.remove(at: i)
        }
    }
}
