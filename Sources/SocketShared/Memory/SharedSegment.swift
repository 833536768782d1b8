import CShims
#if canImport(Glibc)
import Glibc
#endif

/// A shared-memory segment: a sealed memfd mapped `MAP_SHARED`.
///
/// The server creates one segment per client and passes its descriptor at HELLO; the client maps it.
/// Everything inside is addressed by offset, never by pointer, because each process maps it at its
/// own address. `pointer(at:length:)` checks every offset against the size the mapping was made
/// with, which comes from `fstat` of the sealed memfd, not from the segment's own contents.
///
/// Ownership: the segment owns its mapping and, until `closeDescriptor()` is called, its descriptor;
/// both are released exactly once, in `deinit` at the latest.
public final class SharedSegment: @unchecked Sendable {
    // @unchecked Sendable: the fields are immutable after init except `fd`, which only the owner
    // touches; the mapped bytes are shared by design and accessed through atomics.
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public private(set) var fd: Int32

    /// Creates a zero-filled segment of `size` bytes, sealed against shrinking and growing.
    /// - Throws: `SharedError` naming the failing call.
    public static func create(name: String, size: Int) throws(SharedError) -> SharedSegment {
        guard size >= Int(CSHIMS_SEGMENT_HEADER_SIZE) else {
            throw SharedError(.outOfBounds, "segment size \(size)")
        }
        let fd = try syscall("memfd_create") { cshims_memfd_segment(name, UInt64(size)) }
        do {
            try syscall("fcntl(F_ADD_SEALS)") { cshims_seal_size(fd) }
            return try SharedSegment(mapping: fd)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Maps the segment behind `fd`, taking ownership of `fd` (closed on failure too).
    /// - Throws: `SharedError` if the descriptor is not a size-sealed memfd or cannot be mapped.
    public convenience init(adopting fd: Int32) throws(SharedError) {
        guard cshims_has_size_seals(fd) != 0 else {
            close(fd)
            throw SharedError(.corruptSharedState, "segment descriptor is not size-sealed")
        }
        do {
            try self.init(mapping: fd)
        } catch {
            close(fd)
            throw error
        }
    }

    private init(mapping fd: Int32) throws(SharedError) {
        var st = stat()
        try syscall("fstat") { fstat(fd, &st) }
        let size = Int(st.st_size)
        guard size >= Int(CSHIMS_SEGMENT_HEADER_SIZE) else {
            throw SharedError(.outOfBounds, "segment size \(size)")
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SharedError.system("mmap")
        }
        self.base = p
        self.size = size
        self.fd = fd
    }

    deinit {
        munmap(base, size)
        if fd >= 0 { close(fd) }
    }

    /// Closes the descriptor (the mapping stays). Safe to call more than once.
    public func closeDescriptor() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
    }

    /// The address of `length` bytes at `offset`.
    /// - Throws: `.outOfBounds` unless the whole range lies inside the segment.
    @inline(__always)
    public func pointer(at offset: Int, length: Int) throws(SharedError) -> UnsafeMutableRawPointer {
        guard offset >= 0, length >= 0, offset <= size, length <= size - offset else {
            throw SharedError(.outOfBounds, "segment range \(offset)+\(length) of \(size)")
        }
        return base + offset
    }

    /// Writes the segment header (server side, once).
    public func writeHeader(serverPID: Int32) {
        let header = base.assumingMemoryBound(to: cshims_segment_header.self)
        header.pointee.magic = CSHIMS_SEGMENT_MAGIC
        header.pointee.version = CSHIMS_LAYOUT_VERSION
        header.pointee.size = UInt64(size)
        header.pointee.server_pid = UInt32(bitPattern: serverPID)
    }

    /// Checks the header written by the server (client side).
    public func validateHeader() throws(SharedError) {
        let header = base.assumingMemoryBound(to: cshims_segment_header.self).pointee
        guard header.magic == CSHIMS_SEGMENT_MAGIC, header.version == CSHIMS_LAYOUT_VERSION,
              header.size == UInt64(size)
        else {
            throw SharedError(.corruptSharedState, "segment header")
        }
    }
}
