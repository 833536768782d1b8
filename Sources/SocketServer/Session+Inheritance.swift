import CShims
import Logging
import SocketShared
#if canImport(Glibc)
import Glibc
#endif

// Sockets shared across fork.
//
// A process that forks while it holds stack sockets tells the server (`forked(child)`, sent by the
// library in the parent before fork returns to the application): every socket in its table is now
// held by the child too ("pending": the child has no session yet). The child keeps the parent's
// mapping of the segment and the sockets' eventfds, so it can move data at once; its first control
// request opens a session of its own and attaches them (`attachInherited`): they enter its table
// under the same handles (handles are unique across the server). A socket closes when nobody holds
// it: not its own session's app, no attached session, no pending child. A pending child that exits
// (its pidfd turns readable) lets go of what it held. A session that ends while children hold its
// sockets lingers: its segment stays until they are closed.
//
// Trust: a session can only hand its own table to a process whose parent it is (checked in
// /proc), and a child attaches only what its parent handed it, or, when the child's request
// arrives first, what its parent holds at that moment.

extension Session {
    /// `forked(child)`: the child holds every socket this app holds.
    func forked(child: Int32) -> Reply {
        guard child > 0, child != credentials.pid, cshims_parent_pid(child) == credentials.pid else {
            return .error(ESRCH)
        }
        let held = sockets.values.filter { !$0.awaitingAccept }
        return .ok(value: Int64(server.registerInheritance(held, child: child, uid: credentials.uid)))
    }

    /// `attachInherited`: this (child) session takes the sockets its parent handed it.
    func attachInherited() -> Reply {
        let inherited = server.takeInheritance(child: credentials.pid, uid: credentials.uid)
        var attached = 0
        for socket in inherited where sockets[socket.handle] == nil {
            socket.sharedWith.append(id)
            sockets[socket.handle] = socket
            attached += 1
        }
        if attached > 0 { logger.debug("attached \(attached) sockets inherited from its parent") }
        return .ok(value: Int64(attached))
    }

    /// `execing(keep)`: the program this client becomes (same pid) holds `keep`; the session's
    /// other sockets close in an orderly way when the exec closes its control socket.
    func execing(keep: [UInt32]) -> Reply {
        closesGracefully = true
        let kept = keep.compactMap { sockets[$0] }
        guard kept.count == keep.count else { return .error(EBADF) }
        return .ok(value: Int64(server.registerInheritance(kept, child: credentials.pid, uid: credentials.uid, afterExec: true)))
    }

    /// `adopt(handle)`: after exec, this process takes one of the sockets its old image kept.
    func adopt(_ handle: UInt32) -> (Reply, [Int32], keepOpen: Bool) {
        guard let socket = server.takeInherited(handle, child: credentials.pid, uid: credentials.uid) else {
            return (.error(EBADF), [], true)
        }
        if sockets[handle] == nil {
            if socket.session === self { socket.heldByOwner = true } else { socket.sharedWith.append(id) }
            sockets[handle] = socket
        }
        let tcp = socket as? TCPSocket
        let type = Int32(tcp != nil ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue)
        return (.adopted(socket.info, domain: socket.domain, type: type, listening: tcp?.role == .listener), [socket.stackEvent.fd], true)
    }

    /// Moves `connection` (one of ours, just accepted by `to`'s app) out of our app's reach: it is
    /// held by `to` only, and stays ours (its channel is in our segment).
    func handOver(_ connection: ServerSocket, to other: Session) {
        sockets.removeValue(forKey: connection.handle)
        connection.heldByOwner = false
        connection.sharedWith = [other.id]
        heldElsewhere[connection.handle] = connection
        other.sockets[connection.handle] = connection
    }

    /// A pending child let go of `socket` (it exited without attaching it).
    func childLetGo(_ socket: ServerSocket, pid: Int32) {
        socket.pendingChildren.removeAll { $0 == pid }
        if !socket.isHeld { finalClose(socket) }
    }
}

/// What one forked child holds without a session of its own yet, and the pidfd that says when it
/// has exited.
struct Inheritance {
    let uid: UInt32
    let pidfd: Int32
    var sockets: [ServerSocket] = []
    /// The child attached already (before its parent's notice arrived: later notices add nothing).
    var attached = false
}

extension SocketServer {
    /// Records that `child` holds `sockets` (handed by its parent) and watches the child's exit.
    /// - Returns: how many sockets the child now holds (0 when it cannot be watched: it is gone).
    /// `afterExec`: the "child" is the client itself, about to exec (what it keeps is adopted one
    /// by one, whatever it attached before).
    func registerInheritance(_ sockets: [ServerSocket], child: Int32, uid: UInt32, afterExec: Bool = false) -> Int {
        guard !sockets.isEmpty, let watched = watchChild(child, uid: uid) else { return 0 }
        if watched.attached && !afterExec { return 0 } // it attached first, taking what the parent then held
        for socket in sockets where !socket.pendingChildren.contains(child) {
            socket.pendingChildren.append(child)
            inheritance[child]!.sockets.append(socket)
        }
        return sockets.count
    }

    /// The sockets `child` holds from its parent, now to be attached. When the parent's notice has
    /// not arrived yet, the parent's sessions' current tables stand in for it.
    func takeInheritance(child: Int32, uid: UInt32) -> [ServerSocket] {
        if var record = inheritance[child], record.uid == uid {
            let taken = record.sockets
            for socket in taken { socket.pendingChildren.removeAll { $0 == child } }
            record.sockets = []
            record.attached = true
            inheritance[child] = record
            return taken
        }
        let parent = cshims_parent_pid(child)
        guard parent > 0 else { return [] }
        let parents = sessions.values.filter { $0.credentials.pid == parent && $0.credentials.uid == uid && !$0.isClosed }
        let held = parents.flatMap { $0.sockets.values.filter { !$0.awaitingAccept } }
        guard !held.isEmpty, watchChild(child, uid: uid) != nil else { return [] }
        inheritance[child]!.attached = true
        return held
    }

    /// One socket of `child`'s pending ones (after exec, the program adopts them one by one).
    func takeInherited(_ handle: UInt32, child: Int32, uid: UInt32) -> ServerSocket? {
        guard var record = inheritance[child], record.uid == uid,
              let i = record.sockets.firstIndex(where: { $0.handle == handle }) else { return nil }
        let socket = record.sockets.remove(at: i)
        socket.pendingChildren.removeAll { $0 == child }
        inheritance[child] = record
        return socket
    }

    /// The child's record, made (with a pidfd in the event loop) on first use.
    private func watchChild(_ child: Int32, uid: UInt32) -> Inheritance? {
        if let record = inheritance[child] { return record.uid == uid ? record : nil }
        let pidfd = cshims_pidfd_open(child)
        guard pidfd >= 0 else { return nil }
        do {
            try loop.add(pidfd, token: Self.childToken + UInt64(UInt32(bitPattern: child)))
        } catch {
            close(pidfd)
            return nil
        }
        let record = Inheritance(uid: uid, pidfd: pidfd)
        inheritance[child] = record
        return record
    }

    /// A watched child exited: whatever it still held pending is let go.
    func childExited(_ child: Int32) {
        guard let record = inheritance.removeValue(forKey: child) else { return }
        loop.remove(record.pidfd)
        close(record.pidfd)
        for socket in record.sockets { socket.session.childLetGo(socket, pid: child) }
    }
}
