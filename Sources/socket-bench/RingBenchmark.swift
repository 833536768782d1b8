import CShims
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// The shared-memory stream ring alone, between two processes, against memcpy of the same sizes.
enum RingBenchmark {
    static let capacity = 128 << 10
    static let offset = 4096

    /// Producer side (this process) and consumer side (a child: `socket-bench ring-peer`).
    /// - Returns: ring MB/s, memcpy MB/s.
    static func run(total: Int, chunk: Int) -> Figures {
        let layout = ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0)
        guard let segment = try? SharedSegment.create(name: "socket-bench-ring", size: 1 << 20),
              let view = try? ChannelView(segment: segment, offset: offset, layout: layout),
              let toPeer = try? EventFD(), let toUs = try? EventFD()
        else { fatal("cannot set up the ring") }
        let child = ChildProcess(["ring-peer", "\(total)", "\(chunk)"], descriptors: [segment.fd, toPeer.fd, toUs.fd])
        let ring = view.streamProducer(receive: true, capacity: capacity)
        let wake = Notifier(state: view.toApp, fd: toPeer.fd)
        let space = Notifier(state: view.toStack, fd: toUs.fd)
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { source.deallocate() }
        memset(source.baseAddress!, 0x3C, chunk)
        var sent = 0
        while sent < total {
            let n = min(chunk, total - sent)
            var done = 0
            while done < n {
                let w = (try? ring.write(UnsafeRawBufferPointer(rebasing: source[done..<n]))) ?? 0
                done += w
                if w > 0 { wake.notify(); continue }
                // Full: spin briefly (the consumer is running on the other core), then sleep until it
                // frees space.
                if spin({ ((try? ring.freeSpace()) ?? 0) > 0 }) { continue }
                space.acknowledge()
                if ((try? ring.freeSpace()) ?? 0) == 0 { _ = try? space.wait(timeoutMilliseconds: 1000) }
            }
            sent += n
        }
        let (status, output) = child.finish()
        guard status == 0, let seconds = Double(fields(output)["seconds"] ?? "") else { fatal("ring peer failed: \(output)") }
        let ringRate = Double(total) / 1e6 / seconds
        return [("ring_MBps", ringRate), ("memcpy_MBps", memcpyRate(total: total, chunk: chunk))]
    }

    /// memcpy of `chunk`-byte pieces into a ring-sized buffer, `total` bytes in all.
    static func memcpyRate(total: Int, chunk: Int) -> Double {
        let source = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        let ringBuffer = UnsafeMutableRawPointer.allocate(byteCount: capacity + chunk, alignment: 64)
        defer { source.deallocate(); ringBuffer.deallocate() }
        memset(source, 0x3C, chunk)
        memset(ringBuffer, 0, capacity + chunk)
        let start = now()
        var position = 0, copied = 0
        while copied < total {
            let n = min(chunk, total - copied)
            memcpy(ringBuffer + position, source, n)
            position += n
            if position >= capacity { position = 0 }
            copied += n
        }
        let seconds = Double(now() - start) / 1e9
        // Keep the copies observable so they are not optimized away.
        if cshims_fnv1a(ringBuffer, 64, 0) == 42 { print("") }
        return Double(total) / 1e6 / seconds
    }

    /// The consumer, in the child: reads `total` bytes in `chunk`-byte reads; prints the seconds
    /// from the first byte to the last.
    static func peer(total: Int, chunk: Int) {
        guard let segment = try? SharedSegment(adopting: 3),
              let view = try? ChannelView(segment: segment, offset: offset,
                                          layout: ChannelLayout(kind: .stream, receiveSize: capacity, sendSize: 0, slotBytes: 0))
        else { fatal("ring peer: cannot map the segment") }
        let ring = view.streamConsumer(receive: true, capacity: capacity)
        let data = Notifier(state: view.toApp, fd: 4)
        let space = Notifier(state: view.toStack, fd: 5)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        var received = 0
        var start: UInt64 = 0
        while received < total {
            let n = (try? ring.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(chunk, total - received)]))) ?? 0
            if n > 0 {
                if received == 0 { start = now() }
                received += n
                space.notify()
                continue
            }
            if spin({ ((try? ring.available()) ?? 0) > 0 }) { continue }
            data.acknowledge()
            if ((try? ring.available()) ?? 0) == 0 { _ = try? data.wait(timeoutMilliseconds: 1000) }
        }
        print("seconds=\(Double(now() - start) / 1e9)")
    }
}

/// Polls `ready` for up to about 20 microseconds before the caller sleeps on its eventfd: between
/// two running cores, the peer usually makes progress sooner than a wake-up would take.
func spin(_ ready: () -> Bool) -> Bool {
    let deadline = now() + 20_000
    repeat {
        if ready() { return true }
    } while now() < deadline
    return false
}

func fields(_ line: String) -> [String: String] {
    var result: [String: String] = [:]
    for part in line.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
        let kv = part.split(separator: "=", maxSplits: 1)
        if kv.count == 2 { result[String(kv[0])] = String(kv[1]) }
    }
    return result
}

/// This executable run again as a child, with some descriptors as its fds 3, 4, 5 and stdout on a pipe.
final class ChildProcess {
    let pid: pid_t
    private let stdoutFD: Int32

    static var executable: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    init(_ arguments: [String], descriptors: [Int32] = [], executable: String = ChildProcess.executable, environment: [String: String] = [:]) {
        var out: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { fatal("pipe: \(Errno.current)") }
        _ = fcntl(out[0], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        for (i, fd) in descriptors.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(100 + i)) }
        for i in descriptors.indices { posix_spawn_file_actions_adddup2(&actions, Int32(100 + i), Int32(3 + i)) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [String] = []
        var e = environ
        while let p = e.pointee {
            let entry = String(cString: p)
            if !environment.keys.contains(where: { entry.hasPrefix($0 + "=") }) { env.append(entry) }
            e += 1
        }
        env += environment.map { "\($0.key)=\($0.value)" }
        let envp = env.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        close(out[1])
        guard rc == 0 else { fatal("posix_spawn \(executable): \(Errno(rc))") }
        self.pid = pid
        stdoutFD = out[0]
    }

    /// Waits for the child; returns its exit status and output.
    func finish() -> (status: Int32, output: String) {
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output += chunk[..<n]
        }
        close(stdoutFD)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, String(decoding: output, as: UTF8.self))
    }
}
