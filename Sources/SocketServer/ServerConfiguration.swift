import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// Everything the server can be told at start-up. The `socket-server` command line maps onto it
/// one option per field; the defaults here are the documented defaults.
public struct ServerConfiguration: Sendable {
    /// The SEQPACKET socket clients connect to.
    public var socketPath: String = ServerConfiguration.defaultSocketPath
    /// Addresses of the stack's loopback network.
    public var addresses: [InterfaceAddress] = [InterfaceAddress(cidr: "127.0.0.1/8")!, InterfaceAddress(cidr: "::1/128")!]
    /// MTU of the loopback interfaces.
    public var loopbackMTU: UInt16 = 65535
    /// Datagram payload transport (`auto`: process-vm where the kernel permits it, else shared memory).
    public var datagramTransport: DatagramTransport = .auto
    /// Bytes in each client's shared segment (channels are carved out of it).
    public var segmentSize: Int = 256 << 20
    /// Clients served at once (sessions that completed HELLO).
    public var maxClients: Int = 256
    /// Connections accepted that have not completed HELLO yet (each has 2 s to do so).
    public var maxPendingClients: Int = 32
    public var maxSocketsPerClient: Int = 4096
    /// Sockets across all clients (each costs the server two descriptors); nil: derived from the
    /// descriptor limit at start.
    public var maxTotalSockets: Int?
    /// Datagram channels: items per ring (each direction) and bytes per payload buffer.
    public var datagramRingItems: Int = 128
    public var datagramSlotSize: Int = 2048
    /// Server heap a client's datagram payload buffers may hold (process-vm: lwIP buffers waiting
    /// for the client, received or to be filled).
    public var clientBufferMemory: Int = 32 << 20
    /// Stream channels: bytes per ring (each direction).
    public var streamRingSize: Int = 128 << 10
    /// TAP interfaces to attach (real Ethernet to the kernel and beyond).
    public var taps: [TAPConfiguration] = []
    /// Write every packet the stack sends and receives to this pcapng file.
    public var capturePath: String?
    /// Keep the most recent this many bytes of packets in memory (socket-stat capture --recorded); 0: off.
    public var flightRecorderBytes: Int = 0
    /// Answer GET /metrics (Prometheus text) on this kernel address and port.
    public var metricsListen: SocketAddress?
    /// After each batch of work, keep polling for this long before sleeping (0: sleep at once).
    public var busyPollMicroseconds: Int = 0
    /// Pin the stack thread to this CPU.
    public var cpu: Int?
    /// Place client segments on this NUMA node (default: the node of the stack thread's CPU).
    public var numaNode: Int?
    /// Users other than the server's own allowed to connect.
    public var allowedUIDs: Set<UInt32> = []
    /// Allow clients of any user.
    public var allowAnyUID = false

    public init() {}

    /// `$SOCKET_SERVER_PATH`, else `$XDG_RUNTIME_DIR/socket-server.sock`, else `socket` in
    /// `defaultDirectory`.
    public static var defaultSocketPath: String {
        if let p = getenv("SOCKET_SERVER_PATH"), p.pointee != 0 { return String(cString: p) }
        if let d = getenv("XDG_RUNTIME_DIR"), d.pointee != 0 { return String(cString: d) + "/socket-server.sock" }
        return defaultDirectory + "/socket"
    }

    /// `/tmp/socket-server-UID`: the directory of the last-resort default path. The server creates it
    /// (mode 0700) and refuses to start when it exists but is not a directory it owns that only it can
    /// write; so no other user can put a socket where this user's clients look.
    public static var defaultDirectory: String { "/tmp/socket-server-\(getuid())" }

    /// Checks limits that would otherwise fail later.
    public func validate() throws(ServerError) {
        guard !addresses.isEmpty else { throw ServerError("at least one --address is needed") }
        guard segmentSize >= 1 << 20, segmentSize <= 1 << 34 else { throw ServerError("--segment-size must be between 1 MiB and 16 GiB") }
        guard datagramRingItems >= 33, datagramRingItems <= 1 << 16 else {
            throw ServerError("--datagram-ring-items must be between 33 and 65536 (a 65,507-byte datagram needs 33 buffers of 2 KiB)")
        }
        guard datagramSlotSize >= 512, datagramSlotSize <= 65536, datagramSlotSize % 64 == 0 else {
            throw ServerError("--datagram-slot-size must be a multiple of 64 between 512 and 65536")
        }
        guard datagramRingItems * datagramSlotSize >= 65_507 else {
            throw ServerError("datagram ring items x slot size must hold a 65,507-byte datagram")
        }
        guard streamRingSize >= 4096, streamRingSize <= 1 << 30 else { throw ServerError("--stream-ring-size must be between 4 KiB and 1 GiB") }
        guard clientBufferMemory >= 1 << 20, clientBufferMemory <= 1 << 34 else {
            throw ServerError("--client-buffer-memory must be between 1 MiB and 16 GiB")
        }
        guard (0...1_000_000).contains(busyPollMicroseconds) else { throw ServerError("--busy-poll must be between 0 and 1000000 microseconds") }
        guard maxClients >= 1, maxSocketsPerClient >= 1, maxPendingClients >= 1, (maxTotalSockets ?? 1) >= 1 else {
            throw ServerError("limits must be at least 1")
        }
        guard Array(socketPath.utf8).count < 108 else { throw ServerError("--socket-path is longer than 107 bytes") }
        for tap in taps { try tap.validate() }
        guard Set(taps.map(\.name)).count == taps.count else { throw ServerError("each --tap device may be named once") }
    }
}
