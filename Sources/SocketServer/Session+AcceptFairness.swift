import CLwIP
import CStack
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

/// Fairness for connections a client's listeners accept.
///
/// An accepted connection's channel lives in the *listening* client's segment, so a client that
/// connects many times to another client's listener (and holds the connections) spends that client's
/// memory. Each other local client may therefore hold in connections it made no more of the listening
/// client's segment than stays free after its next one: the first greedy client gets at most half,
/// a second a quarter, and so on, so a newcomer (which holds nothing) still finds room. Beyond its
/// share a client's new connections are refused (the connector's connect fails with `ECONNREFUSED`),
/// and the server logs
/// the refusal (at most once a second per listening client). Connections from the listening client
/// itself and from the network are not limited this way (the segment size still bounds them; a full
/// segment is logged too).
extension Session {
    /// Decides whether a connection a listener of this client accepted may have a channel here.
    /// - Parameters:
    ///   - pcb: the accepted connection.
    ///   - connector: the session of the local client that connected, if it is local.
    ///   - port: the listener's port (for the log).
    /// - Returns: the new socket, or nil after logging why it was refused (the caller resets it).
    func admitAcceptedConnection(_ pcb: UnsafeMutablePointer<tcp_pcb>, from connector: Session?, domain: Int32, port: UInt16) -> TCPSocket? {
        var chargeTo: Session?
        if let connector, connector !== self {
            let size = acceptedConnectionSize
            let held = acceptedFrom[connector.id, default: 0]
            guard (held + 1) * size <= segmentFree - size else {
                refused(port: port, "client pid \(connector.credentials.pid) already holds \(held) connections, its fair share of this client's segment")
                return nil
            }
            chargeTo = connector
        }
        switch createAcceptedSocket(pcb, domain: domain) {
        case .success(let socket):
            if let chargeTo {
                socket.acceptedFrom = chargeTo.id
                acceptedFrom[chargeTo.id, default: 0] += 1
            }
            return socket
        case .failure(let err):
            let reason = err.rawValue == ENOBUFS ? "the segment is full (--segment-size)" : "\(err)"
            refused(port: port, "\(reason)")
            return nil
        }
    }

    /// An accepted connection charged to `connector` was released.
    func uncharge(_ connector: UInt64) {
        guard let n = acceptedFrom[connector] else { return }
        acceptedFrom[connector] = n > 1 ? n - 1 : nil
    }

    private func refused(port: UInt16, _ reason: String) {
        guard let held = acceptRefusalLog.admit() else { return }
        logger.warning("listener port \(port): refused a connection (reset): \(reason)\(SocketServer.more(held))")
    }
}
