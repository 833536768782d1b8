import ArgumentParser
import Logging
import SocketServer
import SocketShared

@main
struct SocketServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-server",
        abstract: "Run the lwIP userspace TCP/IP stack and serve sockets to applications over shared memory.",
        discussion: """
        Applications linked with SocketClient connect to the server's SOCK_SEQPACKET socket and get \
        socket-like calls whose data moves through a shared-memory segment per client. The stack's \
        loopback network (127.0.0.1/8 and ::1 by default) lets applications talk to each other through \
        the stack with no privileges. SIGINT, SIGTERM or SIGHUP stop the server cleanly: every client's \
        sockets are closed and the socket file is removed.

        Exit status: 0 after a clean stop, 1 when the server cannot start (the reason is printed).
        """
    )

    @Option(name: .long, help: ArgumentHelp("Path of the server's socket.", discussion: "Default: $SOCKET_SERVER_PATH, else $XDG_RUNTIME_DIR/socket-server.sock, else /tmp/socket-server-UID.sock. A stale file left by a crashed server is replaced; a live server is never taken over.", valueName: "path"))
    var socketPath: String?

    @Option(name: .long, help: ArgumentHelp("An address of the stack's loopback network, IPv4 or IPv6 (repeatable).", discussion: "Default: 127.0.0.1/8 and ::1/128. The first option replaces the defaults.", valueName: "cidr"))
    var address: [String] = []

    @Option(name: .long, help: ArgumentHelp("Datagram payload transport: auto, process-vm or shared-memory.", discussion: "auto uses process-vm (one copy, straight between the app and lwIP's buffers) where the kernel lets the client read and write this process's memory (same user), else shared-memory.", valueName: "mode"))
    var datagramTransport: String = "auto"

    @Option(name: .long, help: ArgumentHelp("Bytes in each client's shared segment (suffixes K, M, G).", valueName: "size"))
    var segmentSize: String = "256M"

    @Option(name: .long, help: "Most clients served at once.")
    var maxClients: Int = 256

    @Option(name: .long, help: "Most sockets per client.")
    var maxSockets: Int = 4096

    @Option(name: .long, help: ArgumentHelp("Payload buffers per UDP ring, each direction (33 or more).", valueName: "n"))
    var datagramRingItems: Int = 128

    @Option(name: .long, help: ArgumentHelp("Bytes per UDP payload buffer (multiple of 64, 512 to 65536).", valueName: "bytes"))
    var datagramSlotSize: Int = 2048

    @Option(name: .long, help: ArgumentHelp("Bytes per TCP ring, each direction (suffixes K, M).", valueName: "size"))
    var streamRingSize: String = "128K"

    @Option(name: .long, help: ArgumentHelp("MTU of the loopback interfaces.", valueName: "bytes"))
    var loopbackMTU: Int = 65535

    @Option(name: .long, help: ArgumentHelp("Pin the stack thread to this CPU.", valueName: "n"))
    var cpu: Int?

    @Option(name: .long, help: ArgumentHelp("Place client segments on this NUMA node.", discussion: "Default: the node of the stack thread's CPU (libnuma); ignored where NUMA is not available.", valueName: "n"))
    var numaNode: Int?

    @Option(name: .long, help: ArgumentHelp("Also serve clients of this user id (repeatable); \"any\" serves every user.", discussion: "By default only clients of the server's own user are served; others are refused with EACCES.", valueName: "uid"))
    var allowUID: [String] = []

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical.", valueName: "level"))
    var logLevel: String = "info"

    func validate() throws {
        guard DatagramTransport(name: datagramTransport) != nil else {
            throw ValidationError("--datagram-transport must be auto, process-vm or shared-memory")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        for a in address where InterfaceAddress(cidr: a) == nil { throw ValidationError("--address \(a) is not an IPv4 or IPv6 CIDR") }
        for u in allowUID where u != "any" && UInt32(u) == nil { throw ValidationError("--allow-uid \(u) is not a user id") }
        guard parseSize(segmentSize) != nil, parseSize(streamRingSize) != nil else { throw ValidationError("sizes take a number with an optional K, M or G suffix") }
        guard (68...65535).contains(loopbackMTU) else { throw ValidationError("--loopback-mtu must be between 68 and 65535") }
    }

    func run() throws {
        SocketServer.prepareProcessSignals()
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "socket-server")
        var config = ServerConfiguration()
        if let socketPath { config.socketPath = socketPath }
        if !address.isEmpty { config.addresses = address.map { InterfaceAddress(cidr: $0)! } }
        config.datagramTransport = DatagramTransport(name: datagramTransport)!
        config.segmentSize = parseSize(segmentSize)!
        config.maxClients = maxClients
        config.maxSocketsPerClient = maxSockets
        config.datagramRingItems = datagramRingItems
        config.datagramSlotSize = datagramSlotSize
        config.streamRingSize = parseSize(streamRingSize)!
        config.loopbackMTU = UInt16(loopbackMTU)
        config.cpu = cpu
        config.numaNode = numaNode
        config.allowAnyUID = allowUID.contains("any")
        config.allowedUIDs = Set(allowUID.compactMap { UInt32($0) })
        let server: SocketServer
        do {
            server = try SocketServer(configuration: config, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        server.run()
    }
}

/// "256M" -> 268435456.
func parseSize(_ text: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = text.uppercased().last, let unit = units[last] {
        return Int(text.dropLast()).map { $0 * unit }
    }
    return Int(text)
}
